"""Test set-up: 8 fake CPU devices for sharding tests, set before JAX is imported anywhere."""

from __future__ import annotations

import os

# Tests are dominated by compilation: cheaper XLA CPU backend passes cut their time by about
# a third without changing results.
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "")
    + " --xla_force_host_platform_device_count=8"
    + " --xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# Many tests start the same tiny trainer in fresh processes (faults, resume, CLI): one
# persistent compilation cache for the session lets each program compile once.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    import tempfile

    os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="chinchax-jax-cache-")
    os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0.2"

from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
ANCHORS = REPO_ROOT / "tests" / "data" / "anchors"  # copied from the papers; sources in its README


@pytest.fixture(scope="session")
def anchors_dir() -> Path:
    """The published reference tables (Chinchilla, Epoch, Zheng) shipped with the tests."""
    return ANCHORS
