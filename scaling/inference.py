"""Sizing a model for training plus serving compute (Sardana et al. 2024, "Beyond Chinchilla-Optimal").

Serving ``T`` tokens costs ``2 N T`` FLOPs on top of ``6 N D``. ``same_loss`` is the least total
at Chinchilla's loss, ``same_cost`` the least loss at Chinchilla's total; both are smaller models.

Worked example (``epoch-2024``, PaLM's ``C = 2.53e24``, ``T = 1e13``; the tests recompute it):

==============================  ======  ======  =====  =======  =========  =======
sizing                          N       D       loss   train    inference  total
==============================  ======  ======  =====  =======  =========  =======
PaLM (540B on 780B)             540B    780B    1.950  2.53e24  1.08e25    1.33e25
140B on 3T                      140B    3.0T    1.938  2.52e24  2.80e24    5.32e24
Chinchilla at ``C``             154B    2.73T   1.938  2.53e24  3.08e24    5.61e24
``same_loss``                   86.8B   5.63T   1.938  2.93e24  1.74e24    4.67e24
``same_cost``                   99.9B   6.03T   1.933  3.61e24  2.00e24    5.61e24
cheapest at PaLM's loss         61.4B   4.81T   1.950  1.77e24  1.23e24    3.00e24
==============================  ======  ======  =====  =======  =========  =======
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Callable

from chinchax.errors import ScalingError
from scaling.laws import Law, ParametricLaw


# ``train``: Chinchilla's allocation (inference cost reported only); ``total``: the least total
# compute (training + inference) that reaches Chinchilla's loss.
OBJECTIVES = ("train", "total")
INFERENCE_FLOPS_PER_PARAM = 2.0  # one forward pass per served token
TRAIN_FLOPS_PER_PARAM = 6.0
# 1e-12 relative in N, far below any shape rounding.
_LOG_TOL = 1e-12
# Up to 60 steps of e**2 in log N covers any sane model size.
_EXPAND_STEP = 2.0
_EXPAND_LIMIT = 60


@dataclass(frozen=True)
class InferenceOption:
    """``saving`` = ``1 - total / chinchilla_total`` (positive: cheaper); ``loss_change`` < 0: better."""

    name: str
    n_params: float
    tokens: float
    loss: float
    train_flops: float
    inference_flops: float
    total_flops: float
    saving: float
    loss_change: float

    @property
    def tokens_per_param(self) -> float:
        return self.tokens / self.n_params


@dataclass(frozen=True)
class InferenceTradeoff:
    """The three allocations of a training budget ``flops`` for ``inference_tokens`` served."""

    law: str
    flops: float
    inference_tokens: float
    chinchilla: InferenceOption
    same_loss: InferenceOption
    same_cost: InferenceOption

    def chosen(self, objective: str) -> InferenceOption:
        """``train`` → ``chinchilla``, ``total`` → ``same_loss``."""
        check_objective(objective)
        return self.chinchilla if objective == "train" else self.same_loss

    @property
    def options(self) -> tuple[InferenceOption, InferenceOption, InferenceOption]:
        return (self.chinchilla, self.same_loss, self.same_cost)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        for key in ("chinchilla", "same_loss", "same_cost"):
            out[key]["tokens_per_param"] = getattr(self, key).tokens_per_param
        return out


# ================================================================================= validation
def check_inference_tokens(tokens: Any) -> float:
    if isinstance(tokens, bool) or not isinstance(tokens, (int, float)) or not math.isfinite(tokens) \
            or tokens < 0:
        raise ScalingError(
            f"inference tokens (budget.inference_tokens) must be a finite number >= 0, got {tokens!r}",
            hint="pass the tokens the model will serve over its life, e.g. --inference-tokens 1e12 "
            "(0: training compute only)")
    return float(tokens)


def check_objective(objective: Any) -> str:
    if objective not in OBJECTIVES:
        raise ScalingError(f"objective (budget.objective) must be one of {', '.join(OBJECTIVES)}, got {objective!r}",
                              hint="'train' keeps Chinchilla's allocation; 'total' also counts "
                              "inference compute")
    return str(objective)


def _parametric(law: Law) -> ParametricLaw:
    if not isinstance(law, ParametricLaw):
        raise ScalingError(
            f"law {getattr(law, 'name', law)!r} predicts no loss, so it cannot trade training "
            "against inference compute",
            hint="use a parametric law such as 'chinchilla' or 'epoch-2024', or a fitted approach-3 law")
    if law.beta <= law.gamma or law.alpha <= 0 or law.beta <= 0:
        raise ScalingError(
            f"law {law.name!r} (alpha={law.alpha}, beta={law.beta}, gamma={law.gamma}) has no "
            "compute-optimal frontier",
            hint="inference-aware sizing needs alpha > 0 and beta > gamma >= 0")
    return law


def _check_loss(law: ParametricLaw, loss: Any) -> float:
    if isinstance(loss, bool) or not isinstance(loss, (int, float)) or not math.isfinite(loss) \
            or loss <= law.E:
        raise ScalingError(
            f"target loss {loss!r} is not above the law's irreducible loss E={law.E:.4g}: "
            "no finite model reaches it",
            hint=f"ask for a loss above {law.E:.4g} (law {law.name!r})")
    return float(loss)


def check_flops(flops: Any, what: str, hint: str = "pass e.g. --flops 1e21") -> float:
    if isinstance(flops, bool) or not isinstance(flops, (int, float)) or not math.isfinite(flops) \
            or flops <= 0:
        raise ScalingError(f"{what} must be a positive, finite number of FLOPs, got {flops!r}", hint=hint)
    return float(flops)


# ================================================================================= searches
def _bracket_root(fn: Callable[[float], float], lo: float, hi: float) -> float:
    """``brentq`` between ``lo`` (``fn < 0``) and ``hi`` (``fn > 0``), widening either if needed."""
    for _ in range(_EXPAND_LIMIT):
        if fn(lo) < 0:
            break
        lo -= _EXPAND_STEP
    for _ in range(_EXPAND_LIMIT):
        if fn(hi) > 0:
            break
        hi += _EXPAND_STEP
    f_lo, f_hi = fn(lo), fn(hi)
    if f_hi == 0:
        return hi
    if not (f_lo < 0 < f_hi):
        raise ScalingError("the inference-aware search found no optimum for this law",
                              hint="check the law's coefficients (alpha, beta > 0, beta > gamma)")
    from scipy.optimize import brentq  # only here: scipy.optimize takes a second to import

    return float(brentq(fn, lo, hi, xtol=_LOG_TOL, maxiter=500))


def _iso_loss_tokens(law: ParametricLaw, n: float, loss: float) -> float:
    """``D`` with ``L(N, D) = loss``; ``inf`` where ``N`` alone cannot get below ``loss``."""
    room = loss - law.E - law.A * n ** -law.alpha
    if room <= 0:
        return math.inf
    return (law.B / (room * n**law.gamma)) ** (1.0 / law.beta)


def cheapest_for_loss(law: Law, loss: float, inference_tokens: float = 0.0) -> tuple[float, float]:
    """``(N, D)`` reaching ``loss`` at the least ``6 N D + 2 N T``; the slope in ``log N`` along the
    iso-loss curve runs from ``-inf`` to ``6 D (1 - gamma/beta) + 2T > 0``, so a root exists."""
    law = _parametric(law)
    loss = _check_loss(law, loss)
    t = check_inference_tokens(inference_tokens)
    log_n_min = math.log(law.A / (loss - law.E)) / law.alpha

    def slope(log_n: float) -> float:
        n = math.exp(log_n)
        d = _iso_loss_tokens(law, n, loss)
        if not math.isfinite(d):
            return -math.inf
        room = loss - law.E - law.A * n ** -law.alpha
        dlog_d = -(law.alpha * law.A * n ** -law.alpha / room + law.gamma) / law.beta
        return TRAIN_FLOPS_PER_PARAM * d * (1.0 + dlog_d) + INFERENCE_FLOPS_PER_PARAM * t

    log_n = _bracket_root(slope, log_n_min + 1e-9, log_n_min + 1.0)
    n = math.exp(log_n)
    return n, _iso_loss_tokens(law, n, loss)


def best_loss_for_total_cost(law: Law, total_flops: float,
                             inference_tokens: float = 0.0) -> tuple[float, float]:
    """``(N, D)`` of least loss at ``6 N D + 2 N T = total_flops``; ``dL/dlog N`` goes from < 0 to +inf."""
    law = _parametric(law)
    k = check_flops(total_flops, "total compute")
    t = check_inference_tokens(inference_tokens)

    def tokens_at(n: float) -> float:
        return k / (TRAIN_FLOPS_PER_PARAM * n) - t / 3.0

    def slope(log_n: float) -> float:
        n = math.exp(log_n)
        d = tokens_at(n)
        if d <= 0:
            return math.inf
        x = law.B / (d**law.beta * n**law.gamma)
        return (-law.alpha * law.A * n ** -law.alpha - law.gamma * x
                + law.beta * x * (d + t / 3.0) / d)

    # Start from the T = 0 optimum of the same total; the root lies at or below it (a served
    # token makes every parameter dearer).
    hi = math.log(law.optimal_params(k))
    if t > 0:
        hi = min(hi, math.log(k / (INFERENCE_FLOPS_PER_PARAM * t)))
    log_n = _bracket_root(slope, hi - 1.0, hi + 1e-9)
    n = math.exp(log_n)
    return n, tokens_at(n)


# ================================================================================= report
def _option(name: str, law: ParametricLaw, n: float, d: float, t: float,
            reference: tuple[float, float] | None) -> InferenceOption:
    loss = float(law.loss(n, d))
    train = TRAIN_FLOPS_PER_PARAM * n * d
    infer = INFERENCE_FLOPS_PER_PARAM * n * t
    total = train + infer
    ref_total, ref_loss = reference if reference is not None else (total, loss)
    return InferenceOption(name=name, n_params=n, tokens=d, loss=loss, train_flops=train,
                           inference_flops=infer, total_flops=total,
                           saving=1.0 - total / ref_total, loss_change=loss - ref_loss)


def inference_tradeoff(law: Law, flops: float, inference_tokens: float) -> InferenceTradeoff:
    law = _parametric(law)
    c = check_flops(flops, "training compute budget")
    t = check_inference_tokens(inference_tokens)
    optimum = law.allocate(c)  # cannot fail: _parametric has ruled out beta <= gamma
    chinchilla = _option("chinchilla", law, optimum.n_params, optimum.tokens, t, None)
    reference = (chinchilla.total_flops, chinchilla.loss)
    same_loss = _option("same_loss", law, *cheapest_for_loss(law, chinchilla.loss, t), t, reference)
    same_cost = _option("same_cost", law, *best_loss_for_total_cost(law, chinchilla.total_flops, t),
                        t, reference)
    return InferenceTradeoff(law=law.name, flops=c, inference_tokens=t, chinchilla=chinchilla,
                             same_loss=same_loss, same_cost=same_cost)
