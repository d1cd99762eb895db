"""From a FLOP budget and a law to a model shape, tokens, batch and steps, before the run.

The law's ``N_opt`` (``C = 6 N D``) picks the nearest hardware-friendly shape; tokens come from
the exact counter, so the run spends the budget within 1% as the trainer counts it.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Optional, Union

from chinchax.errors import ScalingError
from models.config import ModelConfig
from scaling.batch import fit_steps, optimal_batch_sequences, optimal_learning_rate
from scaling.flops import (
    count_params,
    count_params_non_embedding,
    forward_flops_per_sequence,
    train_flops_per_token,
)
from scaling.inference import (InferenceTradeoff, check_flops, check_inference_tokens, check_objective,
                               inference_tradeoff)
from scaling.identity import identity_differences, law_identity
from scaling.laws import Allocation, Law, ParametricLaw, get_law, law_file_data
from scaling.shapes import ShapeSpace, search_shape


# Beyond this factor either way of N_opt, the budget cannot afford the smallest allowed shape
# (its vocabulary matrices, typically) or the law wants one beyond the largest.
MAX_PARAM_OVERSHOOT = 2.0


@dataclass(frozen=True)
class BudgetConfig(ShapeSpace):
    """A ``budget:`` section on top of :class:`ShapeSpace`: ``global_batch`` (sequences) and
    ``learning_rate`` override DeepSeek's fits; ``min_steps`` is the shortest run accepted.
    """

    flops: float = 1e19
    law: str = "chinchilla"
    seq_len: int = 2048
    global_batch: Optional[int] = None
    learning_rate: Optional[float] = None
    min_steps: int = 10
    tolerance: float = 0.01
    inference_tokens: float = 0.0
    objective: str = "train"

    def __post_init__(self) -> None:
        _check_flops(self.flops)
        for name in ("seq_len", "min_steps"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ScalingError(f"budget.{name} must be a positive integer, got {value!r}",
                                   hint=f"set budget.{name}, e.g. {getattr(BudgetConfig, name)}")
        if self.global_batch is not None and self.global_batch <= 0:
            raise ScalingError(f"budget.global_batch must be positive, got {self.global_batch}",
                               hint="leave it unset to use the compute-optimal batch")
        if self.learning_rate is not None and not (math.isfinite(self.learning_rate)
                                                   and 0 < self.learning_rate <= 10):
            raise ScalingError(f"budget.learning_rate must lie in (0, 10], got {self.learning_rate}",
                               hint="leave it unset to use the compute-optimal learning rate")
        if not 0 < self.tolerance < 1:
            raise ScalingError(f"budget.tolerance must be in (0, 1), got {self.tolerance}",
                               hint="use e.g. 0.01 for 1%")
        check_inference_tokens(self.inference_tokens)
        check_objective(self.objective)
        super().__post_init__()


@dataclass(frozen=True)
class RunPlan:
    """``flops``: exact counter × tokens; ``law_n_params``/``law_tokens``: the law's own optimum, for
    comparison; ``predicted_loss`` is ``None`` for power laws.
    """

    model: ModelConfig
    n_params: int
    n_params_non_embedding: int
    tokens: int
    steps: int
    global_batch: int
    seq_len: int
    flops: float
    flops_per_token: float
    predicted_loss: Optional[float]
    learning_rate: float
    law: str
    target_flops: float
    law_n_params: float
    law_tokens: float
    objective: str = "train"
    inference_tokens: float = 0.0
    inference_flops: float = 0.0
    inference: Optional[InferenceTradeoff] = None
    requested_n_params: Optional[float] = None
    # where the law was fitted on another tokenizer or sequence length than this plan's
    law_identity_differences: tuple[str, ...] = ()

    @property
    def total_flops(self) -> float:
        return self.flops + self.inference_flops

    @property
    def tokens_per_param(self) -> float:
        return self.tokens / self.n_params

    @property
    def batch_tokens(self) -> int:
        return self.global_batch * self.seq_len

    @property
    def flops_error(self) -> float:
        return self.flops / self.target_flops - 1.0

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out.update(tokens_per_param=self.tokens_per_param, batch_tokens=self.batch_tokens,
                   flops_error=self.flops_error,
                   six_n_flops_per_token=6.0 * self.n_params, total_flops=self.total_flops,
                   law_identity_differences=list(self.law_identity_differences))
        if self.inference is not None:
            out["inference"] = self.inference.to_dict()
        return out


def _check_flops(flops: Any) -> None:
    check_flops(flops, "compute budget", hint="pass e.g. --flops 1e19 (budget.flops: 1e19)")


def resolve_law(law: Union[str, Path, Law]) -> Law:
    return get_law(law) if isinstance(law, (str, Path)) else law


def allocate(flops: float, law: Union[str, Law] = "chinchilla") -> Allocation:
    _check_flops(flops)
    return resolve_law(law).allocate(float(flops))


def _check_data_parallel(budget: BudgetConfig, data_parallel: int) -> None:
    if isinstance(data_parallel, bool) or not isinstance(data_parallel, int) or data_parallel <= 0:
        raise ScalingError(f"data_parallel must be a positive integer, got {data_parallel!r}",
                              hint="pass the number of devices the batch is split over")
    if budget.global_batch is not None and budget.global_batch % data_parallel:
        raise ScalingError(
            f"global_batch={budget.global_batch} is not a multiple of the data-parallel size "
            f"{data_parallel}",
            hint=f"use a multiple of {data_parallel}, or leave global_batch unset")


def plan_run(budget: BudgetConfig, *, data_parallel: int = 1,
             base_model: Optional[ModelConfig] = None) -> RunPlan:
    """``data_parallel`` (data × fsdp × grad-accumulation) divides the batch; pure Python, instant."""
    _check_data_parallel(budget, data_parallel)
    law = resolve_law(budget.law)
    tradeoff = None
    if budget.inference_tokens > 0 and (budget.objective == "total" or isinstance(law, ParametricLaw)):
        tradeoff = inference_tradeoff(law, budget.flops, budget.inference_tokens)
    if tradeoff is not None and budget.objective == "total":
        choice = tradeoff.same_loss
        optimum = Allocation(flops=choice.train_flops, n_params=choice.n_params,
                             tokens=choice.tokens, loss=choice.loss)
    else:
        optimum = allocate(budget.flops, law)
    return _plan_for_params(budget, law, optimum, optimum.n_params, data_parallel=data_parallel,
                            base_model=base_model, tradeoff=tradeoff, wanted="the law wants")


def plan_run_at_size(budget: BudgetConfig, n_params: float, *, data_parallel: int = 1,
                     base_model: Optional[ModelConfig] = None) -> RunPlan:
    """One isoFLOP rung: the shape nearest ``n_params`` spending ``budget.flops``.

    Batch and learning rate depend on the budget alone, so every size of one budget trains alike;
    ``budget``'s inference settings are ignored.
    """
    _check_data_parallel(budget, data_parallel)
    if isinstance(n_params, bool) or not isinstance(n_params, (int, float)) \
            or not math.isfinite(n_params) or n_params <= 0:
        raise ScalingError(f"requested parameter count must be positive and finite, got {n_params!r}",
                              hint="pass the model size this run of the sweep should have")
    law = resolve_law(budget.law)
    optimum = allocate(budget.flops, law)
    training_only = replace(budget, inference_tokens=0.0, objective="train")
    plan = _plan_for_params(training_only, law, optimum, float(n_params), data_parallel=data_parallel,
                            base_model=base_model, tradeoff=None, wanted="the sweep asks for")
    return replace(plan, requested_n_params=float(n_params))


def _check_size(budget: BudgetConfig, train_target: float, target_params: float, n_params: int,
                wanted: str) -> None:
    if n_params > MAX_PARAM_OVERSHOOT * target_params:
        raise ScalingError(
            f"budget of {train_target:.3g} FLOPs is too small for the smallest allowed model: "
            f"{wanted} N≈{target_params:.3g} parameters, the smallest shape has {n_params:,}",
            hint="raise the budget, or allow smaller models (lower multiple_of, vocab_size or "
            "head_dims, or tie_embeddings)")
    if n_params * MAX_PARAM_OVERSHOOT < target_params:
        raise ScalingError(
            f"budget of {train_target:.3g} FLOPs: {wanted} N≈{target_params:.3g} parameters, more "
            f"than the largest allowed shape ({n_params:,}; max_layers={budget.max_layers}, "
            f"max_aspect={budget.max_aspect:g})",
            hint="raise max_layers or max_aspect, or lower the budget")


def _plan_for_params(budget: BudgetConfig, law: Law, optimum: Allocation, target_params: float, *,
                     data_parallel: int, base_model: Optional[ModelConfig],
                     tradeoff: Optional[InferenceTradeoff], wanted: str) -> RunPlan:
    train_target = optimum.flops
    model = search_shape(target_params, budget, base_model)
    n_params = count_params(model)
    _check_size(budget, train_target, target_params, n_params, wanted)
    per_token = train_flops_per_token(model, budget.seq_len)
    target_tokens = train_target / per_token
    fixed = budget.global_batch is not None
    preferred = budget.global_batch if fixed else optimal_batch_sequences(
        train_target, budget.seq_len, data_parallel)
    steps = fit_steps(target_tokens, budget.seq_len, preferred, multiple=data_parallel,
                      tolerance=budget.tolerance, min_steps=budget.min_steps, fixed_batch=fixed)
    if steps.steps < budget.min_steps:
        raise ScalingError(
            f"budget of {train_target:.3g} FLOPs buys only {target_tokens:.3g} tokens for a "
            f"{n_params:,}-parameter model: {steps.steps} step(s) of {steps.global_batch} "
            f"sequences, fewer than min_steps={budget.min_steps}",
            hint="raise the budget, or lower global_batch, seq_len or min_steps")
    flops = per_token * steps.tokens
    if abs(flops / train_target - 1.0) > budget.tolerance:
        raise ScalingError(
            f"cannot spend {train_target:.3g} FLOPs within {budget.tolerance:.0%}: the closest "
            f"run ({steps.steps} steps of {steps.global_batch} sequences) spends {flops:.3g}",
            hint="raise the budget or the tolerance, or lower seq_len or the data-parallel size")
    loss = law.loss(n_params, steps.tokens) if isinstance(law, ParametricLaw) else None
    return RunPlan(
        model=model,
        n_params=n_params,
        n_params_non_embedding=count_params_non_embedding(model),
        tokens=steps.tokens,
        steps=steps.steps,
        global_batch=steps.global_batch,
        seq_len=budget.seq_len,
        flops=flops,
        flops_per_token=per_token,
        predicted_loss=loss,
        learning_rate=budget.learning_rate or optimal_learning_rate(train_target),
        law=getattr(law, "name", str(budget.law)),
        target_flops=float(train_target),
        law_n_params=optimum.n_params,
        law_tokens=optimum.tokens,
        objective=budget.objective,
        inference_tokens=float(budget.inference_tokens),
        inference_flops=forward_flops_per_sequence(model, budget.seq_len) / budget.seq_len
        * float(budget.inference_tokens),
        inference=tradeoff,
        law_identity_differences=tuple(plan_law_differences(budget)),
    )


def plan_law_differences(budget: BudgetConfig) -> list[str]:
    """The plan's vocabulary and sequence length against its law's identity."""
    if not isinstance(budget.law, (str, Path)):
        return []
    recorded = law_identity(law_file_data(budget.law), str(budget.law))
    return identity_differences(recorded, {"tokenizer.vocab": str(budget.vocab_size),
                                           "seq_len": str(budget.seq_len)})
