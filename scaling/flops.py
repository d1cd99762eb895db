"""The one FLOP and parameter counter, shared by the allocator, the trainer's MFU and the fits.

FLOPs follow Chinchilla's appendix F (Hoffmann et al. 2022, "Training Compute-Optimal Large
Language Models"); ``tests/test_flops.py`` reproduces its Tables A4 and A9.  No JAX import.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from chinchax.errors import ScalingError
from models.config import ModelConfig


MLP_MATRICES = {"swiglu": 3, "gelu": 2}


# --------------------------------------------------------------------------- parameters


def _layer_params(cfg: ModelConfig) -> int:
    d, q, kv, ff = cfg.d_model, cfg.q_width, cfg.kv_width, cfg.d_ff
    n_mlp = MLP_MATRICES[cfg.mlp]
    attention = d * q + 2 * d * kv + q * d
    mlp = n_mlp * d * ff
    norms = 2 * d  # attn_norm and mlp_norm scales
    biases = 0
    if cfg.use_bias:
        biases += q + 2 * kv + d  # q, k, v (their output widths) and o (d_model)
        biases += (n_mlp - 1) * ff + d  # gate/up biases are d_ff wide, down's is d_model
    return attention + mlp + norms + biases


def embedding_params(cfg: ModelConfig) -> int:
    per_matrix = cfg.vocab_size * cfg.d_model
    return per_matrix if cfg.tie_embeddings else 2 * per_matrix


def count_params(cfg: ModelConfig) -> int:
    """Exactly the scalars in ``nnx.state(Transformer(cfg), nnx.Param)``."""
    return embedding_params(cfg) + cfg.n_layers * _layer_params(cfg) + cfg.d_model


def count_params_non_embedding(cfg: ModelConfig) -> int:
    """Kaplan et al.'s "non-embedding" N: embedding and head excluded, tied or not."""
    return count_params(cfg) - embedding_params(cfg)


# --------------------------------------------------------------------------- FLOPs


@dataclass(frozen=True)
class FlopBreakdown:
    """Forward FLOPs of one sequence per appendix-F term, summed over layers.

    Norms, biases, rotary embeddings and activations are left out, as in the paper: O(s d)
    against O(s d²).
    """

    seq_len: int
    causal: bool
    embedding: float
    qkv: float
    attention_logits: float
    softmax: float
    attention_values: float
    out_proj: float
    mlp: float
    final_logits: float

    @property
    def attention(self) -> float:
        return self.attention_logits + self.softmax + self.attention_values

    @property
    def layers(self) -> float:
        return self.qkv + self.attention + self.out_proj + self.mlp

    @property
    def vocabulary(self) -> float:
        return self.embedding + self.final_logits

    @property
    def total(self) -> float:
        return self.layers + self.vocabulary

    def to_dict(self) -> dict:
        out = asdict(self)
        out.update(attention=self.attention, layers=self.layers, vocabulary=self.vocabulary,
                   total=self.total)
        return out


def _check_seq_len(seq_len: int) -> None:
    if isinstance(seq_len, bool) or not isinstance(seq_len, int) or seq_len <= 0:
        raise ScalingError(f"seq_len must be a positive integer, got {seq_len!r}",
                             hint="pass the training sequence length, e.g. 2048")


def forward_flop_breakdown(cfg: ModelConfig, seq_len: int, *, causal: bool = False) -> FlopBreakdown:
    """Appendix-F terms; the embedding is priced as a one-hot matmul, as in the paper."""
    _check_seq_len(seq_len)
    s, d, v, layers = float(seq_len), float(cfg.d_model), float(cfg.vocab_size), cfg.n_layers
    q, kv, heads = float(cfg.q_width), float(cfg.kv_width), float(cfg.n_heads)
    square = 0.5 if causal else 1.0  # the causal triangle is half the s x s square
    return FlopBreakdown(
        seq_len=seq_len,
        causal=causal,
        embedding=2.0 * s * v * d,
        qkv=layers * 2.0 * s * d * (q + 2.0 * kv),
        attention_logits=layers * square * 2.0 * s * s * q,
        softmax=layers * square * 3.0 * heads * s * s,
        attention_values=layers * square * 2.0 * s * s * q,
        out_proj=layers * 2.0 * s * q * d,
        mlp=layers * 2.0 * MLP_MATRICES[cfg.mlp] * s * d * float(cfg.d_ff),
        final_logits=2.0 * s * d * v,
    )


def forward_flops_per_sequence(
    cfg: ModelConfig, seq_len: int, *, causal: bool = False, include_embedding: bool = True
) -> float:
    """Budgets count the full ``s × s`` attention square, as Chinchilla does, to compare with
    published laws; ``causal=True`` counts the triangle, as MaxText's MFU does.  Table A4
    reproduces only with ``include_embedding=False``.
    """
    terms = forward_flop_breakdown(cfg, seq_len, causal=causal)
    return terms.total if include_embedding else terms.layers


def train_flops_per_token(
    cfg: ModelConfig, seq_len: int, *, causal: bool = False, include_embedding: bool = True
) -> float:
    """``3 ×`` forward: the backward pass costs twice the forward."""
    forward = forward_flops_per_sequence(
        cfg, seq_len, causal=causal, include_embedding=include_embedding
    )
    return 3.0 * forward / seq_len


def executed_flops_per_token(cfg: ModelConfig, seq_len: int, *, causal: bool = False) -> float:
    """Training FLOPs per token for MFU, less the embedding: the model looks it up with a gather,
    so counting it as a matmul would overstate MFU (~13% for a tiny model)."""
    lookup = forward_flop_breakdown(cfg, seq_len, causal=causal).embedding
    return train_flops_per_token(cfg, seq_len, causal=causal) - 3.0 * lookup / seq_len


def train_flops(cfg: ModelConfig, seq_len: int, tokens: float, *, causal: bool = False) -> float:
    if tokens < 0:
        raise ScalingError(f"tokens must be non-negative, got {tokens!r}",
                             hint="pass the number of training tokens (steps x batch x seq_len)")
    return train_flops_per_token(cfg, seq_len, causal=causal) * float(tokens)


def six_n_flops_per_token(cfg: ModelConfig, *, non_embedding: bool = False) -> float:
    """``6 N`` per token: all parameters, as in Chinchilla's ``C = 6 N D``, or Kaplan's
    non-embedding N."""
    n = count_params_non_embedding(cfg) if non_embedding else count_params(cfg)
    return 6.0 * n
