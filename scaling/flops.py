"""One FLOP and parameter counter, shared by the allocator, the trainer's MFU and the fits.

Everything here is integer/float arithmetic on a :class:`~models.config.ModelConfig`; there is
no JAX import, so a budget can be planned instantly and anywhere.

Parameters
    :func:`count_params` follows the parameter layout fixed in ``models/config.py`` term by
    term, so it equals the number of scalars in the tree that ``models/transformer.py`` builds.

FLOPs
    :func:`forward_flops_per_sequence` uses the accounting of Chinchilla's appendix F
    (Hoffmann et al. 2022), one multiply-accumulate = 2 FLOPs, extended to what our model does:

    ============== =====================================================================
    embeddings     ``2 s V d`` (the lookup counted as a one-hot matmul, as the paper does)
    QKV            ``2 s d (q_width + 2 kv_width)``; ``6 s d (k h)`` without GQA; GQA's
                   narrower K/V shrink the last two widths
    logits         ``2 s² (k h)``: every query head scores every key (GQA shares K only)
    softmax        ``3 h s²``
    attend         ``2 s² (k h)``
    out-proj       ``2 s (k h) d``
    dense          ``2 s d d_ff`` per matrix: ``4 s d d_ff`` for the two-matrix GELU MLP,
                   ``6 s d d_ff`` for SwiGLU's gate, up and down
    final logits   ``2 s d V`` (the output head, tied or not)
    ============== =====================================================================

    Norms, biases, rotary embeddings and activations are left out, as in the paper: they are
    O(s d) per layer against the O(s d²) matmuls.

    **Causal attention.**  A causal model needs only the lower triangle of the ``s × s`` score
    matrix, so a kernel that skips masked blocks does about half the score/softmax/attend work.
    Budgets count the full square (``causal=False``, the default), as Chinchilla's appendix F
    does, so that they stay comparable with published laws.  MFU counts the triangle
    (``causal=True`` halves those three terms): MaxText's ``calculate_tflops_training_per_device``
    has halved causal attention since mid-2025, as Megatron and NeMo do, so ``mfu`` is the
    causal figure and matches MaxText's within 0.03%; the full-square figure is reported beside
    it as ``mfu_full_square``.

    Training is ``3 ×`` forward (the backward pass costs twice the forward), as in the paper.

    **Against XLA.**  Our model looks embeddings up with a gather, which XLA's
    ``cost_analysis()`` counts as (almost) free, so compare XLA with
    ``3 × (breakdown.total - breakdown.embedding)``; that agrees within 1.5% on CPU for small
    shapes with unscanned layers (XLA counts a ``lax.scan`` body once, not ``n_layers`` times).

Table A4 of the paper (appendix-F FLOPs over ``6 N D``) reproduces to within 0.01 only when
the embedding and final-logit FLOPs are left out (``include_embedding=False``) **and** ``N``
is the paper's own parameter count (Table A9), which for the Gopher-family models is our tied
GELU count plus one ``d × d`` relative-position projection per layer (Transformer-XL style
attention): ``N = count_params(cfg) + n_layers * d_model**2``.  ``tests/test_flops.py`` checks
both that identity on all 50 rows of Table A9 and the six ratios of Table A4.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from chinchax.errors import ScalingError
from models.config import ModelConfig


# Matrices in the MLP block: gate, up and down for SwiGLU; up and down for GELU.
MLP_MATRICES = {"swiglu": 3, "gelu": 2}


# --------------------------------------------------------------------------- parameters


def _layer_params(cfg: ModelConfig) -> int:
    """Scalars in one decoder layer, following the layout in ``models/config.py``."""
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
    """Scalars in the vocabulary matrices: the embedding, plus the head when untied."""
    per_matrix = cfg.vocab_size * cfg.d_model
    return per_matrix if cfg.tie_embeddings else 2 * per_matrix


def count_params(cfg: ModelConfig) -> int:
    """Exact number of parameter scalars of the model ``cfg`` describes.

    Equals ``sum(x.size for x in leaves(nnx.state(Transformer(cfg), nnx.Param)))``: embedding,
    ``n_layers`` decoder layers (norms, attention, MLP, optional biases), the final norm and,
    when untied, the output head (never biased).
    """
    return embedding_params(cfg) + cfg.n_layers * _layer_params(cfg) + cfg.d_model


def count_params_non_embedding(cfg: ModelConfig) -> int:
    """Parameters outside the vocabulary matrices (Kaplan et al.'s "non-embedding" N).

    Both the input embedding and the output head are excluded, tied or not; the layers and the
    final norm remain.
    """
    return count_params(cfg) - embedding_params(cfg)


# --------------------------------------------------------------------------- FLOPs


@dataclass(frozen=True)
class FlopBreakdown:
    """Forward FLOPs of one sequence, term by term (layer terms summed over all layers).

    Field names follow Chinchilla appendix F; ``total`` is their sum.  Useful for tables and
    for seeing where the compute of a small model goes (vocabulary and attention terms
    dominate at small ``d_model``).
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
        """The ``s²`` terms: score logits, softmax and the weighted sum of values."""
        return self.attention_logits + self.softmax + self.attention_values

    @property
    def layers(self) -> float:
        """Everything inside the decoder layers."""
        return self.qkv + self.attention + self.out_proj + self.mlp

    @property
    def vocabulary(self) -> float:
        """The two vocabulary-sized matmuls: embedding and final logits."""
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
    """Appendix-F forward FLOPs of one sequence of ``seq_len`` tokens, per term."""
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
    """Forward FLOPs of one sequence (see the module docstring for the terms).

    ``causal=False`` (default) counts the full ``s × s`` attention square, as Chinchilla does;
    ``causal=True`` counts only the triangle a causal kernel needs (MFU's count, as MaxText's).
    ``include_embedding=False`` drops both vocabulary-sized matmuls (embedding and final
    logits), the convention under which Table A4 reproduces.
    """
    terms = forward_flop_breakdown(cfg, seq_len, causal=causal)
    return terms.total if include_embedding else terms.layers


def train_flops_per_token(
    cfg: ModelConfig, seq_len: int, *, causal: bool = False, include_embedding: bool = True
) -> float:
    """Training FLOPs per token: ``3 ×`` forward (forward + twice as much backward) / ``seq_len``."""
    forward = forward_flops_per_sequence(
        cfg, seq_len, causal=causal, include_embedding=include_embedding
    )
    return 3.0 * forward / seq_len


def executed_flops_per_token(cfg: ModelConfig, seq_len: int, *, causal: bool = False) -> float:
    """Training FLOPs per token that the compiled step actually performs, for MFU.

    Chinchilla's accounting prices the input embedding as a one-hot matmul (``2 V d`` per
    token forward); the model does it as a gather, which costs next to nothing.  Counting it
    would overstate MFU (by ~13% for a tiny model, a few percent at 1B with a 32k vocabulary),
    so MFU uses this figure: the same counter less that one term.  The final logits matmul is
    real work and stays.
    """
    lookup = forward_flop_breakdown(cfg, seq_len, causal=causal).embedding
    return train_flops_per_token(cfg, seq_len, causal=causal) - 3.0 * lookup / seq_len


def train_flops(cfg: ModelConfig, seq_len: int, tokens: float, *, causal: bool = False) -> float:
    """Training FLOPs for ``tokens`` tokens in sequences of ``seq_len``."""
    if tokens < 0:
        raise ScalingError(f"tokens must be non-negative, got {tokens!r}",
                             hint="pass the number of training tokens (steps x batch x seq_len)")
    return train_flops_per_token(cfg, seq_len, causal=causal) * float(tokens)


def six_n_flops_per_token(cfg: ModelConfig, *, non_embedding: bool = False) -> float:
    """The ``6 N`` rule of thumb per token, with ``N`` the exact parameter count.

    ``N`` counts all parameters by default, the convention of Chinchilla's ``C = 6 N D``;
    ``non_embedding=True`` gives Kaplan et al.'s ``6 N`` over non-embedding parameters.
    """
    n = count_params_non_embedding(cfg) if non_embedding else count_params(cfg)
    return 6.0 * n
