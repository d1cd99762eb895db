"""Continual pre-training (CPT) laws, Zheng et al. 2024, "Breaking Language Barriers".

CPT: ``E + A/N**alpha + B'/(D**beta' N**gamma)``, ``D`` = continual tokens only, ``E``, ``A``,
``alpha`` shared with the scratch fit. The paper's scratch ``B``, ``beta`` are derived from its
allocation (:func:`data_term_for_allocation`); the same inverse reproduces the printed CPT ``B'``,
``beta'`` within 0.4%. CPT saves only below :func:`crossover_tokens` (~3.6 tokens/param at 1e8).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Tuple, Union

from chinchax.errors import ScalingError
from scaling.fit import FitConfig, FitReport, fit
from scaling.laws import ParametricLaw, PowerLawAllocation, get_law
from scaling.observations import Observations


ZHENG_SOURCE = "Zheng et al. 2024, 'Breaking Language Barriers: Cross-Lingual Continual Pre-Training at Scale'"

# The fit shared by both laws, and the CPT data term, as printed.
ZHENG_E, ZHENG_A, ZHENG_ALPHA = 1.55, 420.0, 0.40
ZHENG_CPT_B, ZHENG_CPT_BETA, ZHENG_CPT_GAMMA = 433.3, 0.20, 0.08

# The compute-optimal allocations as printed (C in FLOPs, C = 6 N D).
ZHENG_SCRATCH_ALLOCATION = PowerLawAllocation(
    a=0.429, n_coef=0.324, name="zheng-2024-allocation", source=f"{ZHENG_SOURCE}, from scratch")
ZHENG_CPT_ALLOCATION = PowerLawAllocation(
    a=0.385, n_coef=4.79, name="zheng-2024-cpt-allocation", source=f"{ZHENG_SOURCE}, CPT")


def data_term_for_allocation(allocation: PowerLawAllocation, *, A: float, alpha: float,
                             gamma: float = 0.0) -> Tuple[float, float]:
    """``(B, beta)`` whose ``N_opt(C)`` is ``k C**a``: ``beta = a (alpha - gamma) / (1 - a)``,
    ``B = alpha A / ((beta - gamma) g**s)``, ``g = k 6**a``, ``s = alpha + beta - gamma``.
    """
    a, k = allocation.a, allocation.n_coef
    if not 0.0 < a < 1.0 or k <= 0.0:
        raise ScalingError(f"allocation N_opt = {k:g} C**{a:g} has no parametric counterpart",
                       hint="the exponent must lie in (0, 1) and the coefficient be positive")
    if alpha <= gamma or A <= 0.0:
        raise ScalingError(f"alpha={alpha:g} <= gamma={gamma:g} or A={A:g} <= 0: no compute optimum",
                       hint="give the fitted alpha and A of the from-scratch law")
    beta = a * (alpha - gamma) / (1.0 - a)
    exponent_sum = alpha + beta - gamma
    g = k * 6.0**a
    return alpha * A / ((beta - gamma) * g**exponent_sum), beta


def _zheng_scratch() -> ParametricLaw:
    b, beta = data_term_for_allocation(ZHENG_SCRATCH_ALLOCATION, A=ZHENG_A, alpha=ZHENG_ALPHA)
    return ParametricLaw(
        E=ZHENG_E, A=ZHENG_A, B=b, alpha=ZHENG_ALPHA, beta=beta, name="zheng-2024",
        source=f"{ZHENG_SOURCE}, from scratch: E, A, alpha as printed; B and beta derived from "
        "the printed allocation N_opt = 0.324 C^0.429 (scaling/cpt.py)")


ZHENG_2024 = _zheng_scratch()
ZHENG_2024_CPT = ParametricLaw(
    E=ZHENG_E, A=ZHENG_A, B=ZHENG_CPT_B, alpha=ZHENG_ALPHA, beta=ZHENG_CPT_BETA,
    gamma=ZHENG_CPT_GAMMA, name="zheng-2024-cpt",
    source=f"{ZHENG_SOURCE}, continual pre-training law as printed (D = CPT tokens)")

BaseLaw = Union[str, ParametricLaw]


def _base_law(base: BaseLaw) -> ParametricLaw:
    law = get_law(base) if isinstance(base, str) else base
    if not isinstance(law, ParametricLaw):
        raise ScalingError(f"base law {getattr(law, 'name', law)!r} is an allocation power law",
                       hint="the CPT fit holds E, A and alpha of a parametric from-scratch fit "
                       "(e.g. 'zheng-2024' or a law file from 'chinchax fit')")
    if law.gamma != 0.0:
        raise ScalingError(f"base law {law.name!r} has gamma={law.gamma:g}: it is already a CPT law",
                       hint="pass the from-scratch law whose E, A and alpha the CPT law keeps")
    return law


def cpt_fit_config(base: BaseLaw, config: FitConfig = FitConfig()) -> FitConfig:
    """``config`` with ``E``, ``A``, ``alpha`` fixed at ``base``'s values and ``gamma`` free."""
    law = _base_law(base)
    if config.approach != 3:
        raise ScalingError(f"the CPT law is fitted by approach 3, not approach {config.approach}",
                       hint="leave fit.approach at 3")
    return dataclasses.replace(config, fixed={"E": law.E, "A": law.A, "alpha": law.alpha},
                               free_gamma=True)


def fit_cpt_law(observations: Observations, base: BaseLaw, config: FitConfig = FitConfig(), *,
                name: str = "cpt") -> FitReport:
    """Fit the CPT law to runs whose ``D`` counts continual tokens only; needs >= 2 model sizes."""
    return fit(observations, cpt_fit_config(base, config), name=name)


def equal_loss_tokens(scratch: ParametricLaw, cpt: ParametricLaw, n_params: float,
                      tokens: float) -> float:
    """CPT tokens reaching the loss a scratch model of ``n_params`` reaches after ``tokens``."""
    _check_pair(scratch, cpt)
    if n_params <= 0 or tokens <= 0:
        raise ScalingError(f"N={n_params:g} and D={tokens:g} must be positive", hint="pass counts")
    log_d = (math.log(cpt.B) + scratch.beta * math.log(tokens) - math.log(scratch.B)
             - cpt.gamma * math.log(n_params)) / cpt.beta
    return math.exp(log_d)


def compute_saving(scratch: ParametricLaw, cpt: ParametricLaw, n_params: float, tokens: float) -> float:
    """``1 - D'/D``: share of from-scratch FLOPs saved (source pre-training is sunk cost)."""
    return 1.0 - equal_loss_tokens(scratch, cpt, n_params, tokens) / tokens


def crossover_tokens(scratch: ParametricLaw, cpt: ParametricLaw, n_params: float) -> float:
    """Tokens up to which CPT's data term is the smaller; ``inf`` when CPT's exponent is the larger."""
    _check_pair(scratch, cpt)
    if cpt.beta >= scratch.beta:
        return math.inf
    log_d = (math.log(scratch.B) + cpt.gamma * math.log(n_params) - math.log(cpt.B)) / (
        scratch.beta - cpt.beta)
    return math.exp(log_d)


def _check_pair(scratch: ParametricLaw, cpt: ParametricLaw) -> None:
    shared = ("E", "A", "alpha")
    if any(not math.isclose(getattr(scratch, k), getattr(cpt, k), rel_tol=1e-9) for k in shared):
        raise ScalingError(f"laws {scratch.name!r} and {cpt.name!r} do not share E, A and alpha",
                       hint="fit the CPT law with fit_cpt_law(obs, base=<the from-scratch law>)")
    if scratch.gamma != 0.0:
        raise ScalingError(f"law {scratch.name!r} has gamma={scratch.gamma:g}; the first law must be "
                       "the from-scratch one", hint="pass (from_scratch_law, cpt_law) in that order")
