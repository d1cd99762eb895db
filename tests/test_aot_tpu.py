"""Every TPU config fits the slice its header names, with 10% of HBM to spare.

Each ``configs/tpu_*.yaml`` names its topology in a ``chinchax compile ... --topology T``
header line.  With libtpu installed (the ``test`` extra brings it on Linux x86-64) the real
train step is compiled for that topology in a subprocess (libtpu stays out of this process)
and its per-device memory checked; without libtpu those tests skip and say how to install it.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from launch.aot import libtpu_location
from launch.cmd_compile import one_device_per_chip

ROOT = Path(__file__).resolve().parent.parent
TPU_CONFIGS = sorted(ROOT.glob("configs/tpu_*.yaml"))
HEADROOM = 0.10
_TOPOLOGY = re.compile(r"^#.*chinchax compile (\S+) --topology (\S+)", re.MULTILINE)


def named_topology(path: Path) -> str:
    match = _TOPOLOGY.search(path.read_text())
    assert match and match.group(1) == f"configs/{path.name}", f"{path.name} names no topology"
    return match.group(2)


def test_every_tpu_config_names_its_topology_and_selects_splash() -> None:
    assert {p.stem for p in TPU_CONFIGS} >= {"tpu_v4", "tpu_v5e", "tpu_v5p"}
    for path in TPU_CONFIGS:
        named_topology(path)
        assert yaml.safe_load(path.read_text())["model"]["attention"] == "splash", path.name


def test_two_core_chips_compile_as_one_device_per_chip() -> None:
    cores = [SimpleNamespace(id=i, core_on_chip=i % 2) for i in range(8)]
    assert [d.id for d in one_device_per_chip(cores)] == [0, 2, 4, 6]
    single = [SimpleNamespace(id=i) for i in range(4)]  # v5e: no core_on_chip to filter by
    assert one_device_per_chip(single) == single


@pytest.mark.slow
@pytest.mark.skipif(libtpu_location() is None,
                    reason='libtpu is not installed: pip install -e ".[test]" (Linux x86-64)')
@pytest.mark.parametrize("path", TPU_CONFIGS, ids=lambda p: p.stem)
def test_tpu_config_compiles_for_its_topology_with_headroom(path: Path, tmp_path: Path) -> None:
    out = tmp_path / f"aot_{path.stem}.json"
    command = [sys.executable, "-m", "launch.cli", "compile", str(path.relative_to(ROOT)),
               "--topology", named_topology(path), "--out", str(out)]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=900,
                          env={**os.environ, "JAX_PLATFORMS": ""})
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    memory = json.loads(out.read_text())["memory"]
    assert memory["fits"] and memory["hbm_fraction"] <= 1 - HEADROOM, memory
