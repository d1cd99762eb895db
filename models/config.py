"""ModelConfig: the decoder's shape as plain data.  No JAX here, so the FLOP counter and the
allocator (``scaling/``) reason about shapes instantly, anywhere.  The parameter tree that
``models/transformer.py`` builds is the contract with ``scaling/flops.py``: ``count_params`` must
equal its scalar count (the head never has a bias; a tied head is ``embed.T``)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Optional

from chinchax.errors import ModelError


MLP_KINDS = ("swiglu", "gelu")
REMAT_POLICIES = (
    "none", "full", "dots", "dots_no_batch", "save_attention", "attention_dots")
ATTENTION_IMPLS = ("auto", "xla", "cudnn", "splash")
DTYPES = ("float32", "bfloat16", "float16")
HEAD_BACKWARDS = ("compute", "float32")


@dataclass(frozen=True)
class ModelConfig:
    """Shape and numerics of the decoder.  Frozen: a shape is a value, not a state."""

    vocab_size: int = 256
    d_model: int = 128
    n_layers: int = 4
    n_heads: int = 4
    n_kv_heads: Optional[int] = None  # None: same as n_heads (multi-head attention)
    head_dim: Optional[int] = None  # None: d_model // n_heads
    d_ff: int = 512
    mlp: str = "swiglu"
    tie_embeddings: bool = False
    use_bias: bool = False
    rope_theta: float = 10_000.0
    norm_eps: float = 1e-6
    param_dtype: str = "float32"
    compute_dtype: str = "float32"
    remat: str = "none"
    scan_layers: bool = True
    attention: str = "auto"
    # Positions per cross-entropy chunk (0: whole sequence): float32 [B, T, V] logits never exist,
    # at the price of the head's matmul again in the backward (2·d_model·vocab FLOPs per token).
    loss_chunk: int = 0
    # Logits-gradient dtype in the head's backward under bf16/fp16 compute (models/head.py):
    # "compute" (bf16 products, float32 sums) or "float32".  No effect in float32 compute.
    head_backward: str = "compute"

    def __post_init__(self) -> None:
        for name in ("vocab_size", "d_model", "n_layers", "n_heads", "d_ff"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ModelError(
                    f"model.{name} must be a positive integer, got {value!r}",
                    hint=f"set model.{name} to a value like {getattr(ModelConfig, name)}",
                )
        if self.n_kv_heads is not None and (self.n_kv_heads <= 0 or self.n_heads % self.n_kv_heads):
            raise ModelError(
                f"model.n_kv_heads={self.n_kv_heads} does not divide model.n_heads={self.n_heads}",
                hint="grouped-query attention needs n_heads to be a multiple of n_kv_heads",
            )
        if self.head_dim is None and self.d_model % self.n_heads:
            raise ModelError(
                f"model.d_model={self.d_model} is not divisible by model.n_heads={self.n_heads}",
                hint="set model.head_dim explicitly or choose n_heads dividing d_model",
            )
        if not isinstance(self.loss_chunk, int) or self.loss_chunk < 0:
            raise ModelError(
                f"model.loss_chunk must be 0 or a positive integer, got {self.loss_chunk!r}",
                hint="use 0 for the whole sequence, or a divisor of train.seq_len such as 512",
            )
        if self.head_dim is not None and self.head_dim <= 0:
            raise ModelError(f"model.head_dim must be positive, got {self.head_dim}")
        for name, upper in (("rope_theta", 1e9), ("norm_eps", 1.0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= upper:
                raise ModelError(f"model.{name} must be a finite number in (0, {upper:g}], got {value!r}",
                                 hint=f"use the default {getattr(ModelConfig, name):g}")
        for name, allowed in (
            ("mlp", MLP_KINDS),
            ("remat", REMAT_POLICIES),
            ("attention", ATTENTION_IMPLS),
            ("param_dtype", DTYPES),
            ("compute_dtype", DTYPES),
            ("head_backward", HEAD_BACKWARDS),
        ):
            if getattr(self, name) not in allowed:
                raise ModelError(
                    f"model.{name}={getattr(self, name)!r} is not one of {', '.join(allowed)}",
                    hint=f"use one of: {', '.join(allowed)}",
                )

    @property
    def kv_heads(self) -> int:
        return self.n_heads if self.n_kv_heads is None else self.n_kv_heads

    @property
    def resolved_head_dim(self) -> int:
        return self.d_model // self.n_heads if self.head_dim is None else self.head_dim

    @property
    def q_width(self) -> int:
        return self.n_heads * self.resolved_head_dim

    @property
    def kv_width(self) -> int:
        return self.kv_heads * self.resolved_head_dim

    def replace(self, **changes: object) -> "ModelConfig":
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)
