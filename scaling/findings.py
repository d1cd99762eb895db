"""Degenerate fits stated as findings with what to do: a reader acts on the top of a report, not on
a warning that scrolled past."""

from __future__ import annotations

import math
import warnings
from typing import Any, Optional

from chinchax.errors import ScalingError
from scaling.fit_approach12 import fit_isoflop
from scaling.fit_bootstrap import Interval
from scaling.fit_config import FitConfig, FitWarning
from scaling.observations import Observations

# E below this share of the lowest observed loss is at the edge of what the data identify.
E_EDGE_SHARE = 0.05
DISAGREEMENT_FACTOR = 2.0


def e_finding(E: float, min_loss: float, interval: Optional[Interval] = None) -> Optional[str]:
    """``E`` pushed towards 0 (or its interval reaching it): the data cannot tell E from B/D^beta."""
    low = None if interval is None else interval.low
    if E < E_EDGE_SHARE * min_loss or (low is not None and math.isfinite(low) and low < E_EDGE_SHARE * min_loss):
        where = f"E = {E:.3g}" + ("" if low is None else f" (interval down to {low:.3g})")
        return (f"E is not identified: {where} sits at the edge of its range, far below the lowest "
                f"loss {min_loss:.3g}; add budgets (5 or more over 30x compute) or pin E "
                "(chinchax fit --fix E=VALUE)")
    return None


def agreement_finding(n_opt_2: float, n_opt_3: float, target_flops: float) -> Optional[str]:
    ratio = n_opt_2 / n_opt_3
    if 1.0 / DISAGREEMENT_FACTOR <= ratio <= DISAGREEMENT_FACTOR:
        return None
    return (f"approaches 2 and 3 disagree {max(ratio, 1 / ratio):.1f}x on N_opt at {target_flops:.3g} "
            f"FLOPs ({n_opt_2:.3g} vs {n_opt_3:.3g}): the allocation is not identified; add budgets "
            "with each minimum inside its sweep, or pin E")


def approach2_n_opt(obs: Observations, config: FitConfig, target_flops: float) -> Optional[float]:
    """Approach 2's ``N_opt`` at ``target_flops`` as a cross-check (``None`` if it cannot fit)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FitWarning)
            return float(fit_isoflop(obs, config, emit_warnings=False).law.allocate(target_flops).n_params)
    except (ScalingError, ArithmeticError, ValueError):
        return None


def fit_findings(estimates: dict[str, Any], intervals: dict[str, Any], obs: Observations,
                 config: FitConfig, target_flops: float) -> list[str]:
    found = []
    if "E" in estimates and "E" not in config.fixed:
        edge = e_finding(float(estimates["E"]), float(obs.loss.min()), intervals.get("E"))
        if edge:
            found.append(edge)
    n3 = estimates.get("n_opt")
    n2 = approach2_n_opt(obs, config, target_flops)
    if n2 is not None and n3 is not None and math.isfinite(n3) and n3 > 0:
        disagreement = agreement_finding(n2, float(n3), target_flops)
        if disagreement:
            found.append(disagreement)
    return found
