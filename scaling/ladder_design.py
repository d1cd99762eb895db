"""A ladder's rungs: every run's exact shape, batch, steps and FLOPs, and a provisional target.

Each rung is planned by :func:`scaling.allocate.plan_run_at_size` (its budget within 1% under the
exact counter); sizes that round to the same shape run once.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any, Optional

from models.config import ModelConfig
from scaling.allocate import BudgetConfig, RunPlan, allocate, plan_run, plan_run_at_size, resolve_law
from chinchax.errors import ScalingError
from scaling.ladder_config import MIN_SIZES_PER_BUDGET, LadderConfig

@dataclass(frozen=True)
class Rung:

    name: str
    budget: float
    budget_index: int
    seed: int
    plan: RunPlan

    @property
    def model(self) -> ModelConfig:
        return self.plan.model

    def to_dict(self) -> dict[str, Any]:
        m = self.plan.model
        return {
            "name": self.name, "budget": self.budget, "budget_index": self.budget_index,
            "seed": self.seed, "n_params": self.plan.n_params,
            "requested_n_params": self.plan.requested_n_params, "tokens": self.plan.tokens,
            "tokens_per_param": self.plan.tokens_per_param, "steps": self.plan.steps,
            "global_batch": self.plan.global_batch, "seq_len": self.plan.seq_len,
            "flops": self.plan.flops, "flops_error": self.plan.flops_error,
            "learning_rate": self.plan.learning_rate, "shape": shape_label(m),
            "plan": self.plan.to_dict(),
        }


@dataclass(frozen=True)
class LadderPlan:
    """The target here is the design law's dry-run estimate; the fitted law re-sizes it."""

    config: LadderConfig
    rungs: tuple[Rung, ...]
    target_flops: float
    provisional_target: RunPlan
    data_parallel: int
    notes: tuple[str, ...] = ()

    @property
    def budgets(self) -> list[float]:
        return sorted({r.budget for r in self.rungs})

    @property
    def rung_flops(self) -> float:
        return float(sum(r.plan.flops for r in self.rungs))

    def to_dict(self) -> dict[str, Any]:
        return {
            "config": asdict(self.config),
            "target_flops": self.target_flops,
            "data_parallel": self.data_parallel,
            "rung_flops": self.rung_flops,
            "rungs": [r.to_dict() for r in self.rungs],
            "provisional_target": {"flops": self.provisional_target.flops,
                                   "n_params": self.provisional_target.n_params,
                                   "tokens": self.provisional_target.tokens,
                                   "steps": self.provisional_target.steps,
                                   "shape": shape_label(self.provisional_target.model),
                                   "law": self.provisional_target.law},
            "notes": list(self.notes),
        }


def shape_label(model: ModelConfig) -> str:
    """``d128·L4·h4·ff352``: width, depth, heads (``/kv`` when grouped) and MLP width."""
    heads = f"h{model.n_heads}" + (f"/{model.kv_heads}" if model.kv_heads != model.n_heads else "")
    return f"d{model.d_model}·L{model.n_layers}·{heads}·ff{model.d_ff}"


def compact_number(value: float) -> str:
    """Short, path-safe numbers for rung names: ``3e11``, ``1.2e13``, ``45k``, ``1.1M``."""
    if value >= 1e9:
        mantissa, exponent = f"{value:.2g}".split("e")
        return f"{mantissa}e{int(exponent)}"
    if value >= 1e6:
        return f"{value / 1e6:.2g}M"
    if value >= 1e3:
        return f"{value / 1e3:.0f}k"
    return f"{value:.0f}"


def rung_name(budget: float, model: ModelConfig, n_params: int, seed: int) -> str:
    return (f"C{compact_number(budget)}-N{compact_number(n_params)}-d{model.d_model}L{model.n_layers}"
            f"-s{seed}")


def design_ladder(cfg: LadderConfig, budget_template: BudgetConfig, data_parallel: int = 1,
                  base_model: Optional[ModelConfig] = None) -> LadderPlan:
    """Refuses a budget left with fewer than three distinct shapes."""
    law = resolve_law(cfg.law)
    rungs: list[Rung] = []
    notes: list[str] = []
    for index, budget in enumerate(sorted(float(b) for b in cfg.budgets)):
        template = replace(budget_template, flops=budget, law=cfg.law)
        centre = cfg.center_factor * allocate(budget, law).n_params
        chosen: dict[ModelConfig, RunPlan] = {}
        for factor in cfg.size_factors():
            wanted = centre * float(factor)
            try:
                plan = plan_run_at_size(template, wanted, data_parallel=data_parallel,
                                        base_model=base_model)
            except ScalingError as exc:
                notes.append(f"C={budget:.3g}: no rung near N={wanted:.3g} ({exc})")
                continue
            if plan.model in chosen:
                kept = chosen[plan.model]
                notes.append(f"C={budget:.3g}: N≈{wanted:.3g} rounds to the same shape as "
                             f"N≈{kept.requested_n_params:.3g} ({shape_label(plan.model)}, "
                             f"{plan.n_params:,} parameters); trained once")
                continue
            chosen[plan.model] = plan
        if len(chosen) < MIN_SIZES_PER_BUDGET:
            why = [n.split(": ", 1)[1] for n in notes if n.startswith(f"C={budget:.3g}: ")]
            raise ScalingError(
                f"budget {budget:.3g} FLOPs yields only {len(chosen)} distinct model shape(s) "
                f"under the shape constraints; an isoFLOP profile needs {MIN_SIZES_PER_BUDGET}"
                + (f" ({'; '.join(why)})" if why else ""),
                hint="raise the budget, widen ladder.size_spread, or allow finer shapes "
                "(lower budget.multiple_of or budget.head_dims, budget.min_aspect)")
        for plan in sorted(chosen.values(), key=lambda p: p.n_params):
            for seed in cfg.seeds:
                rungs.append(Rung(name=rung_name(budget, plan.model, plan.n_params, seed),
                                  budget=budget, budget_index=index, seed=int(seed), plan=plan))
    short = [r.name for r in rungs if cfg.fit == "curve" and r.plan.steps < cfg.drop_before_step]
    if short:
        notes.append(f"{len(short)} rung(s) end before step {cfg.drop_before_step} "
                     f"(ladder.drop_before_step), so the curve fit leaves them out: {', '.join(short)}")
    target_flops = cfg.resolved_target_flops
    try:
        provisional = plan_run(replace(budget_template, flops=target_flops, law=cfg.law),
                               data_parallel=data_parallel, base_model=base_model)
    except ScalingError as exc:
        raise ScalingError(f"the target budget {target_flops:.3g} FLOPs cannot be planned: {exc}",
                          hint=exc.hint) from None
    return LadderPlan(config=cfg, rungs=tuple(rungs), target_flops=target_flops,
                      provisional_target=provisional, data_parallel=data_parallel,
                      notes=tuple(notes))
