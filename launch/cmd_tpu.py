"""``chinchax tpu create|setup|run|logs|delete``: a Cloud TPU VM (pod) from creation to deletion;
``--dry-run`` prints the gcloud commands, shell-quoted, and runs nothing."""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import List, Optional

import yaml

from chinchax.errors import LaunchError
from launch import tpu
from launch.args import add_config_arguments
from launch.gcloud import Gcloud, RetryPolicy


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", help="TPU (or queued resource) name, e.g. chinchax-v5p")
    parser.add_argument("--zone", help="e.g. us-east5-a (default: gcloud's compute/zone)")
    parser.add_argument("--project", help="Google Cloud project (default: gcloud's core/project)")
    parser.add_argument("--slices", type=int, default=1,
                        help="slices of a multi-slice queued resource (nodes NAME-0, NAME-1, ...; default 1)")
    parser.add_argument("--dry-run", action="store_true", help="print the gcloud commands; run nothing")
    parser.add_argument("--retries", type=int, default=3,
                        help="extra attempts after a transient SSH/network failure (default 3)")


def _remote_dir(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--remote-dir", default=tpu.REMOTE_DIR,
                        help=f"project directory on each worker, relative to home (default {tpu.REMOTE_DIR})")


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "tpu", help="create, set up, run on and delete Cloud TPU VMs (pods, multi-slice)",
        description="Drive a Cloud TPU VM through gcloud: create it, install this project on every "
        "worker, run the same `chinchax train` on all workers, fetch per-worker logs, delete it.")
    actions = parser.add_subparsers(dest="tpu_command", metavar="ACTION")
    actions.required = True

    create = actions.add_parser("create", help="create a TPU VM or queued resource")
    _common(create)
    create.add_argument("--type", required=True, dest="accelerator_type",
                        help="accelerator type, e.g. v4-32, v5litepod-16, v5p-64, v6e-16")
    create.add_argument("--version", help="TPU software version (default: the JAX image of the generation)")
    tier = create.add_mutually_exclusive_group()
    tier.add_argument("--spot", action="store_true", help="Spot capacity: cheaper, may be preempted")
    tier.add_argument("--reserved", action="store_true", help="use your reservation")
    create.add_argument("--queued", action="store_true",
                        help="request through queued resources (waits for capacity; needed for --slices > 1)")
    create.set_defaults(func=run_create)

    setup = actions.add_parser("setup", help="install the project and its pinned dependencies on every worker")
    _common(setup)
    _remote_dir(setup)
    source = setup.add_mutually_exclusive_group()
    source.add_argument("--source", type=Path, help="local checkout to copy (default: this one)")
    source.add_argument("--git", dest="git_url", help="clone this repository on the workers instead")
    setup.add_argument("--ref", default="origin/HEAD", help="git ref to check out with --git (default origin/HEAD)")
    setup.add_argument("--python", default=tpu.DEFAULT_PYTHON,
                       help=f"Python version of the workers' virtualenv (default {tpu.DEFAULT_PYTHON})")
    setup.add_argument("--extra", action="append", dest="extras", metavar="REQUIREMENT",
                       help="extra package to install (repeatable; default: jax[tpu] and gcsfs)")
    setup.set_defaults(func=run_setup)

    run = actions.add_parser("run", help="run `chinchax train CONFIG [overrides]` on every worker")
    _common(run)
    _remote_dir(run)
    add_config_arguments(run, config_help="experiment YAML (copied to the workers first if it exists here)",
                         overrides_help="dotted overrides, as for `chinchax train`")
    run.add_argument("--run-dir", help="run directory, e.g. gs://BUCKET/runs/NAME (same as run_dir=...)")
    run.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                     help="environment variable for the training processes (repeatable)")
    run.add_argument("--detach", action="store_true",
                     help="start under nohup and return; follow with `chinchax tpu logs NAME --follow`")
    run.set_defaults(func=run_run)

    logs = actions.add_parser("logs", help="copy every worker's log here (or follow worker 0's)")
    _common(logs)
    _remote_dir(logs)
    logs.add_argument("--dest", type=Path, help="local directory (default: tpu-logs/NAME)")
    logs.add_argument("--workers", type=int, help="hosts per slice (default: asked from gcloud)")
    logs.add_argument("--follow", action="store_true", help="stream worker 0's log instead of copying")
    logs.set_defaults(func=run_logs)

    delete = actions.add_parser("delete", help="delete the TPU (and its queued resource)")
    _common(delete)
    delete.add_argument("--queued", action="store_true",
                        help="delete the queued resource and its nodes (found automatically otherwise)")
    delete.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    delete.set_defaults(func=run_delete)


def _target(args: argparse.Namespace) -> tpu.TpuTarget:
    return tpu.TpuTarget(name=args.name, zone=args.zone, project=args.project, slices=args.slices)


def _gcloud(args: argparse.Namespace) -> Gcloud:
    if args.retries < 0:
        raise LaunchError(f"--retries {args.retries} must be 0 or more", hint="0 disables retries")
    return Gcloud(dry_run=args.dry_run, retry=RetryPolicy(attempts=args.retries + 1))


def run_create(args: argparse.Namespace) -> int:
    target = _target(args)
    command = tpu.create_command(target, args.accelerator_type, version=args.version, spot=args.spot,
                                 reserved=args.reserved, queued=args.queued)
    gcloud = _gcloud(args)
    gcloud.run(command, retry=False)
    if args.queued and not args.dry_run:
        gcloud.note(f"queued: watch it with `gcloud compute tpus queued-resources describe {target.name}"
                    + "".join(f" {flag}" for flag in target.location) + "` until ACTIVE")
    return 0


def run_setup(args: argparse.Namespace) -> int:
    target = _target(args)
    gcloud = _gcloud(args)
    extras = args.extras if args.extras is not None else list(tpu.DEFAULT_EXTRAS)
    if args.git_url:
        script = tpu.setup_script(remote_dir=args.remote_dir, git_url=args.git_url,
                                  git_ref=args.ref, python=args.python, extras=extras)
        gcloud.run(tpu.ssh_all_command(target, script))
        return 0
    source = tpu.check_project(args.source or tpu.default_source())
    script = tpu.setup_script(remote_dir=args.remote_dir, archive=tpu.REMOTE_ARCHIVE, python=args.python,
                              extras=extras)
    with tempfile.TemporaryDirectory(prefix="chinchax-setup-") as tmp:
        archive = Path(tmp) / tpu.REMOTE_ARCHIVE
        if args.dry_run:
            gcloud.note(f"pack {source} into {archive} (without .git, runs/, caches, virtualenvs)")
        else:
            n_files, n_bytes = tpu.pack_project(source, archive)
            gcloud.note(f"packed {n_files} files of {source} ({n_bytes / 1e6:.1f} MB)")
        gcloud.run(tpu.scp_to_all_command(target, str(archive), tpu.REMOTE_ARCHIVE))
    gcloud.run(tpu.ssh_all_command(target, script))
    return 0


def _config_run_dir(config: Path, overrides: List[str]) -> Optional[str]:
    for item in reversed(overrides):
        key, _, value = item.partition("=")
        if key.strip() == "run_dir":
            return value
    try:
        data = yaml.safe_load(config.read_text()) if config.is_file() else None
    except (OSError, yaml.YAMLError):
        return None
    return data.get("run_dir") if isinstance(data, dict) else None


def run_run(args: argparse.Namespace) -> int:
    target = _target(args)
    gcloud = _gcloud(args)
    tpu.check_env_assignments(args.env)
    overrides = list(args.overrides) + ([f"run_dir={args.run_dir}"] if args.run_dir else [])
    local_config = Path(args.config)
    remote_config = args.config
    if local_config.is_file():
        remote_config = tpu.remote_config_path(args.config)
        gcloud.run(tpu.scp_to_all_command(target, str(local_config), f"{args.remote_dir}/{remote_config}"))
    run_dir = _config_run_dir(local_config, overrides)
    if not (run_dir or "").startswith("gs://"):
        print("chinchax tpu run: warning: the run directory is not a gs:// path; each worker writes its own "
              "local copy and multi-host checkpoints need one shared path. Add run_dir=gs://BUCKET/runs/NAME.",
              file=sys.stderr)
    script = tpu.run_script(remote_config, overrides, remote_dir=args.remote_dir, env=args.env,
                            detach=args.detach)
    # Only a detached start is safe to repeat: an attached run that lost its connection may
    # still be training on some workers.
    gcloud.run(tpu.ssh_all_command(target, script), retry=args.detach)
    return 0


def run_logs(args: argparse.Namespace) -> int:
    target = _target(args)
    gcloud = _gcloud(args)
    if args.follow:
        gcloud.run(tpu.ssh_one_command(target, tpu.follow_logs_script(args.remote_dir)), retry=False)
        return 0
    if args.workers is not None and args.workers < 1:
        raise LaunchError(f"--workers {args.workers} must be at least 1", hint="hosts per slice, e.g. 8 for v5p-64")
    dest = args.dest or Path("tpu-logs") / target.name
    missing: List[str] = []
    copied = 0
    for node in target.nodes:
        workers = args.workers
        if workers is None:
            described = gcloud.run(tpu.describe_command(target, node), capture=True)
            if args.dry_run:
                gcloud.note("then one scp per worker of the description above, e.g.:")
                workers = 1
            else:
                workers = tpu.worker_count(described.stdout)
        local_dir = dest / node if target.slices > 1 else dest
        if not args.dry_run:
            local_dir.mkdir(parents=True, exist_ok=True)
        for worker in range(workers):
            command = tpu.scp_from_worker_command(target, node, worker, tpu.remote_logs_glob(args.remote_dir),
                                                  str(local_dir) + "/")
            if gcloud.run(command, check=False).returncode == 0:
                copied += 1
            else:
                missing.append(f"{node} worker {worker}")
    if args.dry_run:
        return 0
    print(f"logs of {copied} workers in {dest}/", file=sys.stderr)
    if missing:
        raise LaunchError(f"no logs copied from {', '.join(missing)}",
                          hint="has `chinchax tpu run` started there? check with `chinchax tpu logs --follow`")
    return 0


def run_delete(args: argparse.Namespace) -> int:
    target = _target(args)
    gcloud = _gcloud(args)
    queued = args.queued or target.slices > 1
    if not queued and not args.dry_run:
        # A queued resource outlives its deleted node (and keeps the name): delete it instead.
        queued = gcloud.run(tpu.queued_describe_command(target), capture=True, check=False,
                            retry=False, quiet=True).returncode == 0
    gcloud.run(tpu.delete_command(target, queued=queued, quiet=args.yes))
    return 0
