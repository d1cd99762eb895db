"""What must be in the environment before JAX starts: XLA flags, GPU memory share, allocator.

XLA's CPU runtime allocates each step's temporaries afresh, which under glibc's malloc costs
tens of thousands of page faults a step, so the CLI re-executes itself once under a faster one.
"""

from __future__ import annotations

import glob
import logging
import os
import platform
import subprocess
import sys
from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Optional, Sequence

from chinchax.errors import ConfigError

log = logging.getLogger(__name__)

ENV_GPU_DEFAULTS = "CHINCHAX_GPU_DEFAULTS"  # 0/off: no GPU flags, no memory fraction
ENV_ALLOCATOR = "CHINCHAX_ALLOCATOR"  # auto (default), tcmalloc, hugetlb, off
ENV_ALLOCATOR_SET = "CHINCHAX_ALLOCATOR_SET"  # set on re-execution: never re-execute twice
MEM_FRACTION = "XLA_PYTHON_CLIENT_MEM_FRACTION"
OFF = ("0", "off", "false", "no")
ALLOCATOR_MODES = ("auto", "tcmalloc", "hugetlb", "off")
# Commands that run steps; the others start too briefly to gain from a re-execution.
STEP_COMMANDS = frozenset({"train", "ladder", "local", "grow"})
TCMALLOC_LIBS = ("libtcmalloc_minimal.so.4", "libtcmalloc.so.4")
HUGETLB_TUNABLE = "glibc.malloc.hugetlb=1"

# MaxText's single-host H100 recipe and NVIDIA's JAX-Toolbox guide: overlap collectives with
# compute, keep XLA from rematerialising behind the model's own remat policy, cuBLAS over Triton
# for GEMMs, double-buffered scans, pipelined and combined FSDP collectives.
GPU_XLA_FLAGS = (
    "--xla_gpu_enable_latency_hiding_scheduler=true",
    "--xla_disable_hlo_passes=rematerialization",
    "--xla_gpu_enable_triton_gemm=false",
    "--xla_gpu_enable_while_loop_double_buffering=true",
    "--xla_gpu_enable_highest_priority_async_stream=true",
    "--xla_gpu_enable_pipelined_all_gather=true",
    "--xla_gpu_enable_pipelined_reduce_scatter=true",
    "--xla_gpu_enable_pipelined_all_reduce=true",
    "--xla_gpu_all_reduce_combine_threshold_bytes=134217728",
    "--xla_gpu_all_gather_combine_threshold_bytes=134217728",
    "--xla_gpu_reduce_scatter_combine_threshold_bytes=67108864",
)


@dataclass(frozen=True)
class RuntimeConfig:
    xla_flags: List[str] = field(default_factory=list)
    gpu_defaults: bool = True
    gpu_memory_fraction: float = 0.9

    def __post_init__(self) -> None:
        for flag in self.xla_flags:
            if not isinstance(flag, str) or not flag.startswith("--") or len(flag.split()) != 1:
                raise ConfigError(f"runtime.xla_flags entry {flag!r} is not one --name=value flag",
                                  hint="write e.g. runtime.xla_flags='[--xla_dump_to=/tmp/hlo]'")
        fraction = self.gpu_memory_fraction
        if isinstance(fraction, bool) or not 0 < fraction <= 1:  # NaN fails too
            raise ConfigError(f"runtime.gpu_memory_fraction must lie in (0, 1], got {fraction}",
                              hint="use e.g. 0.9: the share of GPU memory JAX reserves")


def _flag_name(flag: str) -> str:
    return flag.split("=", 1)[0]


def merge_xla_flags(existing: str, extra: Sequence[str]) -> str:
    """Flags already in ``existing`` win."""
    named = {_flag_name(f) for f in existing.split()}
    added: List[str] = []
    for flag in extra:
        if _flag_name(flag) not in named:
            named.add(_flag_name(flag))
            added.append(flag)
    return " ".join([*existing.split(), *added])


def gpu_visible(env: Mapping[str, str]) -> bool:
    platforms = env.get("JAX_PLATFORMS", "").lower()
    if platforms and "cuda" not in platforms and "gpu" not in platforms:
        return False
    return bool(glob.glob("/dev/nvidia[0-9]*"))


def runtime_environment(cfg: RuntimeConfig, env: Mapping[str, str], *, gpu: bool) -> Dict[str, str]:
    flags = list(cfg.xla_flags)
    changes: Dict[str, str] = {}
    if gpu and cfg.gpu_defaults and env.get(ENV_GPU_DEFAULTS, "1").lower() not in OFF:
        flags += GPU_XLA_FLAGS
        if MEM_FRACTION not in env:
            changes[MEM_FRACTION] = f"{cfg.gpu_memory_fraction:g}"
    merged = merge_xla_flags(env.get("XLA_FLAGS", ""), flags)
    if merged != env.get("XLA_FLAGS", ""):
        changes["XLA_FLAGS"] = merged
    return changes


def _backends_started() -> bool:
    if "jax" not in sys.modules:
        return False
    from jax._src import xla_bridge

    return bool(xla_bridge.backends_are_initialized())


def runtime_record(cfg: RuntimeConfig, env: Mapping[str, str]) -> Dict[str, str]:
    view = {**env, **runtime_environment(cfg, env, gpu=gpu_visible(env))}
    return {"xla_flags": view.get("XLA_FLAGS", ""), "gpu_memory_fraction": view.get(MEM_FRACTION, ""),
            "allocator": view.get(ENV_ALLOCATOR_SET, "system")}


def apply_runtime(cfg: RuntimeConfig) -> Dict[str, str]:
    changes = runtime_environment(cfg, os.environ, gpu=gpu_visible(os.environ))
    if changes and _backends_started():
        log.warning("XLA settings %s come after JAX started its backends; they apply to new "
                    "processes only", sorted(changes))
    os.environ.update(changes)
    return runtime_record(cfg, os.environ)


def find_tcmalloc() -> Optional[str]:
    try:
        listing = subprocess.run(["ldconfig", "-p"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    for name in TCMALLOC_LIBS:
        for line in listing.splitlines():
            if line.strip().startswith(name) and "=>" in line:
                return line.split("=>", 1)[1].strip()
    return None


def glibc_has_hugetlb() -> bool:
    name, version = platform.libc_ver()
    parts = tuple(int(p) for p in version.split(".")[:2] if p.isdigit())
    return name == "glibc" and parts >= (2, 35)


def allocator_environment(env: Mapping[str, str], *, tcmalloc: Optional[str],
                          hugetlb: bool) -> Dict[str, str]:
    mode = env.get(ENV_ALLOCATOR, "auto").strip().lower() or "auto"
    if mode in OFF or env.get(ENV_ALLOCATOR_SET):
        return {}
    if mode not in ALLOCATOR_MODES:
        raise ConfigError(f"{ENV_ALLOCATOR}={mode!r} is not one of {', '.join(ALLOCATOR_MODES)}",
                          hint=f"unset {ENV_ALLOCATOR} (auto), or set it to off")
    if env.get("LD_PRELOAD"):
        return {}  # an allocator (or tool) is preloaded already: never stack a second one
    if tcmalloc and mode in ("auto", "tcmalloc"):
        return {"LD_PRELOAD": tcmalloc, ENV_ALLOCATOR_SET: "tcmalloc",
                "TCMALLOC_LARGE_ALLOC_REPORT_THRESHOLD": str(1 << 40)}  # no "large alloc" noise
    tunables = env.get("GLIBC_TUNABLES", "")
    if hugetlb and mode in ("auto", "hugetlb") and "glibc.malloc.hugetlb" not in tunables:
        return {"GLIBC_TUNABLES": f"{tunables}:{HUGETLB_TUNABLE}" if tunables else HUGETLB_TUNABLE,
                ENV_ALLOCATOR_SET: "hugetlb"}
    return {}


def command_of(argv: Sequence[str]) -> Optional[str]:
    return next((a for a in argv if not a.startswith("-")), None)


def reexec_with_allocator(argv: Sequence[str]) -> None:
    """Returns only when nothing changes; otherwise this process is replaced."""
    orig = getattr(sys, "orig_argv", None)
    if sys.platform != "linux" or command_of(argv) not in STEP_COMMANDS or not orig or "-" in orig[1:2]:
        return
    changes = allocator_environment(os.environ, tcmalloc=find_tcmalloc(), hugetlb=glibc_has_hugetlb())
    if not changes:
        return
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, *orig[1:]], {**os.environ, **changes})
