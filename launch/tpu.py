"""Cloud TPU VM commands as data (``gcloud`` argv lists, remote scripts): testable, and
``--dry-run`` shows the real ones.  ``tpu-vm scp`` copies *to* all workers at once but *from*
only one, so logs come back one scp per worker.
"""

from __future__ import annotations

import json
import re
import shlex
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from chinchax.errors import LaunchError


TPUS = ("gcloud", "compute", "tpus")
REMOTE_DIR = "chinchax"
REMOTE_ARCHIVE = "chinchax-src.tar.gz"
REMOTE_CONFIG_DIR = ".run-configs"
DEFAULT_PYTHON = "3.11"  # the interpreter constraints.txt was resolved with (numpy 2.4 needs >= 3.11)
# jax[tpu] brings the libtpu matching the pinned jax; etils' epath needs gcsfs for gs:// run dirs.
DEFAULT_EXTRAS = ("jax[tpu]", "gcsfs")
WORKER_LOG = "logs/worker-$(hostname).log"

# From Google's "TPU software versions" page: one base image per generation, JAX from pip.
RUNTIME_VERSIONS: Dict[str, str] = {
    "v6e": "v2-alpha-tpuv6e",
    "v5p": "v2-alpha-tpuv5",
    "v5litepod": "v2-alpha-tpuv5-lite",
    "v5e": "v2-alpha-tpuv5-lite",
    "v4": "tpu-ubuntu2204-base",
    "v3": "tpu-ubuntu2204-base",
    "v2": "tpu-ubuntu2204-base",
}

PACK_EXCLUDED_DIRS = frozenset({".git", ".hg", "runs", "logs", "__pycache__", ".venv", "venv", "build", "dist",
                                ".pytest_cache", ".hypothesis", ".mypy_cache", ".ruff_cache", ".whl",
                                "node_modules", REMOTE_CONFIG_DIR})
PACK_EXCLUDED_SUFFIXES = (".pyc", ".pyo", ".egg-info")

_NAME = re.compile(r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$")
_ACCELERATOR = re.compile(r"^([a-z][a-z0-9]*)-(\d+)$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def check_name(name: str) -> str:
    if not _NAME.match(name):
        raise LaunchError(f"TPU name {name!r} is not a valid Cloud resource name",
                          hint="use lower-case letters, digits and hyphens, starting with a letter "
                          "(at most 63 characters), e.g. chinchax-v5p")
    return name


def accelerator_generation(accelerator_type: str) -> str:
    match = _ACCELERATOR.match(accelerator_type)
    if not match:
        raise LaunchError(f"accelerator type {accelerator_type!r} is not of the form GENERATION-SIZE",
                          hint="e.g. v4-32, v5litepod-16, v5p-64, v6e-16 "
                          "(`gcloud compute tpus accelerator-types list --zone=ZONE` lists them)")
    return match.group(1)


def default_runtime_version(accelerator_type: str) -> str:
    generation = accelerator_generation(accelerator_type)
    if generation not in RUNTIME_VERSIONS:
        raise LaunchError(f"no default TPU software version for {generation} ({accelerator_type})",
                          hint="pass --version explicitly (`gcloud compute tpus versions list --zone=ZONE`)")
    return RUNTIME_VERSIONS[generation]


@dataclass(frozen=True)
class TpuTarget:
    """``slices > 1``: a queued resource with nodes ``NAME-0 ...``; ``zone``/``project`` None: gcloud's."""

    name: str
    zone: Optional[str] = None
    project: Optional[str] = None
    slices: int = 1

    def __post_init__(self) -> None:
        check_name(self.name)
        if self.slices < 1:
            raise LaunchError(f"--slices {self.slices} must be at least 1", hint="1 for a single slice")

    @property
    def location(self) -> List[str]:
        return [f"--{flag}={value}" for flag, value in (("zone", self.zone), ("project", self.project)) if value]

    @property
    def nodes(self) -> List[str]:
        return [self.name] if self.slices == 1 else [f"{self.name}-{i}" for i in range(self.slices)]


def create_command(target: TpuTarget, accelerator_type: str, *, version: Optional[str] = None,
                   spot: bool = False, reserved: bool = False, queued: bool = False) -> List[str]:
    if spot and reserved:
        raise LaunchError("--spot and --reserved exclude each other",
                          hint="spot: cheap and preemptible; reserved: your reservation; pick one")
    if target.slices > 1 and not queued:
        raise LaunchError(f"{target.slices} slices need a queued resource",
                          hint="add --queued (multi-slice TPUs are created through queued resources)")
    runtime = version or default_runtime_version(accelerator_type)
    accelerator_generation(accelerator_type)
    tier = ["--spot"] if spot else ["--reserved"] if reserved else []
    if not queued:
        return [*TPUS, "tpu-vm", "create", target.name, *target.location,
                f"--accelerator-type={accelerator_type}", f"--version={runtime}", *tier]
    nodes = ([f"--node-id={target.name}"] if target.slices == 1
             else [f"--node-count={target.slices}", f"--node-prefix={target.name}"])
    return [*TPUS, "queued-resources", "create", target.name, *target.location,
            f"--accelerator-type={accelerator_type}", f"--runtime-version={runtime}", *nodes, *tier]


def _on_all_workers(target: TpuTarget, verb: str, operands: Sequence[str], *after: str) -> List[str]:
    """``verb`` on every worker: of the one slice, or of every node of the queued resource."""
    api, nodes = ("tpu-vm", []) if target.slices == 1 else ("queued-resources", ["--node=all"])
    return [*TPUS, api, verb, *operands, *target.location, *nodes, "--worker=all", *after]


def ssh_all_command(target: TpuTarget, command: str) -> List[str]:
    return _on_all_workers(target, "ssh", [target.name], f"--command={command}")


def ssh_one_command(target: TpuTarget, command: str) -> List[str]:
    return [*TPUS, "tpu-vm", "ssh", target.nodes[0], *target.location, "--worker=0", f"--command={command}"]


def remote_word(path: str, *, glob_name: bool = False) -> str:
    """Quoted for the remote shell, where scp's legacy protocol expands remote paths."""
    if glob_name and "/" in path:
        directory, name = path.rsplit("/", 1)
        if re.fullmatch(r"[A-Za-z0-9_.*-]+", name):
            return f"{shlex.quote(directory)}/{name}"
    return shlex.quote(path)


def scp_to_all_command(target: TpuTarget, local_path: str, remote_path: str) -> List[str]:
    return _on_all_workers(target, "scp", [local_path, f"{target.name}:{remote_word(remote_path)}"])


def scp_from_worker_command(target: TpuTarget, node: str, worker: int, remote_path: str,
                            local_dir: str) -> List[str]:
    remote = f"{node}:{remote_word(remote_path, glob_name=True)}"
    return [*TPUS, "tpu-vm", "scp", remote, local_dir, *target.location, f"--worker={worker}"]


def describe_command(target: TpuTarget, node: str) -> List[str]:
    return [*TPUS, "tpu-vm", "describe", node, *target.location, "--format=json"]


def queued_describe_command(target: TpuTarget) -> List[str]:
    return [*TPUS, "queued-resources", "describe", target.name, *target.location, "--format=value(name)"]


def worker_count(describe_json: str) -> int:
    """One network endpoint per worker in ``tpu-vm describe --format=json``."""
    try:
        endpoints = json.loads(describe_json).get("networkEndpoints") or []
    except (json.JSONDecodeError, AttributeError):
        raise LaunchError("could not read the TPU description returned by gcloud",
                          hint="pass --workers N (hosts per slice) to skip the lookup") from None
    if not endpoints:
        raise LaunchError("the TPU description lists no workers (is it still being created?)",
                          hint="wait for state READY (`gcloud compute tpus tpu-vm list`), or pass --workers N")
    return len(endpoints)


def delete_command(target: TpuTarget, *, queued: bool, quiet: bool = False) -> List[str]:
    if target.slices > 1 and not queued:
        raise LaunchError(f"{target.slices} slices live in a queued resource",
                          hint="add --queued so the queued resource and all its slices are deleted")
    yes = ["--quiet"] if quiet else []
    if queued:
        return [*TPUS, "queued-resources", "delete", target.name, *target.location, "--force", *yes]
    return [*TPUS, "tpu-vm", "delete", target.name, *target.location, *yes]


def _join(steps: Sequence[str]) -> str:
    return " && ".join(steps)


def dquote(text: str) -> str:
    """Double quotes only, so a whole script fits in one pasteable ``--command='...'``."""
    if re.fullmatch(r"[A-Za-z0-9_@%+=:,./-]+", text):
        return text
    return '"' + re.sub(r'([$`"\\])', r"\\\1", text) + '"'


def setup_script(*, remote_dir: str = REMOTE_DIR, archive: str = REMOTE_ARCHIVE,
                 git_url: Optional[str] = None, git_ref: str = "origin/HEAD",
                 python: str = DEFAULT_PYTHON, extras: Sequence[str] = DEFAULT_EXTRAS) -> str:
    """Idempotent; uv supplies the Python the constraints were pinned with."""
    d = dquote(remote_dir)
    if git_url is not None:
        url, ref = dquote(git_url), dquote(git_ref)
        fetch = (f"if [ -d {d}/.git ]; then git -C {d} fetch --quiet origin; "
                 f"else git clone --quiet {url} {d}; fi && git -C {d} checkout --quiet --force {ref}")
    else:
        a = dquote(archive)
        fetch = f"mkdir -p {d} && tar -xzf {a} -C {d} && rm -f {a}"
    uv = "$HOME/.local/bin/uv"
    install_uv = (f"( [ -x {uv} ] || python3 -m pip install --user --quiet uv "
                  f"|| python3 -m pip install --user --quiet --break-system-packages uv )")
    packages = "".join(f" {dquote(p)}" for p in extras)
    return _join([
        "set -e",
        fetch,
        f"cd {d}",
        f"mkdir -p logs {REMOTE_CONFIG_DIR}",
        install_uv,
        "rm -rf .venv",
        f"{uv} venv --quiet --python {dquote(python)} .venv",
        f"{uv} pip install --quiet --python .venv/bin/python -c constraints.txt -e .{packages}",
        ".venv/bin/chinchax --help > /dev/null",
        "echo chinchax ready on $(hostname)",
    ])


def check_env_assignments(assignments: Sequence[str]) -> List[Tuple[str, str]]:
    pairs = []
    for item in assignments:
        name, sep, value = item.partition("=")
        if not sep or not _ENV_NAME.match(name):
            raise LaunchError(f"--env {item!r} is not NAME=VALUE",
                              hint="e.g. --env LIBTPU_INIT_ARGS=--xla_tpu_enable_latency_hiding_scheduler=true")
        pairs.append((name, value))
    return pairs


def train_command(config: str, overrides: Sequence[str], env: Sequence[str] = ()) -> str:
    prefix = ["env", *(dquote(f"{name}={value}") for name, value in check_env_assignments(env))] if env else []
    return " ".join([*prefix, ".venv/bin/chinchax", "train", dquote(config), *(dquote(o) for o in overrides)])


def run_script(config: str, overrides: Sequence[str], *, remote_dir: str = REMOTE_DIR,
               env: Sequence[str] = (), detach: bool = False) -> str:
    """The same ``chinchax train`` on every worker; peers meet through TPU metadata.  Attached, a
    dropped connection stops the run (rerunning resumes); ``detach`` survives it under ``nohup``."""
    train = train_command(config, overrides, env)
    start = [f"cd {dquote(remote_dir)}", "mkdir -p logs"]
    if detach:
        return _join([*start, f"nohup {train} > {WORKER_LOG} 2>&1 < /dev/null &"])
    return _join([*start, "set -o pipefail", f"{train} 2>&1 | tee {WORKER_LOG}"])


def follow_logs_script(remote_dir: str = REMOTE_DIR) -> str:
    return f"tail -n 100 -F {dquote(remote_dir)}/logs/worker-*.log"


def remote_logs_glob(remote_dir: str = REMOTE_DIR) -> str:
    return f"{remote_dir}/logs/worker-*.log"


def remote_config_path(local_config: str) -> str:
    return f"{REMOTE_CONFIG_DIR}/{Path(local_config).name}"


def _excluded(relative: Path) -> bool:
    return any(part in PACK_EXCLUDED_DIRS or part.endswith(PACK_EXCLUDED_SUFFIXES) for part in relative.parts)


def project_files(source: Path) -> List[Path]:
    files = []
    for path in sorted(source.rglob("*")):
        relative = path.relative_to(source)
        if path.is_file() and not path.is_symlink() and not _excluded(relative):
            files.append(relative)
    return files


def check_project(source: Path) -> Path:
    source = source.resolve()
    for required in ("pyproject.toml", "constraints.txt"):
        if not (source / required).is_file():
            raise LaunchError(f"{source} has no {required}: it is not a chinchax checkout",
                              hint="pass --source DIR (a checkout with pyproject.toml and constraints.txt) "
                              "or --git URL")
    return source


def pack_project(source: Path, archive: Path) -> Tuple[int, int]:
    source = check_project(source)
    files = project_files(source)
    with tarfile.open(archive, "w:gz") as tar:
        for relative in files:
            tar.add(source / relative, arcname=relative.as_posix(), recursive=False)
    return len(files), archive.stat().st_size


def default_source() -> Path:
    """This checkout: the package is an editable install."""
    return Path(__file__).resolve().parent.parent
