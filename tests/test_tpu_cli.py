"""``chinchax tpu ...`` against a fake ``gcloud`` on PATH that records every invocation."""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import List

import pytest

from chinchax.errors import LaunchError
from launch import cmd_tpu, tpu
from launch.gcloud import Gcloud, RetryPolicy, format_command, is_transient_failure

FAKE_GCLOUD = r'''#!{python}
"""Fake gcloud: appends its argv to $FAKE_GCLOUD_LOG; behaviour set by FAKE_GCLOUD_* variables."""
import json, os, sys
args = sys.argv[1:]
state = os.environ["FAKE_GCLOUD_LOG"]
if args[:2] == ["auth", "list"]:
    print(os.environ.get("FAKE_GCLOUD_ACCOUNT", "someone@example.com"))
    sys.exit(0)
with open(state, "a") as f:
    f.write(json.dumps(args) + "\n")
calls = sum(1 for _ in open(state))
if calls <= int(os.environ.get("FAKE_GCLOUD_FLAKY", "0")):
    sys.stderr.write("Connection closed by remote host\n")
    sys.exit(255)
if "describe" in args and "queued-resources" in args:
    if os.environ.get("FAKE_GCLOUD_QUEUED"):
        print("projects/p/locations/z/queuedResources/" + args[4])
        sys.exit(0)
    sys.stderr.write("ERROR: NOT_FOUND\n")
    sys.exit(1)
if "describe" in args:
    workers = int(os.environ.get("FAKE_GCLOUD_WORKERS", "2"))
    print(json.dumps({"networkEndpoints": [{"ipAddress": f"10.0.0.{i}"} for i in range(workers)]}))
if "scp" in args and os.environ.get("FAKE_GCLOUD_FETCH_TO"):
    dest = args[args.index("scp") + 2]
    worker = [a for a in args if a.startswith("--worker=")][0].split("=")[1]
    with open(os.path.join(dest, f"worker-host{worker}.log"), "w") as f:
        f.write("log\n")
sys.exit(int(os.environ.get("FAKE_GCLOUD_EXIT", "0")))
'''


@pytest.fixture
def fake_gcloud(tmp_path, monkeypatch):
    """A recording ``gcloud`` first on PATH; returns a function giving the recorded argv lists."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / "gcloud"
    script.write_text(FAKE_GCLOUD.replace("{python}", sys.executable))
    script.chmod(0o755)
    log = tmp_path / "gcloud-calls.jsonl"
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_GCLOUD_LOG", str(log))
    sleeps: List[float] = []
    monkeypatch.setattr(Gcloud, "wait", lambda self, seconds: sleeps.append(seconds))

    def calls() -> List[List[str]]:
        if not log.exists():
            return []
        return [json.loads(line) for line in log.read_text().splitlines()]

    calls.sleeps = sleeps  # type: ignore[attr-defined]
    return calls


def chinchax_tpu(*argv: str) -> int:
    """Parse and run ``chinchax tpu ...`` through the module's own ``register``."""
    parser = argparse.ArgumentParser(prog="chinchax")
    cmd_tpu.register(parser.add_subparsers())
    args = parser.parse_args(["tpu", *argv])
    return args.func(args)


def gcloud_argv(line: str) -> List[str]:
    """A command line as written in the tests, without its leading ``gcloud``."""
    words = shlex.split(line)
    assert words[0] == "gcloud"
    return words[1:]


def test_create_spot(fake_gcloud):
    assert (
        chinchax_tpu("create", "my-tpu", "--type", "v5p-64", "--zone", "us-east5-a", "--spot") == 0
    )
    assert fake_gcloud() == [
        gcloud_argv(
            "gcloud compute tpus tpu-vm create my-tpu --zone=us-east5-a --accelerator-type=v5p-64 "
            "--version=v2-alpha-tpuv5 --spot"
        )
    ]


def test_create_reserved_with_project_and_explicit_version(fake_gcloud):
    chinchax_tpu(
        "create",
        "big",
        "--type",
        "v4-32",
        "--zone",
        "us-central2-b",
        "--project",
        "proj",
        "--reserved",
        "--version",
        "tpu-ubuntu2204-base",
    )
    assert fake_gcloud() == [
        gcloud_argv(
            "gcloud compute tpus tpu-vm create big --zone=us-central2-b --project=proj --accelerator-type=v4-32 "
            "--version=tpu-ubuntu2204-base --reserved"
        )
    ]


def test_create_queued_single_and_multi_slice(fake_gcloud):
    chinchax_tpu("create", "q1", "--type", "v6e-16", "--zone", "z", "--queued", "--spot")
    chinchax_tpu(
        "create", "q2", "--type", "v5litepod-16", "--zone", "z", "--queued", "--slices", "2"
    )
    assert fake_gcloud() == [
        gcloud_argv(
            "gcloud compute tpus queued-resources create q1 --zone=z --accelerator-type=v6e-16 "
            "--runtime-version=v2-alpha-tpuv6e --node-id=q1 --spot"
        ),
        gcloud_argv(
            "gcloud compute tpus queued-resources create q2 --zone=z --accelerator-type=v5litepod-16 "
            "--runtime-version=v2-alpha-tpuv5-lite --node-count=2 --node-prefix=q2"
        ),
    ]


@pytest.mark.parametrize(
    "accelerator,runtime",
    [
        ("v4-8", "tpu-ubuntu2204-base"),
        ("v5litepod-16", "v2-alpha-tpuv5-lite"),
        ("v5p-128", "v2-alpha-tpuv5"),
        ("v6e-256", "v2-alpha-tpuv6e"),
    ],
)
def test_default_runtime_versions(accelerator, runtime):
    assert tpu.default_runtime_version(accelerator) == runtime


@pytest.mark.parametrize(
    "argv,needle",
    [
        (["create", "x", "--type", "v5p-64", "--slices", "2"], "queued"),
        (["create", "x", "--type", "tpu7x-64"], "--version"),
        (["create", "x", "--type", "v5p"], "GENERATION-SIZE"),
        (["create", "Bad_Name", "--type", "v5p-64"], "resource name"),
        (["run", "x", "cfg.yaml", "--env", "no-equals"], "NAME=VALUE"),
    ],
)
def test_bad_requests_fail_before_gcloud_runs(fake_gcloud, argv, needle):
    with pytest.raises(LaunchError) as err:
        chinchax_tpu(*argv)
    assert needle in str(err.value) + (err.value.hint or "")
    assert fake_gcloud() == []


def test_spot_and_reserved_exclude_each_other():
    with pytest.raises(SystemExit):
        chinchax_tpu("create", "x", "--type", "v5p-64", "--spot", "--reserved")
    with pytest.raises(LaunchError):
        tpu.create_command(tpu.TpuTarget("x"), "v5p-64", spot=True, reserved=True)


def _project(root: Path) -> Path:
    (root / "pkg").mkdir(parents=True)
    (root / "pyproject.toml").write_text("[project]\nname='x'\n")
    (root / "constraints.txt").write_text("numpy==2.4.6\n")
    (root / "pkg" / "mod.py").write_text("X = 1\n")
    for junk in (
        "runs/old/metrics.jsonl",
        ".git/HEAD",
        "pkg/__pycache__/mod.pyc",
        ".venv/bin/python",
    ):
        (root / junk).parent.mkdir(parents=True, exist_ok=True)
        (root / junk).write_text("junk")
    return root


def test_setup_ships_the_project_and_installs_pinned_dependencies(
    fake_gcloud, tmp_path, monkeypatch
):
    source = _project(tmp_path / "proj")
    shipped: List[List[str]] = []
    real_run = Gcloud.run

    def spy(self, argv, **kw):  # look inside the tarball while it exists
        if "scp" in argv:
            with tarfile.open(argv[argv.index("scp") + 1]) as tar:
                shipped.append(sorted(tar.getnames()))
        return real_run(self, argv, **kw)

    monkeypatch.setattr(Gcloud, "run", spy)
    chinchax_tpu("setup", "my-tpu", "--zone", "z", "--source", str(source))
    scp, ssh = fake_gcloud()
    assert scp[:4] == ["compute", "tpus", "tpu-vm", "scp"]
    assert scp[5:] == ["my-tpu:chinchax-src.tar.gz", "--zone=z", "--worker=all"]
    assert not Path(scp[4]).exists()  # the local archive is temporary
    assert shipped == [["constraints.txt", "pkg/mod.py", "pyproject.toml"]]
    assert ssh[:7] == ["compute", "tpus", "tpu-vm", "ssh", "my-tpu", "--zone=z", "--worker=all"]
    script = ssh[7].removeprefix("--command=")
    assert "tar -xzf chinchax-src.tar.gz -C chinchax" in script
    assert (
        'pip install --quiet --python .venv/bin/python -c constraints.txt -e . "jax[tpu]" gcsfs'
        in script
    )
    assert "--python 3.11 .venv" in script


def test_setup_from_git_clones_on_every_worker(fake_gcloud):
    chinchax_tpu(
        "setup",
        "my-tpu",
        "--zone",
        "z",
        "--git",
        "https://example.com/chinchax.git",
        "--ref",
        "v1.0",
        "--extra",
        "jax[tpu]",
        "--extra",
        "gcsfs",
    )
    (ssh,) = fake_gcloud()
    script = ssh[-1].removeprefix("--command=")
    assert "git clone --quiet https://example.com/chinchax.git chinchax" in script
    assert "checkout --quiet --force v1.0" in script
    assert script.index("git clone") < script.index("uv pip install")
    assert '-e . "jax[tpu]" gcsfs' in script


def test_setup_rejects_a_directory_that_is_not_a_checkout(fake_gcloud, tmp_path):
    with pytest.raises(LaunchError, match="pyproject.toml"):
        chinchax_tpu("setup", "my-tpu", "--source", str(tmp_path))
    assert fake_gcloud() == []


def test_run_copies_the_config_and_trains_on_all_workers(fake_gcloud, tmp_path, capsys):
    config = tmp_path / "exp.yaml"
    config.write_text("name: exp\nrun_dir: gs://bucket/runs/exp\n")
    chinchax_tpu(
        "run",
        "my-tpu",
        str(config),
        "train.steps=20",
        "model.d_model=256",
        "--zone",
        "z",
        "--env",
        "LIBTPU_INIT_ARGS=--xla_tpu_enable_async_all_gather=true",
    )
    scp, ssh = fake_gcloud()
    assert scp == gcloud_argv(
        f"gcloud compute tpus tpu-vm scp {config} my-tpu:chinchax/.run-configs/exp.yaml "
        "--zone=z --worker=all"
    )
    assert ssh == gcloud_argv(
        "gcloud compute tpus tpu-vm ssh my-tpu --zone=z --worker=all --command='cd chinchax && mkdir -p logs && "
        "set -o pipefail && env LIBTPU_INIT_ARGS=--xla_tpu_enable_async_all_gather=true .venv/bin/chinchax train "
        ".run-configs/exp.yaml train.steps=20 model.d_model=256 2>&1 | tee logs/worker-$(hostname).log'"
    )
    assert "warning" not in capsys.readouterr().err  # gs:// run dir: nothing to warn about


def test_run_quotes_overrides_for_the_remote_shell_and_warns_about_local_run_dirs(
    fake_gcloud, capsys
):
    chinchax_tpu(
        "run",
        "my-tpu",
        "configs/on-the-workers.yaml",
        "name=a b",
        "data.path=$HOME/x",
        "--zone",
        "z",
        "--detach",
        "--run-dir",
        "runs/local",
    )
    (ssh,) = fake_gcloud()  # no local file: nothing copied
    script = ssh[-1].removeprefix("--command=")
    assert script.endswith("> logs/worker-$(hostname).log 2>&1 < /dev/null &")
    train = script.split("nohup ", 1)[1].split(" >", 1)[0]
    remote_words = subprocess.run(
        ["bash", "-c", f"for w in {train}; do printf '%s\\n' \"$w\"; done"],
        capture_output=True,
        text=True,
        env={"HOME": "/home/w"},
    ).stdout.splitlines()
    assert remote_words == [
        ".venv/bin/chinchax",
        "train",
        "configs/on-the-workers.yaml",
        "name=a b",
        "data.path=$HOME/x",
        "run_dir=runs/local",
    ]
    assert "gs://" in capsys.readouterr().err


def test_logs_fetches_one_scp_per_worker(fake_gcloud, tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_GCLOUD_WORKERS", "3")
    monkeypatch.setenv("FAKE_GCLOUD_FETCH_TO", "1")
    dest = tmp_path / "fetched"
    chinchax_tpu("logs", "my-tpu", "--zone", "z", "--dest", str(dest))
    describe, *scps = fake_gcloud()
    assert describe == gcloud_argv(
        "gcloud compute tpus tpu-vm describe my-tpu --zone=z --format=json"
    )
    assert scps == [
        gcloud_argv(
            f"gcloud compute tpus tpu-vm scp 'my-tpu:chinchax/logs/worker-*.log' {dest}/ "
            f"--zone=z --worker={w}"
        )
        for w in range(3)
    ]
    assert sorted(p.name for p in dest.iterdir()) == [
        "worker-host0.log",
        "worker-host1.log",
        "worker-host2.log",
    ]


def test_logs_of_a_multi_slice_job_go_per_node(fake_gcloud, tmp_path):
    chinchax_tpu("logs", "ms", "--slices", "2", "--workers", "2", "--dest", str(tmp_path))
    nodes = [(c[4].split(":")[0], c[-1]) for c in fake_gcloud()]
    assert nodes == [
        ("ms-0", "--worker=0"),
        ("ms-0", "--worker=1"),
        ("ms-1", "--worker=0"),
        ("ms-1", "--worker=1"),
    ]


def test_delete_plain_and_queued(fake_gcloud, monkeypatch):
    chinchax_tpu("delete", "my-tpu", "--zone", "z", "--yes")
    assert fake_gcloud()[-1] == gcloud_argv(
        "gcloud compute tpus tpu-vm delete my-tpu --zone=z --quiet"
    )
    chinchax_tpu("delete", "my-tpu", "--zone", "z", "--queued")
    assert fake_gcloud()[-1] == gcloud_argv(
        "gcloud compute tpus queued-resources delete my-tpu --zone=z --force"
    )
    monkeypatch.setenv("FAKE_GCLOUD_QUEUED", "1")  # found by asking gcloud
    chinchax_tpu("delete", "my-tpu", "--zone", "z", "--yes")
    assert fake_gcloud()[-2:] == [
        gcloud_argv(
            "gcloud compute tpus queued-resources describe my-tpu --zone=z --format='value(name)'"
        ),
        gcloud_argv("gcloud compute tpus queued-resources delete my-tpu --zone=z --force --quiet"),
    ]


def test_missing_gcloud_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # nothing on PATH
    with pytest.raises(LaunchError) as err:
        chinchax_tpu("create", "my-tpu", "--type", "v5p-64")
    assert "not on PATH" in str(err.value)
    assert "cloud.google.com/sdk" in err.value.hint


def test_logged_out_gcloud_is_a_clear_error(fake_gcloud, monkeypatch):
    monkeypatch.setenv("FAKE_GCLOUD_ACCOUNT", "")
    with pytest.raises(LaunchError) as err:
        chinchax_tpu("delete", "my-tpu", "--zone", "z", "--yes")
    assert "not logged in" in str(err.value)
    assert "gcloud auth login" in err.value.hint
    assert fake_gcloud() == []


def test_dry_run_prints_pasteable_commands_and_runs_nothing(
    fake_gcloud, tmp_path, monkeypatch, capsys
):
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))  # works without a logged-in gcloud too
    monkeypatch.setenv("FAKE_GCLOUD_ACCOUNT", "")
    monkeypatch.chdir(tmp_path)
    chinchax_tpu(
        "create", "my-tpu", "--type", "v5litepod-16", "--zone", "z", "--queued", "--dry-run"
    )
    chinchax_tpu("setup", "my-tpu", "--zone", "z", "--dry-run")
    chinchax_tpu("run", "my-tpu", "cfg.yaml", "train.steps=3", "--zone", "z", "--dry-run")
    chinchax_tpu("logs", "my-tpu", "--zone", "z", "--dry-run")
    chinchax_tpu("delete", "my-tpu", "--zone", "z", "--queued", "--dry-run")
    assert fake_gcloud() == []
    assert sorted(os.listdir(tmp_path)) == ["bin"]  # no tpu-logs/, nothing else
    printed = [line for line in capsys.readouterr().out.splitlines() if not line.startswith("#")]
    assert [shlex.split(line)[:5] for line in printed] == [
        ["gcloud", "compute", "tpus", "queued-resources", "create"],
        ["gcloud", "compute", "tpus", "tpu-vm", "scp"],
        ["gcloud", "compute", "tpus", "tpu-vm", "ssh"],
        ["gcloud", "compute", "tpus", "tpu-vm", "ssh"],
        ["gcloud", "compute", "tpus", "tpu-vm", "describe"],
        ["gcloud", "compute", "tpus", "tpu-vm", "scp"],
        ["gcloud", "compute", "tpus", "queued-resources", "delete"],
    ]
    run_line = shlex.split(printed[3])
    assert run_line[-1].endswith(
        ".venv/bin/chinchax train cfg.yaml train.steps=3 2>&1 | tee logs/worker-$(hostname).log"
    )


def test_transient_ssh_failures_are_retried_with_backoff(fake_gcloud, monkeypatch):
    monkeypatch.setenv("FAKE_GCLOUD_FLAKY", "2")  # the first two calls fail with exit code 255
    chinchax_tpu("setup", "my-tpu", "--zone", "z", "--git", "https://example.com/c.git")
    calls = fake_gcloud()
    assert len(calls) == 3 and calls[0] == calls[1] == calls[2]
    assert fake_gcloud.sleeps == [5.0, 10.0]


def test_retries_give_up_with_the_last_message(fake_gcloud, monkeypatch):
    monkeypatch.setenv("FAKE_GCLOUD_FLAKY", "10")
    with pytest.raises(LaunchError) as err:
        chinchax_tpu("setup", "my-tpu", "--git", "https://example.com/c.git", "--retries", "1")
    assert "after 2 attempts" in str(err.value) and "Connection closed" in str(err.value)
    assert len(fake_gcloud()) == 2


def test_attached_runs_and_real_errors_are_not_retried(fake_gcloud, monkeypatch):
    monkeypatch.setenv("FAKE_GCLOUD_FLAKY", "1")
    with pytest.raises(LaunchError, match="exit code 255"):
        chinchax_tpu("run", "my-tpu", "cfg.yaml")
    assert len(fake_gcloud()) == 1
    monkeypatch.setenv("FAKE_GCLOUD_FLAKY", "0")
    monkeypatch.setenv("FAKE_GCLOUD_EXIT", "1")
    with pytest.raises(LaunchError, match="exit code 1"):
        chinchax_tpu("setup", "my-tpu", "--git", "https://example.com/c.git")
    assert len(fake_gcloud()) == 2 and fake_gcloud.sleeps == []


def test_transient_classification_and_backoff_schedule():
    assert is_transient_failure(255, "")
    assert is_transient_failure(1, "ssh: connect to host 10.0.0.3 port 22: Connection timed out")
    assert not is_transient_failure(
        1, "ERROR: (gcloud.compute.tpus.tpu-vm.create) PERMISSION_DENIED"
    )
    assert not is_transient_failure(0, "Connection closed")
    assert RetryPolicy(attempts=6, first_delay_s=5, factor=2, max_delay_s=30).delays() == [
        5,
        10,
        20,
        30,
        30,
    ]


def test_format_command_round_trips_through_the_shell():
    argv = [
        "gcloud",
        "compute",
        "tpus",
        "tpu-vm",
        "ssh",
        "n",
        "--command=cd x && echo \"$(hostname)\" 'q'",
        "a b",
    ]
    assert shlex.split(format_command(argv)) == argv
    assert "--command='cd x" in format_command(argv)


def _remote_shell_words(word: str, cwd: Path) -> List[str]:
    """What a POSIX shell on the worker makes of one remote path (scp's legacy protocol)."""
    out = subprocess.run(["sh", "-c", f"for w in {word}; do printf '%s\\n' \"$w\"; done"],
                         capture_output=True, text=True, cwd=cwd)
    return out.stdout.splitlines()


def test_scp_remote_paths_are_quoted_for_the_remote_shell(fake_gcloud, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = tmp_path / "$(touch PWNED).yaml"
    config.write_text("name: exp\nrun_dir: gs://bucket/runs/exp\n")
    chinchax_tpu("run", "my-tpu", str(config), "--remote-dir", "c; touch PWNED2", "--zone", "z")
    scp, _ssh = fake_gcloud()
    remote = scp[5].split(":", 1)[1]
    assert _remote_shell_words(remote, tmp_path) == ["c; touch PWNED2/.run-configs/$(touch PWNED).yaml"]
    assert not (tmp_path / "PWNED").exists() and not (tmp_path / "PWNED2").exists()


def test_log_glob_stays_a_glob_with_its_directory_quoted(tmp_path):
    word = tpu.remote_word(tpu.remote_logs_glob("a dir; touch PWNED"), glob_name=True)
    logs = tmp_path / "a dir; touch PWNED" / "logs"
    logs.mkdir(parents=True)
    (logs / "worker-h0.log").write_text("x")
    assert _remote_shell_words(word, tmp_path) == ["a dir; touch PWNED/logs/worker-h0.log"]
    assert not (tmp_path / "PWNED").exists()
    assert tpu.remote_word("chinchax/logs/worker-*.log", glob_name=True) == "chinchax/logs/worker-*.log"
