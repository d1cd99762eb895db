"""What a benchmark reads off the device and the compiled program: memory, host round trips,
the environment a number depends on."""

from __future__ import annotations

import datetime
import importlib.metadata
import os
import platform
from typing import Any, Dict, Optional, Sequence

from training.peaks import peak_flops_per_device


def compiled_memory(compiled: Any) -> Dict[str, Optional[int]]:
    """XLA's per-device memory estimate of a compiled program (None fields where absent)."""
    try:
        stats = compiled.memory_analysis()
    except Exception:  # noqa: BLE001 -- some backends have no analysis
        stats = None
    if stats is None:
        return {"arguments": None, "outputs": None, "aliased": None, "temporaries": None,
                "total": None}
    sizes = {"arguments": int(stats.argument_size_in_bytes), "outputs": int(stats.output_size_in_bytes),
             "aliased": int(stats.alias_size_in_bytes), "temporaries": int(stats.temp_size_in_bytes)}
    sizes["total"] = (sizes["arguments"] + sizes["outputs"] - sizes["aliased"]
                      + sizes["temporaries"] + int(stats.generated_code_size_in_bytes))
    return sizes


def device_memory(device: Any) -> Dict[str, Optional[int]]:
    """Peak and limit from ``device.memory_stats()`` (GPU/TPU); None on CPU."""
    try:
        stats = device.memory_stats() or {}
    except Exception:  # noqa: BLE001 -- unsupported on some backends
        stats = {}
    return {"peak_bytes_in_use": stats.get("peak_bytes_in_use"),
            "bytes_in_use": stats.get("bytes_in_use"), "bytes_limit": stats.get("bytes_limit")}


def is_out_of_memory(exc: BaseException) -> bool:
    text = str(exc)
    return "RESOURCE_EXHAUSTED" in text or "out of memory" in text.lower() or "OOM" in text


def host_callbacks_in(hlo_text: str) -> int:
    """Host round-trips compiled into a program (Python callbacks, infeed/outfeed)."""
    markers = ("xla_python_cpu_callback", "xla_python_gpu_callback", "xla_ffi_python",
               "infeed", "outfeed", "host_callback")
    return sum(hlo_text.count(m) for m in markers)


def _versions() -> Dict[str, str]:
    out = {"python": platform.python_version()}
    for package in ("jax", "jaxlib", "flax", "optax", "numpy"):
        try:
            out[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            out[package] = "absent"
    return out


def environment(devices: Sequence[Any]) -> Dict[str, Any]:
    """Device, software, host load and the XLA settings a result depends on."""
    kind = devices[0].device_kind
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": {"platform": devices[0].platform, "device_kind": kind, "n_devices": len(devices),
                   "peak_flops_per_device": peak_flops_per_device(kind)},
        "software": _versions(),
        "host": {"platform": platform.platform(), "cpus": os.cpu_count(),
                 "load_average": list(os.getloadavg())},
        "env": {name: os.environ.get(name) for name in
                ("XLA_FLAGS", "XLA_PYTHON_CLIENT_MEM_FRACTION", "XLA_PYTHON_CLIENT_PREALLOCATE",
                 "JAX_PLATFORMS")},
    }
