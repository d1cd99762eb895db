"""What a law was fitted on: tokenizer, sequence length, data, compute counter, model family, init.

A loss is only comparable with a law of the same identity (a byte-level loss is not a
SentencePiece loss), so every law file records it and a fit refuses runs that differ.  Fields
a run does not record (old runs) read ``unknown`` and match anything.
"""

from __future__ import annotations

import csv
import hashlib
from pathlib import Path
from typing import Any, Mapping, Sequence

from chinchax.errors import ScalingError
from scaling.observations import COLUMN_ALIASES, find_run_dirs
from scaling.rundir import read_config, read_summary

UNKNOWN = "unknown"
FIELDS = ("tokenizer.kind", "tokenizer.vocab", "tokenizer.hash", "seq_len", "data.source",
          "data.fingerprint", "compute", "family.depth_rule", "family.tied_embedding", "init")


def _file_hash(path: str) -> str:
    try:
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]
    except OSError:
        return UNKNOWN


def _tokenizer(data: Mapping[str, Any], model: Mapping[str, Any]) -> dict[str, str]:
    name = data.get("tokenizer")
    kind = UNKNOWN if name is None else "byte" if name == "byte" else "sentencepiece"
    return {"tokenizer.kind": kind, "tokenizer.vocab": str(model.get("vocab_size", UNKNOWN)),
            "tokenizer.hash": _file_hash(str(name)) if kind == "sentencepiece" else kind}


def _data(data: Mapping[str, Any], summary: Mapping[str, Any]) -> dict[str, str]:
    source = data.get("source")
    where = data.get("tfds_name") or data.get("path") or ""
    recorded = summary.get("data") if isinstance(summary.get("data"), Mapping) else {}
    fingerprint = recorded.get("fingerprint") or summary.get("data_fingerprint") or UNKNOWN
    if data.get("mixture"):
        source = "mixture"
    return {"data.source": UNKNOWN if source is None else f"{source}{':' + str(where) if where else ''}",
            "data.fingerprint": str(fingerprint)}


def _depth_rule(config: Mapping[str, Any], summary: Mapping[str, Any]) -> str:
    plan = summary.get("plan") if isinstance(summary.get("plan"), Mapping) else {}
    budget = config.get("budget") if isinstance(config.get("budget"), Mapping) else plan.get("budget")
    if not isinstance(budget, Mapping):
        return UNKNOWN
    if budget.get("target_aspect") is not None:
        return f"aspect {budget['target_aspect']:g}"
    return f"aspect {budget.get('min_aspect', '?')}-{budget.get('max_aspect', '?')}"


def _init(config: Mapping[str, Any]) -> str:
    init = config.get("init")
    if not isinstance(init, Mapping):
        return UNKNOWN
    if init.get("grow_from"):
        return "grown"
    return "continued" if init.get("from_run") else "scratch"


def identity_of(config: Mapping[str, Any], summary: Mapping[str, Any]) -> dict[str, str]:
    """From the resolved config and what the summary records (or will)."""
    data = config.get("data") if isinstance(config.get("data"), Mapping) else {}
    model = summary.get("model") or config.get("model") or {}
    train = config.get("train") if isinstance(config.get("train"), Mapping) else {}
    tied = model.get("tie_embeddings")
    return {**_tokenizer(data, model), "seq_len": str(summary.get("seq_len") or train.get("seq_len") or UNKNOWN),
            **_data(data, summary),
            "compute": "exact" if summary.get("flops_per_token") is not None else UNKNOWN,
            "family.depth_rule": _depth_rule(config, summary),
            "family.tied_embedding": UNKNOWN if tied is None else str(bool(tied)).lower(),
            "init": _init(config)}


def run_identity(run_dir: str | Path) -> dict[str, str]:
    return identity_of(read_config(run_dir), read_summary(run_dir) or {})


# What the published laws were fitted on (Hoffmann et al. 2022: SentencePiece 32k on MassiveText,
# 2,048-token context, C = 6ND); Epoch's refit reuses Chinchilla's points.
_CHINCHILLA = {"tokenizer.kind": "sentencepiece", "tokenizer.vocab": "32000", "seq_len": "2048",
               "data.source": "MassiveText", "compute": "6ND", "init": "scratch"}
PUBLISHED_IDENTITIES: dict[str, dict[str, str]] = {
    name: _CHINCHILLA for name in ("chinchilla", "chinchilla-unrounded", "epoch-2024",
                                   "chinchilla-approach1", "chinchilla-approach2")}
PUBLISHED_IDENTITIES.update({"zheng-2024": {"compute": "6ND", "init": "scratch"},
                             "zheng-2024-cpt": {"compute": "6ND", "init": "continued"}})


def flat(identity: Mapping[str, Any]) -> dict[str, str]:
    """The inverse of :func:`nested`, with every field of :data:`FIELDS` present."""
    out = {k: UNKNOWN for k in FIELDS}
    for key, value in identity.items():
        if isinstance(value, Mapping):
            out.update({f"{key}.{k}": str(v) for k, v in value.items()})
        else:
            out[key] = str(value)
    return out


def law_identity(data: Mapping[str, Any] | None, name: str = "") -> dict[str, str]:
    """A law's identity: a law file's ``identity`` section, a published law's, or all unknown."""
    if data is not None and isinstance(data.get("identity"), Mapping):
        return flat(data["identity"])
    return flat(PUBLISHED_IDENTITIES.get(name, {}))


def identity_differences(law: Mapping[str, str], run: Mapping[str, str],
                         ignore: Sequence[str] = ()) -> list[str]:
    """``"seq_len: law 128, run 256"`` for each field both know and disagree on."""
    return [f"{k}: law {law[k]}, run {run[k]}" for k in FIELDS
            if k not in ignore and UNKNOWN not in (law.get(k, UNKNOWN), run.get(k, UNKNOWN))
            and law[k] != run[k]]


def csv_identity(has_flops_column: bool) -> dict[str, str]:
    """A CSV records nothing but, perhaps, how compute was counted (6ND when it gives only D)."""
    return {**{k: UNKNOWN for k in FIELDS}, "compute": UNKNOWN if has_flops_column else "6ND"}


def common_identity(identities: Mapping[str, Mapping[str, str]], allow_mixed: bool = False) -> dict[str, str]:
    """The shared identity of ``identities`` (by run); refuses a field with two known values."""
    common: dict[str, str] = {}
    for name in FIELDS:
        values: dict[str, list[str]] = {}
        for run, identity in identities.items():
            value = identity.get(name, UNKNOWN)
            if value != UNKNOWN:
                values.setdefault(value, []).append(run)
        if len(values) > 1 and not allow_mixed:
            seen = "; ".join(f"{v!r} ({len(r)} run(s), e.g. {r[0]})" for v, r in values.items())
            raise ScalingError(f"the runs differ in {name}: {seen}",
                               hint="fit each group apart, or pass --allow-mixed to fit them together")
        common[name] = (next(iter(values)) if len(values) == 1 else
                        "mixed: " + ", ".join(sorted(values)) if values else UNKNOWN)
    return common


def nested(identity: Mapping[str, str]) -> dict[str, Any]:
    """``{"tokenizer": {"kind": ...}, "seq_len": ...}``: the law file's ``identity`` section."""
    out: dict[str, Any] = {}
    for key, value in identity.items():
        head, _, tail = key.partition(".")
        if tail:
            out.setdefault(head, {})[tail] = value
        else:
            out[head] = value
    return out


def _is_csv(path: Path) -> bool:
    return path.is_file() or path.suffix.lower() == ".csv"


def run_dirs_of(inputs: Sequence[str | Path]) -> list[Path]:
    """The run directories named by ``inputs`` (runs or their parents); CSVs have no schedule."""
    found: list[Path] = []
    for item in map(Path, inputs):
        if _is_csv(item):
            raise ScalingError(f"{item} is a CSV: it has no learning-rate schedules",
                               hint="fit run directories with --approach curve, or the CSV with 1, 2 or 3")
        found += find_run_dirs(item)
    return found


def input_identities(inputs: Sequence[str | Path]) -> dict[str, dict[str, str]]:
    """The identity of every run behind ``inputs`` (a CSV counts as one run of unknowns)."""
    out: dict[str, dict[str, str]] = {}
    for item in map(Path, inputs):
        if _is_csv(item):
            try:
                with item.open(newline="") as handle:
                    header = [h.strip().lower() for h in next(csv.reader(handle), [])]
            except (OSError, UnicodeDecodeError):
                header = []  # read_csv says what is wrong with it
            out[str(item)] = csv_identity(bool(set(header) & set(COLUMN_ALIASES["flops"])))
            continue
        for run in find_run_dirs(item):
            out[str(run)] = run_identity(run)
    return out


def identities_of(run_dirs: Sequence[str | Path]) -> dict[str, dict[str, str]]:
    return {Path(p).name: run_identity(p) for p in run_dirs}
