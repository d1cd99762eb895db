"""Peak dense bf16 FLOP/s per JAX device (the MFU denominator), keyed by ``device_kind``.
TPU v2/v3 expose each TensorCore as a device (half the chip); NVIDIA datasheets quote "with
sparsity", twice dense.  Sources, TFLOP/s per chip: cloud.google.com/tpu/docs (v2 45, v3 123,
v4 275, v5e 197, v5p 459, v6e 918); NVIDIA datasheets (A100 312; H100 and H200 SXM 989, NVL 835;
H100 PCIe 756)."""

from __future__ import annotations

import re
from typing import Optional

# First match wins, so variants come before the family name.
_PEAKS: tuple[tuple[str, float], ...] = (
    (r"\btpu v2\b", 45e12 / 2),
    (r"\btpu v3\b", 123e12 / 2),
    (r"\btpu v4 lite\b|\btpu v4i\b", 0.0),  # inference chip: no training peak on record
    (r"\btpu v4\b", 275e12),
    (r"\btpu v5 lite\b|\btpu v5e\b|\btpu v5litepod\b", 197e12),
    (r"\btpu v5p?\b", 459e12),
    (r"\btpu v6 lite\b|\btpu v6e\b", 918e12),
    (r"\bgh200\b", 989e12),
    (r"\bh100\b.*\bpcie\b", 756e12),
    (r"\bh100\b.*\bnvl\b", 835e12),
    (r"\bh100\b", 989e12),
    (r"\bh200\b.*\bnvl\b", 835e12),
    (r"\bh200\b", 989e12),
    (r"\ba100\b", 312e12),
)


def normalise_device_kind(device_kind: str) -> str:
    """``NVIDIA A100-SXM4-80GB`` -> ``a100 sxm4 80gb``."""
    kind = device_kind.lower().replace("nvidia", " ")
    kind = re.sub(r"[-_/,()]+", " ", kind)
    return re.sub(r"\s+", " ", kind).strip()


def peak_flops_per_device(device_kind: str) -> Optional[float]:
    """None for CPU and unknown hardware."""
    kind = normalise_device_kind(device_kind)
    for pattern, peak in _PEAKS:
        if re.search(pattern, kind):
            return peak or None
    return None
