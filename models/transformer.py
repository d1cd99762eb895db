"""Decoder-only transformer in Flax NNX: RMSNorm, RoPE, GQA attention, SwiGLU / GELU MLP.
Names carry their shape (``x_BTD``): B batch, T sequence, D d_model, V vocab, N query heads, K kv
heads, H head_dim, Q = N*H, C = K*H, F d_ff, L layers.  Parameters live in ``param_dtype`` with
logical axes, compute runs in ``compute_dtype``, logits are float32."""

from __future__ import annotations

from typing import Callable, Optional, Tuple

import jax
import jax.numpy as jnp
from flax import nnx
from jax.ad_checkpoint import checkpoint_name

from chinchax.errors import ModelError
from models.attention import splash_attention
from models.config import ModelConfig
from models.head import head_logits
from models.remat import ATTENTION, POLICIES, SAVES_ATTENTION, with_named_residuals
from models.sharding import constrain, target_platform

Initializer = Callable[..., jax.Array]

# Backend each implementation needs (None: any), checked before tracing.
_ATTENTION_BACKEND = {"cudnn": "gpu", "splash": "tpu"}
ACTIVATION_BTD = ("batch", "seq", "embed")


def _param(
    init: Initializer,
    rngs: nnx.Rngs,
    shape: Tuple[int, ...],
    names: Tuple[str, ...],
    dtype: jnp.dtype,
) -> nnx.Param:
    """A parameter with logical axes, placed by the rules of ``models/sharding.py``, not eagerly."""
    return nnx.Param(init(rngs.params(), shape, dtype), out_sharding=names, eager_sharding=False)


def _stacked(
    layers: Optional[int], shape: Tuple[int, ...], names: Tuple[str, ...]
) -> Tuple[Tuple[int, ...], Tuple[str, ...]]:
    return (shape, names) if layers is None else ((layers,) + shape, ("layers",) + names)


class RMSNorm(nnx.Module):
    """Root-mean-square norm with a learned scale, computed in float32 for stability."""

    def __init__(
        self,
        dim: int,
        *,
        eps: float,
        param_dtype: jnp.dtype,
        rngs: nnx.Rngs,
        layers: Optional[int] = None,
    ) -> None:
        shape, names = _stacked(layers, (dim,), ("embed",))
        self.scale = _param(jax.nn.initializers.ones, rngs, shape, names, param_dtype)
        self.eps = eps

    def __call__(self, x_BTD: jax.Array) -> jax.Array:
        x32_BTD = x_BTD.astype(jnp.float32)
        inv_rms_BT1 = jax.lax.rsqrt(jnp.mean(x32_BTD * x32_BTD, axis=-1, keepdims=True) + self.eps)
        return (x32_BTD * inv_rms_BT1 * self.scale[...].astype(jnp.float32)).astype(x_BTD.dtype)


class Dense(nnx.Module):
    """``x @ kernel (+ bias)``, kernel ``[in, out]``; ``layers`` adds a leading axis."""

    def __init__(
        self,
        d_in: int,
        d_out: int,
        names: Tuple[str, str],
        *,
        use_bias: bool,
        param_dtype: jnp.dtype,
        rngs: nnx.Rngs,
        layers: Optional[int] = None,
    ) -> None:
        init = jax.nn.initializers.variance_scaling(
            1.0, "fan_in", "truncated_normal", batch_axis=() if layers is None else (0,)
        )
        self.kernel = _param(init, rngs, *_stacked(layers, (d_in, d_out), names), param_dtype)
        self.bias = (
            _param(
                jax.nn.initializers.zeros, rngs, *_stacked(layers, (d_out,), names[1:]), param_dtype
            )
            if use_bias
            else None
        )

    def __call__(self, x_BTI: jax.Array) -> jax.Array:
        y_BTO = jnp.einsum("bti,io->bto", x_BTI, self.kernel[...].astype(x_BTI.dtype))
        if self.bias is not None:
            y_BTO = y_BTO + self.bias[...].astype(x_BTI.dtype)
        return y_BTO


def project_to_vocab(x_BTD: jax.Array, w_DV: jax.Array, *, low_precision_backward: bool = True) -> jax.Array:
    """Float32 logits ``x @ w``, ``w`` cast to ``x``'s dtype here; in bf16 the backward products stay
    bf16 (``models/head.py``)."""
    logits_BTV = head_logits(x_BTD, w_DV, low_precision_backward=low_precision_backward)
    return constrain(logits_BTV, ("batch", "seq", "vocab"))


def _check_cudnn_shape(cfg: ModelConfig) -> None:
    """cuDNN's flash attention takes bf16/fp16 ``[B, T, N, H]`` with H a multiple of 8 up to
    256 (Hopper; 128 before): say so plainly instead of a kernel-selection error."""
    if cfg.compute_dtype not in ("bfloat16", "float16"):
        raise ModelError(
            f"model.attention='cudnn' needs bfloat16 or float16 compute, got {cfg.compute_dtype!r}",
            hint="set model.compute_dtype=bfloat16 (parameters stay float32), or model.attention=auto",
        )
    if cfg.resolved_head_dim % 8 or cfg.resolved_head_dim > 256:
        raise ModelError(
            f"model.attention='cudnn' needs head_dim a multiple of 8 and at most 256, got "
            f"{cfg.resolved_head_dim}",
            hint="use head_dim 64 or 128 (model.head_dim, or d_model / n_heads), or model.attention=auto",
        )


def backend_name() -> str:
    """The platform the program is for (``cpu``, ``gpu``, ``tpu``; an AOT target counts)."""
    platform = target_platform()
    return "gpu" if platform in ("cuda", "rocm") else platform


def rope_tables(seq_len: int, head_dim: int, theta: float) -> Tuple[jax.Array, jax.Array]:
    """``sin_TH2, cos_TH2`` (float32) for positions ``0..seq_len-1``, half-split RoPE."""
    inv_freq_H2 = theta ** (-jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim)
    angle_TH2 = jnp.arange(seq_len, dtype=jnp.float32)[:, None] * inv_freq_H2[None, :]
    return jnp.sin(angle_TH2), jnp.cos(angle_TH2)


def apply_rope(x_BTNH: jax.Array, sin_TH2: jax.Array, cos_TH2: jax.Array) -> jax.Array:
    """Rotate each (first-half, second-half) pair of channels by its position's angle."""
    x1_BTNH2, x2_BTNH2 = jnp.split(x_BTNH.astype(jnp.float32), 2, axis=-1)
    sin, cos = sin_TH2[None, :, None, :], cos_TH2[None, :, None, :]
    rotated = jnp.concatenate(
        [x1_BTNH2 * cos - x2_BTNH2 * sin, x2_BTNH2 * cos + x1_BTNH2 * sin], axis=-1
    )
    return rotated.astype(x_BTNH.dtype)


class Block(nnx.Module):
    """Pre-norm decoder layer: ``x + attn(norm(x))`` then ``x + mlp(norm(x))``; ``layers=L``
    stacks L layers on a leading axis for the model's scan."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs, layers: Optional[int] = None) -> None:
        D, F, Q, C = cfg.d_model, cfg.d_ff, cfg.q_width, cfg.kv_width
        pd = jnp.dtype(cfg.param_dtype)
        dense = dict(use_bias=cfg.use_bias, param_dtype=pd, rngs=rngs, layers=layers)
        self.attn_norm = RMSNorm(D, eps=cfg.norm_eps, param_dtype=pd, rngs=rngs, layers=layers)
        self.q = Dense(D, Q, ("embed", "heads"), **dense)
        self.k = Dense(D, C, ("embed", "kv"), **dense)
        self.v = Dense(D, C, ("embed", "kv"), **dense)
        self.o = Dense(Q, D, ("heads", "embed"), **dense)
        self.mlp_norm = RMSNorm(D, eps=cfg.norm_eps, param_dtype=pd, rngs=rngs, layers=layers)
        if cfg.mlp == "swiglu":
            self.gate = Dense(D, F, ("embed", "mlp"), **dense)
        self.up = Dense(D, F, ("embed", "mlp"), **dense)
        self.down = Dense(F, D, ("mlp", "embed"), **dense)
        self.n_heads, self.n_kv_heads, self.head_dim = (
            cfg.n_heads,
            cfg.kv_heads,
            cfg.resolved_head_dim,
        )
        self.mlp_kind = cfg.mlp
        # ``jax.nn.dot_product_attention``'s implementation (None: its choice); ``splash`` is ours.
        self.attention_impl = None if cfg.attention == "auto" else cfg.attention
        self.name_attention_residuals = cfg.remat in SAVES_ATTENTION

    def attention(self, x_BTD: jax.Array, sin_TH2: jax.Array, cos_TH2: jax.Array) -> jax.Array:
        B, T, _ = x_BTD.shape
        N, K, H = self.n_heads, self.n_kv_heads, self.head_dim
        q_BTQ = constrain(self.q(x_BTD), ("batch", "seq", "heads"))
        k_BTC = constrain(self.k(x_BTD), ("batch", "seq", "kv"))
        v_BTC = constrain(self.v(x_BTD), ("batch", "seq", "kv"))
        q_BTNH = apply_rope(q_BTQ.reshape(B, T, N, H), sin_TH2, cos_TH2)
        k_BTKH = apply_rope(k_BTC.reshape(B, T, K, H), sin_TH2, cos_TH2)
        v_BTKH = v_BTC.reshape(B, T, K, H)
        attend = self._attend
        if self.name_attention_residuals:
            attend = with_named_residuals(attend)
        out_BTNH = attend(q_BTNH, k_BTKH, v_BTKH)
        out_BTQ = checkpoint_name(out_BTNH.reshape(B, T, N * H), ATTENTION)
        return self.o(constrain(out_BTQ, ("batch", "seq", "heads")))

    def _attend(self, q_BTNH: jax.Array, k_BTKH: jax.Array, v_BTKH: jax.Array) -> jax.Array:
        if self.attention_impl == "splash":
            return splash_attention(q_BTNH, k_BTKH, v_BTKH)
        return jax.nn.dot_product_attention(
            q_BTNH, k_BTKH, v_BTKH, is_causal=True, implementation=self.attention_impl
        )

    def mlp(self, x_BTD: jax.Array) -> jax.Array:
        if self.mlp_kind == "swiglu":
            h_BTF = jax.nn.silu(self.gate(x_BTD)) * self.up(x_BTD)
        else:
            h_BTF = jax.nn.gelu(self.up(x_BTD))
        return self.down(constrain(h_BTF, ("batch", "seq", "mlp")))

    def __call__(self, x_BTD: jax.Array, sin_TH2: jax.Array, cos_TH2: jax.Array) -> jax.Array:
        x_BTD = x_BTD + self.attention(self.attn_norm(x_BTD), sin_TH2, cos_TH2)
        x_BTD = x_BTD + self.mlp(self.mlp_norm(x_BTD))
        return constrain(x_BTD, ACTIVATION_BTD)


class Transformer(nnx.Module):
    """``tokens_BT`` (int32) → ``logits_BTV`` (float32), causal."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs) -> None:
        if cfg.resolved_head_dim % 2:
            raise ModelError(
                f"head_dim={cfg.resolved_head_dim} is odd; rotary embeddings rotate channel pairs",
                hint="choose d_model / n_heads (or model.head_dim) even, e.g. 64 or 128",
            )
        self.cfg = cfg
        pd = jnp.dtype(cfg.param_dtype)
        embed_init = jax.nn.initializers.normal(stddev=cfg.d_model**-0.5)
        self.embed = _param(embed_init, rngs, (cfg.vocab_size, cfg.d_model), ("vocab", "embed"), pd)
        if cfg.scan_layers:
            self.blocks = Block(cfg, rngs=rngs, layers=cfg.n_layers)
        else:
            self.blocks = nnx.List([Block(cfg, rngs=rngs) for _ in range(cfg.n_layers)])
        self.final_norm = RMSNorm(cfg.d_model, eps=cfg.norm_eps, param_dtype=pd, rngs=rngs)
        self.head: Optional[Dense] = (
            None
            if cfg.tie_embeddings
            else Dense(
                cfg.d_model,
                cfg.vocab_size,
                ("embed", "vocab"),
                use_bias=False,
                param_dtype=pd,
                rngs=rngs,
            )
        )

    def __call__(self, tokens_BT: jax.Array) -> jax.Array:
        return project_to_vocab(self.hidden_states(tokens_BT), self.output_kernel(),
                                low_precision_backward=self.cfg.head_backward == "compute")

    def output_kernel(self) -> jax.Array:
        """The head ``w_DV`` as stored (the embedding transposed when tied); callers cast it, so
        a chunked loss sums the head's gradient in the stored dtype, not bf16."""
        return self.embed[...].T if self.head is None else self.head.kernel[...]

    def hidden_states(self, tokens_BT: jax.Array) -> jax.Array:
        """``tokens_BT`` → final-normed ``x_BTD``, the head's input (a chunked loss projects it)."""
        cfg = self.cfg
        needs = _ATTENTION_BACKEND.get(cfg.attention)
        if needs is not None and backend_name() != needs:
            raise ModelError(
                f"model.attention={cfg.attention!r} needs a {needs.upper()}, but JAX runs on "
                f"{backend_name()!r}",
                hint="use model.attention=auto (or xla): the same function on any backend",
            )
        if cfg.attention == "cudnn":
            _check_cudnn_shape(cfg)
        dtype = jnp.dtype(cfg.compute_dtype)
        # FSDP gathers the table's embed dimension before use, as for every weight; the
        # lookup then yields batch-sharded rows without an all-to-all.
        embed_VD = constrain(self.embed[...], ("vocab", None))
        x_BTD = jnp.take(embed_VD, tokens_BT, axis=0).astype(dtype)
        x_BTD = constrain(x_BTD, ACTIVATION_BTD)
        sin_TH2, cos_TH2 = rope_tables(tokens_BT.shape[1], cfg.resolved_head_dim, cfg.rope_theta)
        x_BTD = self._apply_blocks(x_BTD, sin_TH2, cos_TH2)
        return self.final_norm(x_BTD)

    def _apply_blocks(self, x_BTD: jax.Array, sin_TH2: jax.Array, cos_TH2: jax.Array) -> jax.Array:
        """Run the layers: one ``lax.scan`` over the stacked blocks (compile time flat in
        depth), or a Python loop; each block wrapped in ``jax.checkpoint`` per ``cfg.remat``."""

        def block_fn(graphdef: nnx.GraphDef, state: nnx.State, x_BTD: jax.Array) -> jax.Array:
            return nnx.merge(graphdef, state)(x_BTD, sin_TH2, cos_TH2)

        if self.cfg.remat != "none":
            block_fn = jax.checkpoint(
                block_fn, policy=POLICIES[self.cfg.remat], static_argnums=(0,)
            )

        if self.cfg.scan_layers:
            graphdef, state_L = nnx.split(self.blocks)
            x_BTD, _ = jax.lax.scan(
                lambda x, state: (block_fn(graphdef, state, x), None), x_BTD, state_L
            )
            return x_BTD
        for block in self.blocks:
            graphdef, state = nnx.split(block)
            x_BTD = block_fn(graphdef, state, x_BTD)
        return x_BTD
