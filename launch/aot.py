"""The JAX-free half of ``chinchax compile``: topologies, HBM, memory and FLOP reports, errors.

XLA counts a ``while`` body once whatever its trip count (scanned layers, micro-batches), so the
FLOP report also counts the counter's terms that way; the ratio is then ~1.0 (~4/3 of the layer
work under ``remat: full``).
"""

from __future__ import annotations

import importlib.util
import math
import os
import re
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Dict, Mapping, Optional

from chinchax.errors import ChinchaxError, LaunchError
from models.config import ModelConfig

from scaling.flops import forward_flop_breakdown
from training.peaks import normalise_device_kind

GIB = 2**30

TPU_TOPOLOGY_EXAMPLES = "v5e:4x4, v5e:2x2, v4:2x2x2, v5p:2x2x2, v6e:4x4"
_TPU_TOPOLOGY = re.compile(r"^(v\d+[a-z]*):(\d+(?:x\d+){1,2})$")
_CPU_TOPOLOGY = re.compile(r"^cpu:(\d+)$")


@dataclass(frozen=True)
class Topology:
    """A TPU slice or ``chips`` host CPU devices; ``name`` is what ``get_topology_desc`` takes."""

    platform: str
    name: str
    chips: int

    @property
    def is_tpu(self) -> bool:
        return self.platform == "tpu"


def parse_topology(text: str) -> Topology:
    """``"v5e:4x4"`` -> TPU topology of 16 chips; ``"cpu:8"`` -> 8 host CPU devices."""
    spec = text.strip().lower()
    cpu = _CPU_TOPOLOGY.match(spec)
    if cpu:
        n = int(cpu.group(1))
        if n <= 0:
            raise LaunchError(f"--topology {text!r} names no devices",
                                hint="use cpu:N with N >= 1, e.g. cpu:8")
        return Topology(platform="cpu", name=spec, chips=n)
    tpu = _TPU_TOPOLOGY.match(spec)
    if tpu:
        dims = [int(d) for d in tpu.group(2).split("x")]
        if min(dims) <= 0:
            raise LaunchError(f"--topology {text!r} has a zero dimension",
                                hint=f"TPU topologies look like {TPU_TOPOLOGY_EXAMPLES}")
        return Topology(platform="tpu", name=spec, chips=math.prod(dims))
    raise LaunchError(
        f"--topology {text!r} is not a TPU topology (GENERATION:AxB[xC]) or cpu:N",
        hint=f"TPU topologies look like {TPU_TOPOLOGY_EXAMPLES}; "
             "cpu:8 compiles for 8 host CPU devices")


# Bytes per JAX device; first match wins.  v2/v3 chips are two devices, so half a chip's HBM;
# XLA keeps a little (v5e reports 15.75 GiB usable).  GPUs are sold in decimal gigabytes.
_HBM: tuple[tuple[str, int], ...] = (
    (r"\btpu v2\b", 8 * GIB),
    (r"\btpu v3\b", 16 * GIB),
    (r"\btpu v4 lite\b|\btpu v4i\b", 8 * GIB),
    (r"\btpu v4\b", 32 * GIB),
    (r"\btpu v5 lite\b|\btpu v5e\b|\btpu v5litepod\b", 16 * GIB),
    (r"\btpu v5p?\b", 95 * GIB),
    (r"\btpu v6 lite\b|\btpu v6e\b", 32 * GIB),
    (r"\bh100\b.*\bnvl\b", 94 * 10**9),
    (r"\bh100\b", 80 * 10**9),
    (r"\bh200\b", 141 * 10**9),
    (r"\ba100\b.*\b80gb\b", 80 * 10**9),
    (r"\ba100\b", 40 * 10**9),
)


def hbm_bytes_per_device(device_kind: str) -> Optional[int]:
    """None for CPUs and unknown hardware."""
    kind = normalise_device_kind(device_kind)
    for pattern, size in _HBM:
        if re.search(pattern, kind):
            return size
    return None


@dataclass(frozen=True)
class MemoryReport:
    """Per-device bytes of one compiled program; ``aliased`` outputs reuse donated inputs (the
    train state), so they count once."""

    arguments: int = 0
    outputs: int = 0
    aliased: int = 0
    temporaries: int = 0
    generated_code: int = 0
    hbm: Optional[int] = None

    @classmethod
    def from_analysis(cls, stats: Any, hbm: Optional[int]) -> "MemoryReport":
        return cls(arguments=int(stats.argument_size_in_bytes),
                   outputs=int(stats.output_size_in_bytes),
                   aliased=int(stats.alias_size_in_bytes),
                   temporaries=int(stats.temp_size_in_bytes),
                   generated_code=int(stats.generated_code_size_in_bytes),
                   hbm=hbm)

    @property
    def total(self) -> int:
        return self.arguments + self.outputs - self.aliased + self.temporaries + self.generated_code

    @property
    def fits(self) -> Optional[bool]:
        return None if self.hbm is None else self.total <= self.hbm

    def to_dict(self) -> Dict[str, Any]:
        out = {f"{k}_bytes": v for k, v in asdict(self).items() if k != "hbm"}
        out.update(total_bytes=self.total, hbm_bytes=self.hbm, fits=self.fits,
                   hbm_fraction=None if self.hbm is None else self.total / self.hbm)
        return out


@dataclass(frozen=True)
class FlopReport:
    """One device's step FLOPs: the MFU counter, and its terms with loop bodies once, as XLA."""

    counter: float = 0.0
    counter_as_compiled: float = 0.0
    xla: Optional[float] = None
    loops_counted_once: bool = False

    @property
    def xla_over_counter(self) -> Optional[float]:
        if self.xla is None or self.counter_as_compiled <= 0:
            return None
        return self.xla / self.counter_as_compiled

    def to_dict(self) -> Dict[str, Any]:
        return {"counter_per_device": self.counter,
                "counter_as_compiled_per_device": self.counter_as_compiled,
                "xla_per_device": self.xla, "xla_over_counter": self.xla_over_counter,
                "loops_counted_once": self.loops_counted_once}


def counter_flops(model: ModelConfig, *, seq_len: int, global_batch: int, n_devices: int,
                  grad_accum_steps: int = 1, xla: Optional[float] = None) -> FlopReport:
    """Work splits evenly over devices.  XLA sees one scanned layer, one micro-batch, and no
    embedding term: the counter prices the lookup as a one-hot matmul, XLA sees a cheap gather."""
    terms = forward_flop_breakdown(model, seq_len)
    sequences_per_device = global_batch / n_devices
    counter = 3.0 * terms.total * sequences_per_device
    layer_share = 1.0 / model.n_layers if model.scan_layers else 1.0
    seen_forward = terms.final_logits + terms.layers * layer_share
    as_compiled = 3.0 * seen_forward * sequences_per_device / grad_accum_steps
    return FlopReport(counter=counter, counter_as_compiled=as_compiled, xla=xla,
                      loops_counted_once=model.scan_layers or grad_accum_steps > 1)


@dataclass(frozen=True)
class CompileReport:
    """What ``chinchax compile`` prints."""

    topology: str = ""
    platform: str = ""
    device_kind: str = ""
    n_devices: int = 0
    mesh: Dict[str, int] = field(default_factory=dict)
    run: Dict[str, Any] = field(default_factory=dict)
    lower_time_s: float = 0.0
    compile_time_s: float = 0.0
    memory: MemoryReport = field(default_factory=MemoryReport)
    flops: FlopReport = field(default_factory=FlopReport)

    def to_dict(self) -> Dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out.update(mesh=dict(self.mesh), run=dict(self.run), memory=self.memory.to_dict(),
                   flops=self.flops.to_dict())
        return out


def format_bytes(n: Optional[float]) -> str:
    if n is None:
        return "unknown"
    for unit, size in (("GiB", GIB), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(n) >= size:
            return f"{n / size:.2f} {unit}"
    return f"{int(n)} B"


def report_rows(report: CompileReport) -> list[tuple[str, str]]:
    mem, flops, run = report.memory, report.flops, report.run
    mesh = " × ".join(f"{axis} {size}" for axis, size in report.mesh.items())
    accumulation = run.get("grad_accum_steps", 1)
    rows = [
        ("devices", f"{report.n_devices} × {report.device_kind} ({report.topology})"),
        ("mesh", mesh),
        ("model", f"{run.get('n_params', 0) / 1e6:.1f}M params, remat {run.get('remat')}, "
                  f"{run.get('compute_dtype')}"),
        ("batch", f"{run.get('global_batch')} × {run.get('seq_len')} tokens"
                  + (f", {accumulation} micro-batches" if accumulation > 1 else "")),
        ("lower / compile", f"{report.lower_time_s:.1f} s / {report.compile_time_s:.1f} s"),
        ("arguments", format_bytes(mem.arguments)),
        ("outputs (aliased)", f"{format_bytes(mem.outputs)} ({format_bytes(mem.aliased)})"),
        ("temporaries", format_bytes(mem.temporaries)),
        ("generated code", format_bytes(mem.generated_code)),
    ]
    if mem.hbm is None:
        rows.append(("total per device", format_bytes(mem.total)))
    else:
        verdict = "fits" if mem.fits else "DOES NOT FIT"
        rows.append(("total per device",
                     f"{format_bytes(mem.total)} of {format_bytes(mem.hbm)} "
                     f"({100 * mem.total / mem.hbm:.0f}%, {verdict})"))
    rows.append(("FLOPs/device/step (counter)", f"{flops.counter:.4g}"))
    if flops.xla is not None:
        seen = " (loop bodies once)" if flops.loops_counted_once else ""
        rows.append((f"XLA FLOPs{seen}", f"{flops.xla:.4g}"))
        against = f" against {flops.counter_as_compiled:.4g}" if flops.loops_counted_once else ""
        rows.append(("XLA / counter", f"{flops.xla_over_counter:.3f}{against}"))
    return rows


def libtpu_location() -> Optional[str]:
    """Where JAX would load libtpu from, if anywhere."""
    path = os.environ.get("TPU_LIBRARY_PATH")
    if path and os.path.isfile(path):
        return path
    try:
        spec = importlib.util.find_spec("libtpu")
    except (ImportError, ValueError):
        return None
    return None if spec is None else (spec.origin or "libtpu")


def libtpu_missing_error(topology: str, jax_version: str) -> LaunchError:
    return LaunchError(
        f"--topology {topology} compiles with the TPU compiler (libtpu), which is not installed",
        hint=f'pip install "jax[tpu]=={jax_version}" (brings the libtpu built for this jax; '
             "libtpu must match the jax version), or set TPU_LIBRARY_PATH to a libtpu.so; "
             "--topology cpu:N checks the step on host CPU devices without it")


_SIZE = r"([\d.]+)\s*([KMGT]i?B?|B)?"
_UNITS = {"": 1, "B": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}
_NEEDED = (re.compile(rf"required for [\w\s]+?\({_SIZE}\)"), re.compile(rf"Used {_SIZE} of"))
_AVAILABLE = (re.compile(rf"available \w+ \({_SIZE}\)"),
              re.compile(rf"Used {_SIZE} of {_SIZE} hbm"))


def _to_bytes(number: str, unit: Optional[str]) -> int:
    return int(float(number) * _UNITS[(unit or "")[:1]])


def _last_size(patterns: tuple[re.Pattern[str], ...], message: str) -> Optional[int]:
    """Bytes of the last size the first matching pattern captures; None if none matches."""
    for pattern in patterns:
        match = pattern.search(message)
        if match:
            return _to_bytes(*match.groups()[-2:])
    return None


def parse_out_of_memory(message: str) -> tuple[Optional[int], Optional[int]]:
    """``(needed, available)`` bytes from an XLA RESOURCE_EXHAUSTED message."""
    return _last_size(_NEEDED, message), _last_size(_AVAILABLE, message)


def is_out_of_memory(message: str) -> bool:
    return "RESOURCE_EXHAUSTED" in message or "Ran out of memory" in message


def out_of_memory_error(message: str, *, topology: str, device_kind: str, global_batch: int,
                        seq_len: int, remat: str, mesh: Mapping[str, int],
                        grad_accum_steps: int = 1) -> LaunchError:
    needed, available = parse_out_of_memory(message)
    if needed is not None and available is not None:
        sizes = f"needs {format_bytes(needed)} per device, {format_bytes(available)} available"
    else:
        first = message.strip().splitlines()[0] if message.strip() else "out of memory"
        sizes = first[:300]
    what = (f"global batch {global_batch} × {seq_len}"
            + (f" in {grad_accum_steps} micro-batches" if grad_accum_steps > 1 else "")
            + f", remat {remat}, mesh " + " ".join(f"{k}={v}" for k, v in mesh.items()))
    fixes = []
    if remat != "full":
        fixes.append("model.remat=full (recompute activations in the backward pass)")
    fixes.append(f"a smaller train.global_batch or train.grad_accum_steps={2 * grad_accum_steps} "
                 "(smaller micro-batches, same update)")
    n_devices = math.prod(mesh.values()) if mesh else 1
    if mesh.get("fsdp", 1) < n_devices:
        fixes.append("more FSDP (mesh.fsdp=-1 mesh.data=1) to shard weights and optimiser state")
    return LaunchError(
        f"the train step does not fit {device_kind} ({topology}): {sizes} ({what})",
        hint="try " + "; or ".join(fixes))
