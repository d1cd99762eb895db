"""How long a ladder's runs take: FLOPs (training and evals) at a rate, plus start-up."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Optional, Sequence

from scaling.allocate import RunPlan

@dataclass(frozen=True)
class WallTimeModel:
    """``source``: where the rate came from (``configured``, ``measured on N rungs``, ``guess``)."""

    flops_per_second: float
    overhead_s: float
    source: str


# A 2-core laptop-class CPU trains the tiny models of a CPU ladder at 10-40 GFLOP/s.
CPU_GUESS_FLOPS_PER_SECOND = 1.5e10


def eval_tokens(steps: int, eval_every: int, tokens_per_step: int) -> list[int]:
    return [s * tokens_per_step for s in range(1, steps + 1) if s % eval_every == 0 or s == steps]


def run_cost_flops(plan: RunPlan, eval_every: int, eval_batches: int) -> float:
    """Training FLOPs plus the forward FLOPs of every eval (batches of ``global_batch``)."""
    evals = len(eval_tokens(plan.steps, eval_every, 1))
    forward_per_token = plan.flops_per_token / 3.0
    return plan.flops + evals * eval_batches * plan.global_batch * plan.seq_len * forward_per_token


def estimate_seconds(plan: RunPlan, model: WallTimeModel, *, eval_every: int, eval_batches: int) -> float:
    return run_cost_flops(plan, eval_every, eval_batches) / model.flops_per_second + model.overhead_s


def measured_wall_time_model(summaries: Sequence[Mapping[str, Any]], overhead_s: float) -> Optional[WallTimeModel]:
    """Rate from finished runs: their FLOPs over their wall time less the per-run overhead."""
    done = [s for s in summaries if s.get("status") == "complete" and s.get("wall_time_s")]
    if not done:
        return None
    flops = sum(float(s["flops"]) for s in done)
    seconds = sum(max(float(s["wall_time_s"]) - overhead_s, 1e-3) for s in done)
    return WallTimeModel(flops / seconds, overhead_s, f"measured on {len(done)} finished run(s)")
