"""Multi-process start-up: one call, early in every process, before any JAX computation.

JAX runs one *controller* process per host (or per GPU); they find each other through
``jax.distributed.initialize``.  Where the cluster tells JAX everything (a Cloud TPU pod, a
SLURM step, Open MPI) the call takes no addresses; elsewhere (a GPU box, two CPU processes in
a test) the coordinator address, process count and process id come from the config or from
``CHINCHAX_*`` environment variables set by a launcher such as ``chinchax local``.

The decision is a pure function of the config and the environment (:func:`plan_startup`), so
it is testable without a cluster; :func:`initialize_distributed` only carries it out.
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
MODES = ("single", "explicit", "tpu", "slurm", "mpi")

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
    """How this process joins the others.

    ``enabled``: ``auto`` starts JAX's distributed runtime whenever the environment names a
    multi-process job (TPU VM, SLURM step, Open MPI, or an explicit coordinator); ``on``
    insists (an error if nothing is found); ``off`` stays single-process whatever the
    environment says.  ``initialization_timeout`` is how long (seconds) a process waits for
    its peers: cold TPU pods and busy schedulers can exceed JAX's default of 300.
    ``local_device_ids`` restricts a GPU process to some local devices (empty: decided by
    :func:`plan_startup`).  ``cpu_devices_per_process`` splits the CPU into that many devices
    (tests and ``chinchax local``).
    """

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
    """``host:port`` (IPv6 in brackets) or a :class:`LaunchError` naming ``name``."""
    match = _HOST_PORT.match(address.strip())
    if not match or not 0 < int(match.group(2)) < 65536:
        raise LaunchError(f"{name}={address!r} is not host:port",
                               hint="write it as 10.0.0.1:1234 (the host of process 0 and a free port)")
    return address.strip()


@dataclass(frozen=True)
class StartupPlan:
    """What :func:`initialize_distributed` will do, decided from config and environment only.

    ``mode`` is one of :data:`MODES`.  The address, count and id are known up front only for
    ``explicit`` (and, for logging, ``slurm``/``mpi``); on TPU JAX asks the metadata server.
    ``local_device_ids`` of None leaves the choice to JAX.
    """

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
    """Why the environment says "this is one host of a multi-host TPU job", or None.

    GKE and multi-slice jobs put the worker list and slice settings into the environment
    (``TPU_WORKER_HOSTNAMES``, ``TPU_PROCESS_ADDRESSES``, ``MEGASCALE_*``); older pod runtimes
    set ``CLOUD_TPU_TASK_ID``.  Plain Cloud TPU VMs keep the worker list in the metadata server
    instead, which is why attached TPU chips count too (see :func:`plan_startup`).
    """
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
    """GPUs this process may use: ``CUDA_VISIBLE_DEVICES`` if set, else the ``/dev/nvidiaN`` files."""
    visible = env.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return len([d for d in visible.split(",") if d.strip() and d.strip() != "-1"])
    return len([f for f in device_files if re.fullmatch(r".*/nvidia\d+", f)])


def _slurm_tasks_on_this_node(env: Mapping[str, str]) -> Optional[int]:
    # SLURM_STEP_TASKS_PER_NODE looks like "2(x3),1"; the first group is ours only if the node
    # is the first, so prefer SLURM_NTASKS_PER_NODE when present and fall back on the step's
    # value only when every node runs the same count.
    explicit = _env_int(env, "SLURM_NTASKS_PER_NODE")
    if explicit is not None:
        return explicit
    per_node = env.get("SLURM_STEP_TASKS_PER_NODE") or env.get("SLURM_TASKS_PER_NODE")
    if not per_node:
        return None
    counts = {int(m.group(1)) for m in re.finditer(r"(\d+)(?:\(x\d+\))?", per_node)}
    return counts.pop() if len(counts) == 1 else None


def slurm_local_device_ids(env: Mapping[str, str], device_files: Sequence[str]) -> Optional[Tuple[int, ...]]:
    """Local GPU ids for a SLURM task: every GPU the task can see when SLURM binds GPUs to it
    (``CUDA_VISIBLE_DEVICES`` set) or when it is the node's only task; otherwise None, which
    lets JAX pick GPU ``SLURM_LOCALID`` (one process per GPU)."""
    n_gpus = gpus_visible_to_process(env, device_files)
    if n_gpus == 0:
        return None
    if env.get("CUDA_VISIBLE_DEVICES") is not None or _slurm_tasks_on_this_node(env) == 1:
        return tuple(range(n_gpus))
    return None


def _explicit_plan(cfg: DistributedConfig, env: Mapping[str, str], ids: Optional[Tuple[int, ...]],
                   cpu_devices: Optional[int]) -> Optional[StartupPlan]:
    """The plan when a coordinator, count or id is given (config first, then ``CHINCHAX_*``)."""
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
    """Decide how this process starts, from ``cfg``, the environment and attached hardware.

    Order: ``enabled=off``; an explicit coordinator (config, then ``CHINCHAX_*``); a TPU job
    (environment, or TPU chips on the PCI bus: JAX then reads the worker list from the
    metadata server, and a single-host VM becomes a one-process job); a SLURM step with more
    than one task; an Open MPI job with more than one rank; otherwise one process.
    """
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
    """Number of TPU chips on this machine's PCI bus (Google vendor id and a TPU device id)."""
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
    """Where this process stands, for the first lines of its log."""

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


def initialize_distributed(cfg: Optional[DistributedConfig] = None,
                           env: Optional[Mapping[str, str]] = None) -> DistributedInfo:
    """Join the job this process belongs to (or stay alone) and describe the result.

    Call once per process before any JAX computation; later calls return the first result.
    If a peer never arrives, JAX aborts the process after ``initialization_timeout`` seconds
    (on CPU with SIGABRT, not a Python exception): launchers must bound processes in time.
    """
    global _STARTED
    if _STARTED is not None:
        return _STARTED
    cfg = cfg or DistributedConfig()
    env = os.environ if env is None else env
    plan = plan_startup(cfg, env, tpu_chips=attached_tpu_chips(),
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

