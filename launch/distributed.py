"""Multi-process start-up, once per process before any JAX computation.

TPU pods, SLURM and Open MPI tell JAX everything; elsewhere the config or ``CHINCHAX_*`` name the
coordinator.  The decision is a pure function of config and environment, testable without a cluster.
"""

from __future__ import annotations

import glob
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Mapping, Optional, Sequence, Tuple

from chinchax.errors import LaunchError


log = logging.getLogger(__name__)

ENV_COORDINATOR = "CHINCHAX_COORDINATOR"
ENV_NUM_PROCESSES = "CHINCHAX_NUM_PROCESSES"
ENV_PROCESS_ID = "CHINCHAX_PROCESS_ID"
ENV_CPU_DEVICES = "CHINCHAX_CPU_DEVICES"

ENABLED_CHOICES = ("auto", "on", "off")
MAX_TIMEOUT_S = 7 * 24 * 3600
MAX_PROCESSES = 1 << 20
MAX_CPU_DEVICES = 4096

# JAX's own SLURM detection needs all of these (SLURM_STEP_NODELIST exists only inside an
# ``srun`` step, so a batch script's own shell is, correctly, a single process).
SLURM_VARS = ("SLURM_JOB_ID", "SLURM_STEP_NODELIST", "SLURM_NTASKS", "SLURM_PROCID", "SLURM_LOCALID")
GOOGLE_PCI_VENDOR = "0x1ae0"
# PCI device ids of TPU chips (the vendor id alone also matches Google's virtual NICs and
# disks on every GCE VM): v3, v4, v5p, v5e, v6e, TPU7x, and one unnamed part.
TPU_PCI_DEVICE_IDS = frozenset({"0x0027", "0x005e", "0x0062", "0x0063", "0x006f", "0x0076", "0x0056"})

_HOST_PORT = re.compile(r"^(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9_.-]+):(\d{1,5})$")


_TRIO_HINT = (f"set distributed.coordinator_address, num_processes and process_id together, or "
              f"{ENV_COORDINATOR}, {ENV_NUM_PROCESSES} and {ENV_PROCESS_ID}")


@dataclass(frozen=True)
class DistributedConfig:
    """``enabled``: ``auto`` joins when the environment names a multi-process job, ``on`` insists,
    ``off`` stays alone. ``initialization_timeout`` (s): cold TPU pods and busy schedulers can
    exceed JAX's default 300. Empty ``local_device_ids``: :func:`plan_startup` decides."""

    enabled: str = "auto"
    coordinator_address: Optional[str] = None
    num_processes: Optional[int] = None
    process_id: Optional[int] = None
    initialization_timeout: int = 300
    local_device_ids: List[int] = field(default_factory=list)
    cpu_devices_per_process: Optional[int] = None

    def __post_init__(self) -> None:
        if self.enabled not in ENABLED_CHOICES:
            raise LaunchError(f"distributed.enabled={self.enabled!r} is not one of {ENABLED_CHOICES}",
                                   hint="use auto (default), on or off")
        if not 0 < self.initialization_timeout <= MAX_TIMEOUT_S:
            raise LaunchError(
                f"distributed.initialization_timeout={self.initialization_timeout} must lie in 1..{MAX_TIMEOUT_S}",
                hint="seconds to wait for all processes, e.g. 300; raise it for cold TPU pods")
        for name, limit in (("num_processes", MAX_PROCESSES), ("cpu_devices_per_process", MAX_CPU_DEVICES)):
            if (getattr(self, name) or 0) > limit:
                raise LaunchError(f"distributed.{name}={getattr(self, name)} exceeds {limit}",
                                  hint=f"set distributed.{name} to a real count, or leave it unset")
        if self.coordinator_address is not None:
            check_coordinator_address(self.coordinator_address, "distributed.coordinator_address")
        if self.num_processes is not None and self.num_processes < 1:
            raise LaunchError(f"distributed.num_processes={self.num_processes} must be at least 1",
                                   hint=_TRIO_HINT)
        if self.process_id is not None:
            if self.process_id < 0 or (self.num_processes is not None and self.process_id >= self.num_processes):
                raise LaunchError(
                    f"distributed.process_id={self.process_id} is outside 0..{(self.num_processes or 1) - 1}",
                    hint="process ids run from 0 to num_processes - 1, one per process")
        if any(i < 0 for i in self.local_device_ids):
            raise LaunchError(f"distributed.local_device_ids={self.local_device_ids} has a negative id",
                                   hint="list local device indices such as [0, 1]")
        if self.cpu_devices_per_process is not None and self.cpu_devices_per_process < 1:
            raise LaunchError(
                f"distributed.cpu_devices_per_process={self.cpu_devices_per_process} must be at least 1",
                hint="leave it unset to use one CPU device, or give a count such as 4")


def check_coordinator_address(address: str, name: str) -> str:
    match = _HOST_PORT.match(address.strip())
    if not match or not 0 < int(match.group(2)) < 65536:
        raise LaunchError(f"{name}={address!r} is not host:port",
                               hint="write it as 10.0.0.1:1234 (the host of process 0 and a free port)")
    return address.strip()


@dataclass(frozen=True)
class StartupPlan:
    """Address, count and id are known up front only for ``explicit`` (and, for logging,
    ``slurm``/``mpi``); on TPU JAX asks the metadata server."""

    mode: str
    reason: str
    coordinator_address: Optional[str] = None
    num_processes: Optional[int] = None
    process_id: Optional[int] = None
    local_device_ids: Optional[Tuple[int, ...]] = None
    cpu_devices: Optional[int] = None

    @property
    def multi_process(self) -> bool:
        return self.mode != "single"


def _env_int(env: Mapping[str, str], name: str) -> Optional[int]:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return None
    try:
        return int(raw)
    except ValueError:
        raise LaunchError(f"environment variable {name}={raw!r} is not an integer",
                               hint=f"unset {name} or give it a whole number") from None


def _host_count(hostnames: Optional[str]) -> int:
    return len([h for h in (hostnames or "").split(",") if h.strip()])


def tpu_env_reason(env: Mapping[str, str]) -> Optional[str]:
    """Why the environment names a multi-host TPU job, or None.  Plain TPU VMs keep the worker
    list in the metadata server instead, which is why attached chips count too."""
    for name in ("TPU_WORKER_HOSTNAMES", "TPU_PROCESS_ADDRESSES"):
        if _host_count(env.get(name)) > 1:
            return f"{name} lists {_host_count(env.get(name))} hosts"
    if env.get("MEGASCALE_COORDINATOR_ADDRESS"):
        return "MEGASCALE_COORDINATOR_ADDRESS is set (multi-slice)"
    slices = _env_int(env, "MEGASCALE_NUM_SLICES")
    if slices is not None and slices > 1:
        return f"MEGASCALE_NUM_SLICES={slices}"
    if env.get("CLOUD_TPU_TASK_ID") is not None:
        return "CLOUD_TPU_TASK_ID is set"
    return None


def gpus_visible_to_process(env: Mapping[str, str], device_files: Sequence[str]) -> int:
    """``CUDA_VISIBLE_DEVICES`` if set, else the ``/dev/nvidiaN`` files."""
    visible = env.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return len([d for d in visible.split(",") if d.strip() and d.strip() != "-1"])
    return len([f for f in device_files if re.fullmatch(r".*/nvidia\d+", f)])


def _slurm_tasks_on_this_node(env: Mapping[str, str]) -> Optional[int]:
    # SLURM_STEP_TASKS_PER_NODE looks like "2(x3),1" and does not say which group is this node's,
    # so it answers only when every node runs the same count.
    explicit = _env_int(env, "SLURM_NTASKS_PER_NODE")
    if explicit is not None:
        return explicit
    per_node = env.get("SLURM_STEP_TASKS_PER_NODE") or env.get("SLURM_TASKS_PER_NODE")
    if not per_node:
        return None
    counts = {int(m.group(1)) for m in re.finditer(r"(\d+)(?:\(x\d+\))?", per_node)}
    return counts.pop() if len(counts) == 1 else None


def slurm_local_device_ids(env: Mapping[str, str], device_files: Sequence[str]) -> Optional[Tuple[int, ...]]:
    """Every visible GPU when SLURM binds GPUs to the task or it is the node's only task; otherwise
    None, so JAX picks GPU ``SLURM_LOCALID``."""
    n_gpus = gpus_visible_to_process(env, device_files)
    if n_gpus == 0:
        return None
    if env.get("CUDA_VISIBLE_DEVICES") is not None or _slurm_tasks_on_this_node(env) == 1:
        return tuple(range(n_gpus))
    return None


def _explicit_plan(cfg: DistributedConfig, env: Mapping[str, str], ids: Optional[Tuple[int, ...]],
                   cpu_devices: Optional[int]) -> Optional[StartupPlan]:
    """Config first, then ``CHINCHAX_*``."""
    coordinator = cfg.coordinator_address or env.get(ENV_COORDINATOR) or None
    num = cfg.num_processes if cfg.num_processes is not None else _env_int(env, ENV_NUM_PROCESSES)
    pid = cfg.process_id if cfg.process_id is not None else _env_int(env, ENV_PROCESS_ID)
    if coordinator is None and num is None and pid is None:
        return None
    missing = [name for name, value in (("coordinator address", coordinator),
                                        ("number of processes", num), ("process id", pid))
               if value is None]
    if missing:
        raise LaunchError(f"explicit multi-process start-up lacks the {' and '.join(missing)}",
                          hint=_TRIO_HINT)
    assert coordinator is not None and num is not None and pid is not None
    check_coordinator_address(coordinator, "coordinator address")
    if num < 1 or not 0 <= pid < num:
        raise LaunchError(f"process id {pid} is outside 0..{num - 1} for {num} processes",
                          hint="give each process a distinct id from 0 to num_processes - 1")
    if num > 1:
        return StartupPlan("explicit", f"coordinator {coordinator}, process {pid} of {num}",
                           coordinator, num, pid, ids, cpu_devices)
    return StartupPlan("single", "explicit settings name one process", cpu_devices=cpu_devices)


def plan_startup(cfg: DistributedConfig, env: Mapping[str, str], *, tpu_chips: int = 0,
                 gpu_device_files: Sequence[str] = ()) -> StartupPlan:
    """Order: ``enabled=off``; an explicit coordinator; a TPU job (environment, or chips on the PCI
    bus: a single-host VM becomes a one-process job); SLURM with > 1 task; Open MPI with > 1 rank;
    otherwise one process."""
    cpu_devices = cfg.cpu_devices_per_process or _env_int(env, ENV_CPU_DEVICES)
    if cpu_devices is not None and cpu_devices < 1:
        raise LaunchError(f"{ENV_CPU_DEVICES}={cpu_devices} must be at least 1",
                               hint=f"unset {ENV_CPU_DEVICES} or give a positive count")
    ids = tuple(cfg.local_device_ids) or None
    if cfg.enabled == "off":
        return StartupPlan("single", "distributed.enabled=off", cpu_devices=cpu_devices)

    explicit = _explicit_plan(cfg, env, ids, cpu_devices)
    if explicit is not None:
        return explicit

    tpu_reason = tpu_env_reason(env)
    if tpu_reason is None and tpu_chips > 0:
        tpu_reason = f"{tpu_chips} TPU chips attached (worker list from the metadata server)"
    if tpu_reason is not None:
        return StartupPlan("tpu", tpu_reason, local_device_ids=ids, cpu_devices=cpu_devices)

    if all(name in env for name in SLURM_VARS):
        ntasks = _env_int(env, "SLURM_NTASKS") or 1
        if ntasks > 1:
            return StartupPlan("slurm", f"SLURM step with {ntasks} tasks", None, ntasks,
                               _env_int(env, "SLURM_PROCID"),
                               ids or slurm_local_device_ids(env, gpu_device_files), cpu_devices)

    if "OMPI_MCA_orte_hnp_uri" in env:
        size = _env_int(env, "OMPI_COMM_WORLD_SIZE") or 1
        if size > 1:
            return StartupPlan("mpi", f"Open MPI job with {size} ranks", None, size,
                               _env_int(env, "OMPI_COMM_WORLD_RANK"), ids, cpu_devices)

    if cfg.enabled == "on":
        raise LaunchError(
            "distributed.enabled=on but no multi-process environment was found",
            hint=f"run under SLURM/mpirun or on a TPU pod, or {_TRIO_HINT}; or use enabled=auto")
    return StartupPlan("single", "no multi-process environment found", cpu_devices=cpu_devices)


def attached_tpu_chips(sys_root: str | Path = "/sys") -> int:
    """By Google's PCI vendor id and a TPU device id."""
    count = 0
    for device in glob.glob(os.path.join(str(sys_root), "bus", "pci", "devices", "*")):
        try:
            vendor = Path(device, "vendor").read_text().strip()
            if vendor == GOOGLE_PCI_VENDOR and Path(device, "device").read_text().strip() in TPU_PCI_DEVICE_IDS:
                count += 1
        except OSError:
            continue
    return count


@dataclass(frozen=True)
class DistributedInfo:
    mode: str
    process_index: int
    process_count: int
    local_device_count: int
    global_device_count: int
    platform: str

    def describe(self) -> str:
        return (f"process {self.process_index}/{self.process_count} ({self.mode}), "
                f"{self.local_device_count} local / {self.global_device_count} global {self.platform} devices")


_STARTED: Optional[DistributedInfo] = None


def _set_cpu_devices(count: int) -> None:
    import jax

    try:
        jax.config.update("jax_num_cpu_devices", int(count))
    except RuntimeError:
        raise LaunchError(
            "the CPU device count can no longer change: JAX has already run a computation",
            hint="call initialize_distributed() before anything else touches JAX devices") from None


def initialize_distributed(cfg: Optional[DistributedConfig] = None) -> DistributedInfo:
    """Idempotent; call before any JAX computation.  A peer that never arrives makes JAX abort
    after ``initialization_timeout`` (SIGABRT on CPU, not an exception): bound processes in time."""
    global _STARTED
    if _STARTED is not None:
        return _STARTED
    cfg = cfg or DistributedConfig()
    plan = plan_startup(cfg, os.environ, tpu_chips=attached_tpu_chips(),
                        gpu_device_files=glob.glob("/dev/nvidia[0-9]*"))

    import jax

    if plan.cpu_devices is not None:
        _set_cpu_devices(plan.cpu_devices)
    if plan.multi_process and not jax.distributed.is_initialized():
        if jax.config.jax_cpu_collectives_implementation in (None, "", "none"):
            jax.config.update("jax_cpu_collectives_implementation", "gloo")
        kwargs: dict = {"initialization_timeout": cfg.initialization_timeout}
        if plan.mode == "explicit":
            kwargs.update(coordinator_address=plan.coordinator_address,
                          num_processes=plan.num_processes, process_id=plan.process_id)
        if plan.local_device_ids is not None:
            kwargs["local_device_ids"] = list(plan.local_device_ids)
        log.info("starting the distributed runtime: %s", plan.reason)
        try:
            jax.distributed.initialize(**kwargs)
        except (RuntimeError, ValueError, TypeError) as err:
            raise LaunchError(
                f"jax.distributed.initialize failed ({plan.mode}: {plan.reason}): {err}",
                hint="call it before any JAX computation; check that every process was started "
                "with the same coordinator and count, and raise distributed.initialization_timeout "
                "if peers start slowly") from err

    _STARTED = DistributedInfo(mode=plan.mode, process_index=jax.process_index(),
                               process_count=jax.process_count(),
                               local_device_count=jax.local_device_count(),
                               global_device_count=jax.device_count(), platform=jax.default_backend())
    log.info("%s", _STARTED.describe())
    return _STARTED

