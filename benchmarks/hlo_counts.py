"""Counts read off a program's text: float32 products of vocabulary size, attention kernels.
Reads StableHLO (``lowered.as_text()``) and XLA's HLO (``compiled.as_text()``), whose operands
are named, not typed, so their types come from their definitions."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Dict, List, Tuple

_MLIR_DOT = re.compile(r"stablehlo\.dot_general .*: \(tensor<([^>]*)>, tensor<([^>]*)>\) -> tensor<([^>]*)>")
_HLO_DEF = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+) = (\w+)\[([\d,]*)\]")
_HLO_DOT = re.compile(r"^\s*(?:ROOT\s+)?%?[\w.\-]+ = (\w+)\[([\d,]*)\]\S* dot\(%?([\w.\-]+), %?([\w.\-]+)\)")
# Fused-attention kernels as custom-call targets: cuDNN (GPU) and Mosaic kernels such as
# splash (TPU).  Names with "Backward"/"bwd"/"dkv"/"dq" are the backward kernels.
_ATTENTION_TARGET = re.compile(r'custom_call_target="([^"]*(?:fmha|cudnn\$|tpu_custom_call)[^"]*)"')
_BACKWARD = re.compile(r"backward|bwd|dkv|dq", re.IGNORECASE)


@dataclass(frozen=True)
class Dot:
    lhs: Tuple[str, Tuple[int, ...]]
    rhs: Tuple[str, Tuple[int, ...]]
    out: Tuple[str, Tuple[int, ...]]


def _mlir_type(text: str) -> Tuple[str, Tuple[int, ...]]:
    *dims, dtype = text.split("x")
    return dtype, tuple(int(d) for d in dims)


def _hlo_shape(dims: str) -> Tuple[int, ...]:
    return tuple(int(d) for d in dims.split(",") if d)


def dots(text: str) -> List[Dot]:
    """Every matrix product in a StableHLO or HLO module's text."""
    found = [Dot(*(_mlir_type(t) for t in m.groups())) for m in _MLIR_DOT.finditer(text)]
    types: Dict[str, Tuple[str, Tuple[int, ...]]] = {}
    for line in text.splitlines():
        d = _HLO_DEF.match(line)
        if d:
            types[d.group(1)] = (d.group(2), _hlo_shape(d.group(3)))
    for line in text.splitlines():
        m = _HLO_DOT.match(line)
        if m and m.group(3) in types and m.group(4) in types:
            out = (m.group(1), _hlo_shape(m.group(2)))
            found.append(Dot(types[m.group(3)], types[m.group(4)], out))
    return found


def f32_vocab_dots(text: str, vocab_size: int) -> int:
    """Float32 × float32 products with a vocabulary-sized dimension (none in a bf16 head)."""
    return sum(1 for d in dots(text)
               if d.lhs[0] == d.rhs[0] == "f32"
               and vocab_size in d.lhs[1] + d.rhs[1] + d.out[1])


def attention_custom_calls(text: str) -> Dict[str, int]:
    """Fused-attention kernel calls, forward and backward (0 and 0 with XLA attention)."""
    targets = _ATTENTION_TARGET.findall(text)
    backward = sum(1 for t in targets if _BACKWARD.search(t))
    return {"forward": len(targets) - backward, "backward": backward}
