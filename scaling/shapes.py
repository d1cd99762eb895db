"""From a parameter count to a hardware-friendly transformer shape (widths of ``multiple_of``,
heads of 64/128, the sizes MXUs and flash kernels are tuned for).

Loss is nearly flat across aspect ratios (Kaplan et al. 2020, fig. 5), so the cost
``|ln(N/N_target)| + 0.1 · |ln(aspect/preferred)|`` only pulls aspect towards Table A9's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Tuple

from chinchax.errors import ScalingError
from models.config import MLP_KINDS, ModelConfig

from scaling.flops import count_params


# Preferred aspect ratio d_model / n_layers ≈ ASPECT_COEF * N**ASPECT_EXPONENT, fitted (log-log
# least squares) to the 50 shapes of Chinchilla Table A9.
ASPECT_COEF = 5.5
ASPECT_EXPONENT = 0.125
ASPECT_WEIGHT = 0.1
MIN_HEADS = 8
# Widths are searched up to this value; far beyond any trainable model today.
MAX_D_MODEL = 1 << 17
# Stop widening once even the shallowest allowed model exceeds this multiple of the target.
_OVERSHOOT_STOP = 4.0


def _finite(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def preferred_aspect(n_params: float) -> float:
    return ASPECT_COEF * float(n_params) ** ASPECT_EXPONENT


@dataclass(frozen=True)
class ShapeSpace:
    """The shapes the search may pick from.

    ``ff_ratio=None``: 8/3 for SwiGLU, 4 for GELU. ``gqa_ratio`` is query heads per KV head; when it
    does not divide, the largest divisor of ``n_heads`` not above ``n_heads / gqa_ratio`` is used.
    """

    vocab_size: int = 32000
    multiple_of: int = 128
    head_dims: Tuple[int, ...] = (64, 128)
    min_aspect: float = 32.0
    max_aspect: float = 256.0
    target_aspect: Optional[float] = None
    mlp: str = "swiglu"
    ff_ratio: Optional[float] = None
    gqa_ratio: int = 1
    tie_embeddings: bool = False
    use_bias: bool = False
    min_layers: int = 1
    max_layers: int = 128

    def __post_init__(self) -> None:
        for name in ("vocab_size", "multiple_of", "gqa_ratio", "min_layers", "max_layers"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ScalingError(f"budget.{name} must be a positive integer, got {value!r}",
                                   hint=f"set budget.{name} to e.g. {getattr(ShapeSpace, name)}")
        if not self.head_dims or any(
            isinstance(h, bool) or not isinstance(h, int) or h <= 0 for h in self.head_dims
        ):
            raise ScalingError(f"budget.head_dims must be positive integers, got {self.head_dims!r}",
                               hint="use e.g. [64, 128] (or [16, 32] for tiny CPU models)")
        object.__setattr__(self, "head_dims", tuple(self.head_dims))
        if self.min_layers > self.max_layers:
            raise ScalingError(
                f"budget.min_layers={self.min_layers} exceeds budget.max_layers={self.max_layers}",
                hint="set min_layers <= max_layers (equal values fix the depth)")
        if not (_finite(self.min_aspect) and _finite(self.max_aspect)
                and 1 <= self.min_aspect <= self.max_aspect):
            raise ScalingError(
                f"budget aspect range [{self.min_aspect}, {self.max_aspect}] is empty, below 1 "
                "or not finite",
                hint="d_model / n_layers bounds need 1 <= min_aspect <= max_aspect, e.g. 32 and 256")
        for name in ("target_aspect", "ff_ratio"):
            value = getattr(self, name)
            if value is not None and not (_finite(value) and value > 0):
                raise ScalingError(f"budget.{name} must be positive and finite, got {value!r}",
                                   hint=f"leave budget.{name} unset for the default")
        if self.mlp not in MLP_KINDS:
            raise ScalingError(f"budget.mlp={self.mlp!r} is not one of {', '.join(MLP_KINDS)}",
                               hint=f"use one of: {', '.join(MLP_KINDS)}")

    @property
    def resolved_ff_ratio(self) -> float:
        if self.ff_ratio is not None:
            return self.ff_ratio
        return 8.0 / 3.0 if self.mlp == "swiglu" else 4.0

    def d_ff(self, d_model: int) -> int:
        units = max(1, round(self.resolved_ff_ratio * d_model / self.multiple_of))
        return units * self.multiple_of

    def head_dim(self, d_model: int) -> Optional[int]:
        """Widest listed head leaving ``MIN_HEADS`` heads, else the narrowest that divides."""
        dividing = sorted(h for h in set(self.head_dims) if d_model % h == 0)
        if not dividing:
            return None
        wide = [h for h in dividing if d_model // h >= MIN_HEADS]
        return wide[-1] if wide else dividing[0]

    def kv_heads(self, n_heads: int) -> int:
        limit = max(1, n_heads // self.gqa_ratio)
        return max(k for k in range(1, limit + 1) if n_heads % k == 0)

    def layer_range(self, d_model: int) -> range:
        low = max(self.min_layers, math.ceil(d_model / self.max_aspect - 1e-9))
        high = min(self.max_layers, math.floor(d_model / self.min_aspect + 1e-9))
        return range(low, high + 1)

    def config(self, d_model: int, n_layers: int, base: Optional[ModelConfig] = None) -> ModelConfig:
        head_dim = self.head_dim(d_model)
        if head_dim is None:
            raise ScalingError(f"no head size in {list(self.head_dims)} divides d_model={d_model}",
                                  hint="add a head size dividing d_model to budget.head_dims")
        n_heads = d_model // head_dim
        shape = dict(
            vocab_size=self.vocab_size, d_model=d_model, n_layers=n_layers, n_heads=n_heads,
            n_kv_heads=self.kv_heads(n_heads), head_dim=head_dim, d_ff=self.d_ff(d_model),
            mlp=self.mlp, tie_embeddings=self.tie_embeddings, use_bias=self.use_bias,
        )
        return base.replace(**shape) if base is not None else ModelConfig(**shape)


@dataclass(frozen=True)
class ShapeCandidate:
    cost: float
    n_params: int
    d_model: int
    n_layers: int


def shape_candidates(target_params: float, space: ShapeSpace, limit: int = 10) -> list[ShapeCandidate]:
    if not target_params > 0 or math.isinf(target_params):
        raise ScalingError(f"target parameter count must be positive and finite, got {target_params!r}",
                              hint="check the budget's FLOPs and the law")
    preferred = space.target_aspect or preferred_aspect(target_params)
    preferred = min(max(preferred, space.min_aspect), space.max_aspect)
    log_target, log_preferred = math.log(target_params), math.log(preferred)
    scored: list[ShapeCandidate] = []
    d_model = space.multiple_of
    while d_model <= MAX_D_MODEL:
        depths = space.layer_range(d_model)
        if depths and space.head_dim(d_model) is not None:
            one = count_params(space.config(d_model, 1))
            per_layer = count_params(space.config(d_model, 2)) - one
            fixed = one - per_layer
            if scored and fixed + depths[0] * per_layer > _OVERSHOOT_STOP * target_params:
                break  # wider models only grow; the smallest one is always kept
            for n_layers in depths:
                n = fixed + n_layers * per_layer
                cost = abs(math.log(n) - log_target) + ASPECT_WEIGHT * abs(
                    math.log(d_model / n_layers) - log_preferred)
                scored.append(ShapeCandidate(cost, n, d_model, n_layers))
        d_model += space.multiple_of
    scored.sort(key=lambda c: (c.cost, c.n_params, c.d_model))
    return scored[:limit]


def search_shape(target_params: float, space: ShapeSpace, base: Optional[ModelConfig] = None) -> ModelConfig:
    """``base`` supplies the non-shape fields (dtypes, remat, RoPE theta, ...)."""
    best = shape_candidates(target_params, space, limit=1)
    if not best:
        raise ScalingError(
            f"no shape satisfies the constraints (multiple_of={space.multiple_of}, "
            f"head_dims={list(space.head_dims)}, aspect {space.min_aspect}-{space.max_aspect}, "
            f"layers {space.min_layers}-{space.max_layers})",
            hint="widen the aspect range or make multiple_of a multiple of a head size")
    return space.config(best[0].d_model, best[0].n_layers, base)
