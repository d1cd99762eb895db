"""``chinchax local N CONFIG``: N ``chinchax train`` processes on this host forming one JAX job,
so multi-host paths run without a cluster.  A process that never meets its peers aborts inside
JAX without a Python error, so the group runs under a deadline and one failure stops the rest.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, IO, List, Mapping, Optional, Sequence

from chinchax.errors import LaunchError
from launch.args import add_config_arguments
from launch.distributed import ENV_COORDINATOR, ENV_CPU_DEVICES, ENV_NUM_PROCESSES, ENV_PROCESS_ID


LOOPBACK = "127.0.0.1"
GRACE_S = 10.0  # how long the others may take to finish once one process has failed
_FORCED_DEVICES = "--xla_force_host_platform_device_count"

CommandBuilder = Callable[[int], List[str]]


def free_port(host: str = LOOPBACK) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def process_env(base: Mapping[str, str], *, port: int, num_processes: int, process_id: int,
                cpu_devices: int) -> dict:
    env = dict(base)
    env.update({
        ENV_COORDINATOR: f"{LOOPBACK}:{port}",
        ENV_NUM_PROCESSES: str(num_processes),
        ENV_PROCESS_ID: str(process_id),
        ENV_CPU_DEVICES: str(cpu_devices),
        "JAX_PLATFORMS": "cpu",
        "PYTHONUNBUFFERED": "1",
    })
    # A forced host device count (as test suites set) would fight the per-process count.
    flags = [f for f in env.get("XLA_FLAGS", "").split() if not f.startswith(_FORCED_DEVICES)]
    if flags:
        env["XLA_FLAGS"] = " ".join(flags)
    else:
        env.pop("XLA_FLAGS", None)
    return env


def train_command(config: str, overrides: Sequence[str], run_dir: Optional[str] = None) -> List[str]:
    """Run by this interpreter, not whatever ``chinchax`` is on PATH."""
    extra = ["--run-dir", run_dir] if run_dir else []
    return [sys.executable, "-m", "launch.cli", "train", config, *overrides, *extra]


@dataclass(frozen=True)
class ProcessOutcome:
    process_id: int
    returncode: Optional[int]  # None: still running when stopped
    log_path: Path
    stopped: bool = False  # ended by the launcher (deadline or another process's failure)

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not self.stopped


def _describe_exit(code: Optional[int]) -> str:
    if code is None:
        return "did not finish"
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with code {code}"


def _tail(path: Path, lines: int = 6) -> str:
    try:
        text = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return "(no log)"
    return "\n    ".join(text[-lines:]) or "(empty log)"


def _copy(stream: IO[bytes], log: IO[bytes], echo: Optional[IO[str]]) -> None:
    for chunk in iter(lambda: stream.read1(4096), b""):
        log.write(chunk)
        log.flush()
        if echo is not None:
            echo.write(chunk.decode(errors="replace"))
            echo.flush()


def _stop(procs: Sequence[subprocess.Popen], grace_s: float) -> List[bool]:
    """SIGTERM, then SIGKILL after ``grace_s``; returns which ones were stopped."""
    stopped = [p.poll() is None for p in procs]
    for proc, running in zip(procs, stopped):
        if running:
            proc.terminate()
    deadline = time.monotonic() + grace_s
    for proc, running in zip(procs, stopped):
        if running:
            try:
                proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    return stopped


def run_processes(num_processes: int, command: CommandBuilder, log_dir: Path, *, cpu_devices: int = 2,
                  timeout_s: float = 600.0, port: Optional[int] = None, echo: Optional[IO[str]] = None,
                  base_env: Optional[Mapping[str, str]] = None, grace_s: float = GRACE_S) -> List[ProcessOutcome]:
    """Never leaves a child behind.  After the first failure the others get ``grace_s``: their
    collectives would otherwise wait for the dead peer until JAX's heartbeat timeout."""
    if num_processes < 1:
        raise LaunchError(f"number of processes {num_processes} must be at least 1", hint="e.g. chinchax local 2 ...")
    if cpu_devices < 1:
        raise LaunchError(f"--cpu-devices {cpu_devices} must be at least 1", hint="devices per process, e.g. 2")
    port = port or free_port()
    base_env = os.environ if base_env is None else base_env
    log_dir.mkdir(parents=True, exist_ok=True)
    logs = [log_dir / f"process-{i}.log" for i in range(num_processes)]
    procs: List[subprocess.Popen] = []
    pumps: List[threading.Thread] = []
    files = []
    try:
        for i in range(num_processes):
            log = open(logs[i], "wb")
            files.append(log)
            env = process_env(base_env, port=port, num_processes=num_processes, process_id=i,
                              cpu_devices=cpu_devices)
            proc = subprocess.Popen(command(i), env=env, stdin=subprocess.DEVNULL,
                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
            procs.append(proc)
            pump = threading.Thread(target=_copy, args=(proc.stdout, log, echo if i == 0 else None), daemon=True)
            pump.start()
            pumps.append(pump)

        deadline = time.monotonic() + timeout_s
        failed_at: Optional[float] = None
        while True:
            codes = [p.poll() for p in procs]  # poll every process: each sets its returncode
            if all(code is not None for code in codes):
                break
            now = time.monotonic()
            if failed_at is None and any(code not in (None, 0) for code in codes):
                failed_at = now
            if now >= deadline or (failed_at is not None and now - failed_at >= grace_s):
                break
            time.sleep(0.1)
        stopped = _stop(procs, grace_s=5.0)
    except BaseException:
        _stop(procs, grace_s=5.0)
        raise
    finally:
        for pump in pumps:
            pump.join(timeout=5.0)
        for log in files:
            log.close()
    return [ProcessOutcome(i, p.returncode if not s else None, logs[i], stopped=s)
            for i, (p, s) in enumerate(zip(procs, stopped))]


def check_outcomes(outcomes: Sequence[ProcessOutcome], timeout_s: float) -> None:
    bad = [o for o in outcomes if not o.ok]
    if not bad:
        return
    first_real = [o for o in bad if not o.stopped]
    lines = []
    for o in bad:
        why = ("was stopped after another process failed" if o.stopped and first_real
               else f"was stopped at the {timeout_s:g} s deadline" if o.stopped
               else _describe_exit(o.returncode))
        lines.append(f"process {o.process_id} {why} (log {o.log_path}):\n    {_tail(o.log_path)}")
    raise LaunchError(f"{len(bad)} of {len(outcomes)} processes failed:\n" + "\n".join(lines),
                      hint="read the logs above; a process that never met its peers aborts after "
                      "distributed.initialization_timeout, and --timeout bounds the whole run")


def log_dir_for(run_dir: str) -> Path:
    """A remote run directory keeps its logs under ./runs/<name>/logs."""
    if "://" in run_dir:
        return Path("runs") / run_dir.rstrip("/").rsplit("/", 1)[-1] / "logs"
    return Path(run_dir) / "logs"


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "local", help="train with N cooperating processes on this machine (multi-host rehearsal)",
        description="Start N `chinchax train` processes on 127.0.0.1 that form one JAX job (CPU "
        "devices, gloo collectives), as the hosts of a pod would. Logs: RUN_DIR/logs/process-<i>.log.")
    parser.add_argument("num_processes", type=int, help="number of processes, e.g. 2")
    add_config_arguments(parser, overrides_help="dotted overrides, as for train")
    parser.add_argument("--run-dir", help="run directory (default: from the config)")
    parser.add_argument("--cpu-devices", type=int, default=2, help="CPU devices per process (default 2)")
    parser.add_argument("--timeout", type=float, default=1800.0,
                        help="seconds before every process is stopped (default 1800)")
    parser.add_argument("--port", type=int, help="coordinator port on 127.0.0.1 (default: a free one)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from launch.config import load_experiment

    run_dir = args.run_dir
    if run_dir is None:
        experiment = load_experiment(args.config, list(args.overrides))
        run_dir = experiment.run_dir or str(Path("runs") / experiment.name)
    if "://" not in run_dir:  # one absolute path for every process (orbax insists on it)
        run_dir = str(Path(run_dir).resolve())
    log_dir = log_dir_for(run_dir)
    print(f"# {args.num_processes} processes x {args.cpu_devices} CPU devices; logs in {log_dir}/",
          file=sys.stderr, flush=True)
    outcomes = run_processes(args.num_processes,
                             lambda i: train_command(args.config, list(args.overrides), run_dir),
                             log_dir, cpu_devices=args.cpu_devices, timeout_s=args.timeout, port=args.port,
                             echo=sys.stdout)
    check_outcomes(outcomes, args.timeout)
    return 0
