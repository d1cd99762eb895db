"""XLA flags and the allocator a run starts with: precedence, GPU-only defaults, one re-execution."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from chinchax.errors import ConfigError
from launch import runtime_env as rt

REPO = Path(__file__).resolve().parent.parent


def test_environment_flags_win_over_config_and_gpu_defaults() -> None:
    cfg = rt.RuntimeConfig(xla_flags=["--xla_gpu_enable_triton_gemm=true", "--xla_dump_to=/tmp/x"])
    env = {"XLA_FLAGS": "--xla_dump_to=/mine", "XLA_PYTHON_CLIENT_MEM_FRACTION": "0.5"}
    changes = rt.runtime_environment(cfg, env, gpu=True)
    flags = changes["XLA_FLAGS"].split()
    assert flags[0] == "--xla_dump_to=/mine" and "--xla_dump_to=/tmp/x" not in flags
    assert "--xla_gpu_enable_triton_gemm=true" in flags  # config beats the default (false)
    assert "--xla_gpu_enable_triton_gemm=false" not in flags
    assert "--xla_disable_hlo_passes=rematerialization" in flags
    assert "XLA_PYTHON_CLIENT_MEM_FRACTION" not in changes  # the user's 0.5 stays


def test_gpu_defaults_only_on_gpu_and_switchable_off() -> None:
    cfg = rt.RuntimeConfig()
    assert rt.runtime_environment(cfg, {}, gpu=False) == {}
    on = rt.runtime_environment(cfg, {}, gpu=True)
    assert on["XLA_PYTHON_CLIENT_MEM_FRACTION"] == "0.9"
    assert set(rt.GPU_XLA_FLAGS) <= set(on["XLA_FLAGS"].split())
    assert rt.runtime_environment(cfg, {rt.ENV_GPU_DEFAULTS: "0"}, gpu=True) == {}
    assert rt.runtime_environment(rt.RuntimeConfig(gpu_defaults=False), {}, gpu=True) == {}
    record = rt.runtime_record(cfg, {"JAX_PLATFORMS": "cpu"})
    assert record == {"xla_flags": "", "gpu_memory_fraction": "", "allocator": "system"}


def test_this_xla_accepts_every_default_gpu_flag() -> None:
    """XLA aborts on an unknown flag: a renamed one would kill every GPU run at start."""
    env = {**os.environ, "XLA_FLAGS": " ".join(rt.GPU_XLA_FLAGS), "JAX_PLATFORMS": "cpu"}
    done = subprocess.run([sys.executable, "-c", "import jax.numpy as j; print(float(j.ones(3).sum()))"],
                          env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "3.0", done.stderr[-500:]


def test_allocator_choice_and_its_off_switch() -> None:
    tc = "/usr/lib/libtcmalloc_minimal.so.4"
    assert rt.allocator_environment({}, tcmalloc=tc, hugetlb=True)["LD_PRELOAD"] == tc
    huge = rt.allocator_environment({"GLIBC_TUNABLES": "glibc.a=1"}, tcmalloc=None, hugetlb=True)
    assert huge["GLIBC_TUNABLES"] == "glibc.a=1:glibc.malloc.hugetlb=1"
    assert rt.allocator_environment({"CHINCHAX_ALLOCATOR": "hugetlb"}, tcmalloc=tc, hugetlb=True)[
        rt.ENV_ALLOCATOR_SET] == "hugetlb"
    for env in ({"CHINCHAX_ALLOCATOR": "off"}, {rt.ENV_ALLOCATOR_SET: "hugetlb"},
                {"LD_PRELOAD": "/x/libjemalloc.so"}):
        assert rt.allocator_environment(env, tcmalloc=tc, hugetlb=True) == {}
    assert rt.allocator_environment({}, tcmalloc=None, hugetlb=False) == {}
    with pytest.raises(ConfigError, match="CHINCHAX_ALLOCATOR"):
        rt.allocator_environment({"CHINCHAX_ALLOCATOR": "jemalloc"}, tcmalloc=None, hugetlb=True)


SCRIPT = ("import os, sys; from launch.runtime_env import reexec_with_allocator, ENV_ALLOCATOR_SET; "
          "print(os.environ.get(ENV_ALLOCATOR_SET, 'none'), flush=True); reexec_with_allocator(['train'])")


@pytest.mark.skipif(not (rt.find_tcmalloc() or rt.glibc_has_hugetlb()) or sys.platform != "linux",
                    reason="no better allocator on this machine")
@pytest.mark.parametrize("switch, expected", [(None, 2), ("off", 1)])
def test_cli_reexecutes_itself_once_unless_switched_off(switch: str | None, expected: int) -> None:
    env = {k: v for k, v in os.environ.items()
           if k not in (rt.ENV_ALLOCATOR, rt.ENV_ALLOCATOR_SET, "LD_PRELOAD", "GLIBC_TUNABLES")}
    env["PYTHONPATH"] = str(REPO)
    if switch:
        env[rt.ENV_ALLOCATOR] = switch
    out = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True,
                         timeout=60).stdout.split()
    assert len(out) == expected and out[0] == "none"
    if expected == 2:
        assert out[1] in ("tcmalloc", "hugetlb")


def test_no_reexecution_for_quick_commands(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    monkeypatch.setattr(os, "execve", lambda *a: calls.append(a))
    monkeypatch.delenv(rt.ENV_ALLOCATOR_SET, raising=False)
    rt.reexec_with_allocator(["allocate", "--flops", "1e19"])
    rt.reexec_with_allocator(["--help"])
    assert calls == []


@pytest.mark.slow
def test_allocator_benchmark_runs_both_sides_at_toy_size(tmp_path: Path) -> None:
    out = tmp_path / "alloc.json"
    done = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "allocator.py"), "--rounds", "1", "--warmup", "1",
         "--steps", "2", "--repeats", "1", "--out", str(out), "budget.flops=3e10", "train.seq_len=64",
         "budget.global_batch=4", "optim.warmup_steps=1"], capture_output=True, text=True, timeout=600,
        env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == 0, done.stderr[-800:]
    import json

    report = json.loads(out.read_text())
    assert set(report["runs"]) == {"system", "better"}
    assert all(len(r) == 1 and r[0]["median_step_s"] > 0 for r in report["runs"].values())
    assert report["speedup"] > 0 and report["tokens_per_s"]["better"] > 0
