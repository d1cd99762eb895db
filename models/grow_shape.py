"""HyperCloning's shapes, without JAX: the factor and variant checks and the grown and shrunk
model shapes (the CLI checks its arguments with these before JAX starts)."""

from __future__ import annotations

import math
import numbers
from typing import Any, List

from chinchax.errors import ModelError
from models.config import ModelConfig

VARIANTS = ("symmetric", "noisy")
MAX_FACTOR = 64  # parameters grow as the square: 64x is already 4096x the size
DEFAULT_NOISE_SCALE = 10.0 ** (-10.0 / 20.0)  # noise std / block std: the paper's 10 dB SNR
# Fields a grown shape must agree on with ``grow_config(source, factor)``.
SHAPE_FIELDS = ("vocab_size", "d_model", "n_layers", "n_heads", "n_kv_heads", "head_dim", "d_ff",
                "mlp", "tie_embeddings", "use_bias")


def check_factor(factor: Any) -> int:
    """The factor as an int, or a :class:`ModelError` (an integer ≥ 2 is required)."""
    if (isinstance(factor, bool) or not isinstance(factor, numbers.Real)
            or not math.isfinite(factor) or factor != int(factor)):
        raise ModelError(f"growth factor {factor!r} is not an integer",
                                hint="HyperCloning widens by a whole factor: use 2, 3, 4, ...")
    if int(factor) < 2:
        raise ModelError(f"growth factor {int(factor)} is below 2",
                                hint="use --factor 2 (or more); a factor of 1 is the same model")
    if int(factor) > MAX_FACTOR:
        raise ModelError(f"growth factor {int(factor)} is above {MAX_FACTOR}",
                         hint="HyperCloning widens by a small factor (2 to 8 in the paper); grow "
                         "in several steps, or train the wide model from scratch")
    return int(factor)


def check_variant(variant: str, noise_scale: float) -> None:
    if variant not in VARIANTS:
        raise ModelError(f"unknown HyperCloning variant {variant!r}",
                                hint=f"use one of: {', '.join(VARIANTS)}")
    if not (isinstance(noise_scale, numbers.Real) and math.isfinite(noise_scale) and noise_scale >= 0):
        raise ModelError(f"noise scale {noise_scale!r} must be a finite number >= 0",
                                hint=f"the paper's 10 dB is {DEFAULT_NOISE_SCALE:.3f}; 0 gives "
                                "the symmetric variant")


def grow_config(cfg: ModelConfig, factor: int) -> ModelConfig:
    """The shape ``factor`` times wider (``d_model``, ``d_ff``, query and kv heads); ``head_dim``,
    depth, vocabulary and numerics are kept (an implied head_dim too: d_model, n_heads grow alike)."""
    n = check_factor(factor)
    if cfg.resolved_head_dim % 2:
        raise ModelError(
            f"the source model's head_dim={cfg.resolved_head_dim} is odd, so it is not a model "
            "this framework builds", hint="check the source run's model: section")
    return cfg.replace(
        d_model=cfg.d_model * n,
        d_ff=cfg.d_ff * n,
        n_heads=cfg.n_heads * n,
        n_kv_heads=None if cfg.n_kv_heads is None else cfg.n_kv_heads * n,
    )


def shrink_config(cfg: ModelConfig, factor: int) -> ModelConfig:
    """The narrow shape that :func:`grow_config` turns into ``cfg`` (its inverse)."""
    n = check_factor(factor)
    fields = {"d_model": cfg.d_model, "d_ff": cfg.d_ff, "n_heads": cfg.n_heads,
              "n_kv_heads": cfg.kv_heads}
    bad = [f"{name}={value}" for name, value in fields.items() if value % n]
    if bad:
        raise ModelError(
            f"the model's {', '.join(bad)} cannot be {n} copies of a narrower model",
            hint=f"a grown model has d_model, d_ff, n_heads and n_kv_heads all multiples of the "
            f"factor {n}: write its shape with `chinchax grow`")
    narrow = cfg.replace(d_model=cfg.d_model // n, d_ff=cfg.d_ff // n, n_heads=cfg.n_heads // n,
                         n_kv_heads=None if cfg.n_kv_heads is None else cfg.n_kv_heads // n)
    if narrow.resolved_head_dim != cfg.resolved_head_dim:  # an implied head_dim that would change
        raise ModelError(
            f"head_dim {cfg.resolved_head_dim} is not kept when dividing by {n}",
            hint="set model.head_dim explicitly in both runs")
    return narrow


def shape_differences(expected: ModelConfig, actual: ModelConfig) -> List[str]:
    """``"field: expected X, got Y"`` for every shape field that differs (resolved values)."""
    def value(cfg: ModelConfig, name: str) -> Any:
        return {"n_kv_heads": cfg.kv_heads, "head_dim": cfg.resolved_head_dim}.get(name, getattr(cfg, name))

    return [f"{name}: expected {value(expected, name)!r}, got {value(actual, name)!r}"
            for name in SHAPE_FIELDS if value(expected, name) != value(actual, name)]
