"""``chinchax allocate --flops C``: what a compute budget buys, before any run starts."""

from __future__ import annotations

import argparse
import json
import sys

from rich.console import Console
from rich.table import Table

from models.config import MLP_KINDS
from scaling.allocate import BudgetConfig, RunPlan, plan_run
from scaling.inference import OBJECTIVES, InferenceTradeoff
from scaling.laws import law_names


def register(sub: argparse._SubParsersAction) -> None:
    defaults = BudgetConfig()
    parser = sub.add_parser(
        "allocate",
        help="turn a FLOP budget into a model shape, tokens, batch and steps",
        description="Ask a scaling law for the compute-optimal parameters and tokens of a budget, "
        "pick a hardware-friendly shape near that size, and size batch and steps so the exact "
        "FLOP count of the run matches the budget within 1%%.",
    )
    parser.add_argument("--flops", type=float, required=True, metavar="C",
                        help="training compute budget in FLOPs, e.g. 1e21")
    parser.add_argument("--law", default=defaults.law, metavar="NAME|law.json",
                        help=f"published law ({', '.join(law_names())}) or a law file "
                        f"(default: {defaults.law})")
    parser.add_argument("--seq-len", type=int, default=defaults.seq_len,
                        help=f"training sequence length (default: {defaults.seq_len})")
    parser.add_argument("--vocab-size", type=int, default=defaults.vocab_size,
                        help=f"vocabulary size (default: {defaults.vocab_size})")
    parser.add_argument("--multiple-of", type=int, default=defaults.multiple_of,
                        help="d_model and d_ff are multiples of this; 16 or 32 for tiny CPU "
                        f"models (default: {defaults.multiple_of})")
    parser.add_argument("--head-dims", type=int, nargs="+", default=list(defaults.head_dims),
                        metavar="H", help="allowed attention head sizes (default: 64 128)")
    parser.add_argument("--mlp", choices=MLP_KINDS, default=defaults.mlp,
                        help=f"MLP kind (default: {defaults.mlp})")
    parser.add_argument("--gqa-ratio", type=int, default=defaults.gqa_ratio,
                        help="query heads per key/value head; 1 = multi-head (default: 1)")
    parser.add_argument("--tie-embeddings", action="store_true",
                        help="share the embedding with the output head")
    parser.add_argument("--min-aspect", type=float, default=defaults.min_aspect,
                        help=f"smallest d_model / n_layers (default: {defaults.min_aspect:g})")
    parser.add_argument("--max-aspect", type=float, default=defaults.max_aspect,
                        help=f"largest d_model / n_layers (default: {defaults.max_aspect:g})")
    parser.add_argument("--global-batch", type=int, default=None,
                        help="global batch in sequences (default: DeepSeek LLM's B_opt(C))")
    parser.add_argument("--data-parallel", type=int, default=1,
                        help="the global batch is a multiple of this (default: 1)")
    parser.add_argument("--inference-tokens", type=float, default=defaults.inference_tokens,
                        metavar="T", help="tokens the model will serve over its life; adds a "
                        "comparison of Chinchilla's allocation with inference-aware ones "
                        "(default: 0, training compute only)")
    parser.add_argument("--objective", choices=OBJECTIVES, default=defaults.objective,
                        help="what the planned run minimises: 'train' keeps Chinchilla's "
                        "allocation (inference cost reported only); 'total' reaches Chinchilla's "
                        "loss at the least training + inference compute, a smaller model on more "
                        f"tokens (default: {defaults.objective})")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    parser.set_defaults(func=run)


_BUDGET_ARGS = ("flops", "law", "seq_len", "vocab_size", "multiple_of", "mlp", "gqa_ratio", "tie_embeddings",
                "min_aspect", "max_aspect", "global_batch", "inference_tokens", "objective")


def budget_from_args(args: argparse.Namespace) -> BudgetConfig:
    return BudgetConfig(head_dims=list(args.head_dims), **{name: getattr(args, name) for name in _BUDGET_ARGS})


def run(args: argparse.Namespace) -> int:
    plan = plan_run(budget_from_args(args), data_parallel=args.data_parallel)
    if args.json:
        print(json.dumps(plan.to_dict()))
    else:
        console = Console()
        if plan.inference is not None:
            console.print(inference_table(plan.inference, plan.objective))
        console.print(plan_table(plan))
    if plan.law_identity_differences:
        print(f"note: law {plan.law} was fitted on other runs than this plan's ("
              + "; ".join(plan.law_identity_differences) + "): its allocation and loss are "
              "extrapolated across tokenizers or context lengths", file=sys.stderr)
    return 0


def _count(x: float) -> str:
    for unit, scale in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(x) >= scale:
            return f"{x / scale:.3g}{unit}"
    return f"{x:.3g}"


def plan_table(plan: RunPlan) -> Table:
    m = plan.model
    loss = "n/a (power law)" if plan.predicted_loss is None else f"{plan.predicted_loss:.4f}"
    title = f"{plan.target_flops:.3g} FLOPs with law {plan.law}"
    if plan.objective == "total" and plan.inference is not None:
        title = f"planned run (objective total): {plan.target_flops:.3g} training FLOPs with law {plan.law}"
    table = Table(title=title, show_header=False)
    table.add_column("quantity", style="bold")
    table.add_column("value", justify="right")
    rows = [
        ("law N_opt (C = 6ND)", _count(plan.law_n_params)),
        ("law D_opt (C = 6ND)", _count(plan.law_tokens)),
        ("parameters N (exact)", f"{plan.n_params:,} ({_count(plan.n_params)})"),
        ("  non-embedding", f"{plan.n_params_non_embedding:,}"),
        ("tokens D", f"{plan.tokens:,} ({_count(plan.tokens)})"),
        ("tokens / parameter", f"{plan.tokens_per_param:.1f}"),
        ("predicted loss", loss),
        ("shape d_model × n_layers", f"{m.d_model} × {m.n_layers} (aspect {m.d_model / m.n_layers:.0f})"),
        ("heads × head_dim (kv heads)", f"{m.n_heads} × {m.resolved_head_dim} ({m.kv_heads})"),
        ("d_ff", f"{m.d_ff} ({m.mlp})"),
        ("vocab (tied)", f"{m.vocab_size} ({'yes' if m.tie_embeddings else 'no'})"),
        ("global batch", f"{plan.global_batch} × {plan.seq_len} = {plan.batch_tokens:,} tokens"),
        ("steps", f"{plan.steps:,}"),
        ("learning rate", f"{plan.learning_rate:.3g}"),
        ("FLOPs / token (exact, 6N)", f"{plan.flops_per_token:.4g}, {6 * plan.n_params:.4g}"),
        ("FLOPs spent", f"{plan.flops:.4g} ({plan.flops_error:+.3%})"),
    ]
    if plan.inference_tokens > 0:
        rows += [
            ("inference tokens", _count(plan.inference_tokens)),
            ("inference FLOPs (exact)", f"{plan.inference_flops:.4g}"),
            ("total FLOPs", f"{plan.total_flops:.4g}"),
        ]
    for name, value in rows:
        table.add_row(name, value)
    return table


OPTION_TITLES = {
    "chinchilla": "Chinchilla (train)",
    "same_loss": "same loss, least total",
    "same_cost": "same total, least loss",
}


def inference_table(tradeoff: InferenceTradeoff, objective: str) -> Table:
    """The three allocations side by side (C = 6ND, 2N per served token)."""
    chosen = tradeoff.chosen(objective).name
    table = Table(title=f"{tradeoff.flops:.3g} training FLOPs, {tradeoff.inference_tokens:.3g} "
                  f"inference tokens, law {tradeoff.law} (6ND + 2NT)")
    table.add_column("", style="bold")
    for option in tradeoff.options:
        mark = " ◀" if option.name == chosen else ""
        table.add_column(OPTION_TITLES[option.name] + mark, justify="right")
    rows = [
        ("parameters N", lambda o: _count(o.n_params)),
        ("tokens D", lambda o: _count(o.tokens)),
        ("tokens / param", lambda o: f"{o.tokens_per_param:.1f}"),
        ("loss", lambda o: f"{o.loss:.4f}"),
        ("loss change", lambda o: f"{round(o.loss_change, 4) + 0.0:+.4f}"),
        ("train FLOPs", lambda o: f"{o.train_flops:.3g}"),
        ("inference FLOPs", lambda o: f"{o.inference_flops:.3g}"),
        ("total FLOPs", lambda o: f"{o.total_flops:.3g}"),
        ("total saving", lambda o: f"{o.saving:.1%}"),
    ]
    for name, cell in rows:
        table.add_row(name, *(cell(o) for o in tradeoff.options))
    return table
