"""The performance benchmarks at their smallest, and the model's performance options.

* ``benchmarks/mfu.py`` and ``benchmarks/step_overhead.py`` run their ``test`` presets on one
  CPU device and write JSON with the keys the README table and the GPU session rely on.
* ``model.loss_chunk``: the chunked cross-entropy gives the plain loss and gradients (in the
  model: masked, with z-loss, tied head, vocabulary split over devices; as a function: an
  untied head) while the float32 logits never exist whole in the compiled program.
* ``model.attention: splash``: the Pallas kernel (run by Pallas's interpreter here) computes
  the same model as XLA attention; off TPU the model refuses it with a hint.
"""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from functools import partial
from pathlib import Path
from types import ModuleType
from typing import Any, Dict

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from chinchax.errors import ModelError
import models.transformer as transformer
from models.attention import splash_attention
from models.config import ModelConfig

from models.loss import chunked_token_losses, loss_fn, token_losses
from models.build import create_sharded_model
from models.sharding import MeshConfig, activation_sharding, make_mesh
from scaling.flops import executed_flops_per_token

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
FAST_BACKEND = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


def load_benchmark(name: str) -> ModuleType:
    """Import ``benchmarks/<name>.py`` (a script directory, not a package) once."""
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


# ------------------------------------------------------------------------ benchmarks


def test_mfu_benchmark_cpu_preset_writes_a_sane_report(tmp_path: Path) -> None:
    mfu = load_benchmark("mfu")
    out = tmp_path / "mfu.json"
    assert mfu.main(["--preset", "test", "--devices", "1", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["benchmark"] == "mfu" and report["preset"] == "test"
    assert report["device"]["platform"] == "cpu" and report["device"]["n_devices"] == 1
    assert report["software"]["jax"] == jax.__version__ and report["date"]
    assert len(report["host"]["load_average"]) == 3
    (result,) = report["results"]
    assert result["status"] == "ok"
    for key in ("compile_time_s", "step_time_s", "tokens_per_s", "achieved_flops_per_s",
                "achieved_flops_per_s_causal", "achieved_flops_per_s_full_square"):
        assert math.isfinite(result[key]) and result[key] > 0, key
    assert result["step_time_min_s"] <= result["step_time_s"]
    assert len(result["step_times_s"]) == report["plan"]["repeats"]
    # Throughput and FLOP/s follow from the step time and the shared counter.
    model = ModelConfig(**result["model"])
    assert result["tokens_per_s"] == pytest.approx(result["tokens_per_step"] / result["step_time_s"])
    # MFU's count is causal (MaxText's); the full square is reported beside it.
    assert result["achieved_flops_per_s"] == pytest.approx(
        result["tokens_per_s"] * executed_flops_per_token(model, result["seq_len"], causal=True))
    assert result["achieved_flops_per_s_causal"] == result["achieved_flops_per_s"]
    assert result["achieved_flops_per_s_full_square"] == pytest.approx(
        result["tokens_per_s"] * executed_flops_per_token(model, result["seq_len"]))
    assert result["achieved_flops_per_s_full_square"] > result["achieved_flops_per_s"]
    assert result["mfu"] is None and result["mfu_full_square"] is None  # no CPU peak on record
    assert result["state_donated"] and result["host_callbacks"] == 0
    assert result["compiled_memory"]["total"] > 0
    assert math.isfinite(result["loss_first"]) and math.isfinite(result["loss_last"])


def test_mfu_benchmark_rejects_unknown_names_with_a_hint() -> None:
    mfu = load_benchmark("mfu")
    with pytest.raises(mfu.BenchmarkError) as err:
        mfu.run_sweep("h100-sizes", shapes=["7b"])
    assert "125m" in err.value.hint
    with pytest.raises(mfu.BenchmarkError) as err:
        mfu.run_sweep("h100", variants=["fastest"])
    assert "bf16_head" in err.value.hint
    with pytest.raises(mfu.BenchmarkError):
        mfu.run_sweep("gpu-please")
    assert [s.name for s in mfu.PRESETS["h100-sizes"].shapes] == ["125m", "350m", "1b"]
    assert [s.name for s in mfu.PRESETS["h100"].shapes] == ["1b"]
    assert all(s.model.compute_dtype == "bfloat16" and s.seq_len == 2048
               for s in mfu.PRESETS["h100"].shapes + mfu.PRESETS["h100-sizes"].shapes)


@pytest.mark.slow
def test_mfu_gpu_variants_run_end_to_end_at_toy_size(tmp_path: Path) -> None:
    """``--preset h100``'s variants on CPU: each compiles, trains and reports its program."""
    mfu = load_benchmark("mfu")
    out = tmp_path / "mfu_toy.json"
    assert mfu.main(["--preset", "h100-toy", "--devices", "1", "--out", str(out)]) == 0
    results = {r["variant"]: r for r in json.loads(out.read_text())["results"]}
    assert list(results) == [v.name for v in mfu.PRESETS["h100"].variants]
    assert all(r["status"] == "ok" and math.isfinite(r["loss_last"]) for r in results.values())
    assert results["current"]["f32_vocab_dots"] > 0  # the float32 head backward, as before
    assert all(r["f32_vocab_dots"] == 0 for name, r in results.items() if name != "current")
    assert all(r["attention_custom_calls"] == {"forward": 0, "backward": 0}  # XLA attention
               for r in results.values())
    accum = results["remat_none_batch16_accum2"]
    assert accum["grad_accum_steps"] == 2 and accum["global_batch"] == 16
    assert not results["remat_none_no_scan"]["scan_layers"]


def test_step_overhead_compares_the_same_math_and_gives_a_finite_ratio(tmp_path: Path) -> None:
    overhead = load_benchmark("step_overhead")
    out = tmp_path / "overhead.json"
    assert overhead.main(["--preset", "test", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["benchmark"] == "step_overhead" and report["device"]["platform"] == "cpu"
    (result,) = report["results"]
    same = result["same_math"]
    assert same["loss_abs_diff"] < 1e-5 * abs(same["loss_ours"])
    assert same["params_max_abs_diff_after_one_update"] < 1e-5
    for side in ("ours", "plain"):
        assert result[side]["tokens_per_s"] > 0 and result[side]["compile_time_s"] > 0
    assert math.isfinite(result["ratio"]) and result["ratio"] > 0
    assert result["ratio"] == pytest.approx(
        result["ours"]["step_time_s"] / result["plain"]["step_time_s"])


# ------------------------------------------------------------------------ chunked cross-entropy

SMALL = ModelConfig(vocab_size=61, d_model=32, n_layers=1, n_heads=2, n_kv_heads=1, d_ff=48)


def batch_of(cfg: ModelConfig, batch: int, seq: int) -> Dict[str, jax.Array]:
    rng = np.random.default_rng(1)
    return {"inputs": jnp.asarray(rng.integers(0, cfg.vocab_size, (batch, seq)), jnp.int32),
            "targets": jnp.asarray(rng.integers(0, cfg.vocab_size, (batch, seq)), jnp.int32),
            "mask": jnp.asarray(rng.random((batch, seq)) < 0.7)}


def test_chunked_cross_entropy_never_holds_the_whole_logits() -> None:
    """Training-step memory: plain keeps [B, T, V] float32 logits (and their gradient);
    chunked keeps one chunk's.  Read from XLA's compiled memory analysis."""
    B, T, D, V = 2, 256, 16, 4096
    logits_bytes = B * T * V * 4
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((B, T, D)), jnp.float32)
    w = jnp.asarray(rng.standard_normal((D, V)) / 4, jnp.float32)
    targets = jnp.asarray(rng.integers(0, V, (B, T)), jnp.int32)

    def grad_program(losses: Any) -> Any:
        return jax.jit(jax.grad(lambda x, w: jnp.mean(losses(x, w)[0]), argnums=(0, 1)),
                       compiler_options=FAST_BACKEND).lower(x, w).compile()

    plain = grad_program(lambda x, w: token_losses(transformer.project_to_vocab(x, w), targets))
    chunked = grad_program(lambda x, w: chunked_token_losses(x, w, targets, chunk=16))
    plain_temp = plain.memory_analysis().temp_size_in_bytes
    chunked_temp = chunked.memory_analysis().temp_size_in_bytes
    assert plain_temp >= logits_bytes
    assert chunked_temp < logits_bytes / 4
    for got, want in zip(chunked(x, w), plain(x, w)):  # d/dx and d/dw
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)


def test_chunked_head_gradient_is_summed_in_float32_under_bfloat16_compute() -> None:
    """The model hands the loss its head as stored (float32), and each chunk casts it, so the
    head's gradient is summed over chunks in float32: with 64 chunks it is as accurate as the
    unchunked bfloat16 loss (a bfloat16 running sum would be several times worse)."""
    graphdef, state = nnx.split(nnx.eval_shape(lambda: transformer.Transformer(
        SMALL.replace(compute_dtype="bfloat16", loss_chunk=1), rngs=nnx.Rngs(0))))
    head = jax.eval_shape(lambda s: nnx.merge(graphdef, s).output_kernel(), state)
    assert head.dtype == jnp.float32
    B, T, D, V = 2, 64, 32, 512
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((B, T, D)), jnp.float32)
    w = jnp.asarray(rng.standard_normal((D, V)) / 6, jnp.float32)
    targets = jnp.asarray(rng.integers(0, V, (B, T)), jnp.int32)

    @partial(jax.jit, compiler_options=FAST_BACKEND)
    def head_grads(w: jax.Array) -> Any:
        def grad(losses: Any, x: jax.Array) -> jax.Array:
            return jax.grad(lambda w: jnp.mean(losses(x, w)[0]))(w)

        plain = lambda x, w: token_losses(transformer.project_to_vocab(x, w), targets)  # noqa: E731
        chunked = lambda x, w: chunked_token_losses(x, w, targets, chunk=1)  # noqa: E731
        x16 = x.astype(jnp.bfloat16)
        return grad(plain, x), grad(plain, x16), grad(chunked, x16)

    exact, plain16, chunked16 = head_grads(w)
    error = lambda g: float(jnp.linalg.norm(g - exact) / jnp.linalg.norm(exact))  # noqa: E731
    assert error(chunked16) < 1.5 * error(plain16) + 1e-4


def test_chunked_cross_entropy_equals_the_plain_loss_and_gradients_vocab_parallel() -> None:
    """The model's chunked loss (tied head: the embedding's gradient gathers both uses; mask;
    z-loss; vocabulary split over ``tensor``) against the plain loss of the same parameters."""
    cfg = SMALL.replace(vocab_size=64, loss_chunk=8, tie_embeddings=True)
    mesh_cfg = MeshConfig(data=4, fsdp=1, tensor=2)
    mesh = make_mesh(mesh_cfg, jax.devices()[:8])
    model = create_sharded_model(cfg, mesh, mesh_cfg.rules)
    graphdef, state = nnx.split(model)
    plain_graphdef, _ = nnx.split(
        nnx.eval_shape(lambda: transformer.Transformer(cfg.replace(loss_chunk=0), rngs=nnx.Rngs(0))))
    batch = batch_of(cfg, 4, 32)

    @partial(jax.jit, compiler_options=FAST_BACKEND)
    def both(state: nnx.State) -> Any:
        def value_and_grad(gd: nnx.GraphDef, vocab_parallel: bool) -> Any:
            return jax.value_and_grad(
                lambda s: loss_fn(nnx.merge(gd, s), batch, z_loss=1e-2,
                                  vocab_parallel=vocab_parallel), has_aux=True)(state)

        return value_and_grad(graphdef, True), value_and_grad(plain_graphdef, False)

    with activation_sharding(mesh, mesh_cfg.rules):
        compiled = both.lower(state).compile()
    ((loss, aux), grads), ((plain_loss, plain_aux), plain_grads) = compiled(state)
    assert "all-reduce" in compiled.as_text()  # the vocab-parallel loss's collectives
    np.testing.assert_allclose(loss, plain_loss, rtol=1e-6)
    np.testing.assert_allclose(aux["ce"], plain_aux["ce"], rtol=1e-6)
    assert aux["n_tokens"] == plain_aux["n_tokens"] == int(batch["mask"].sum())
    for (path, a), (_, b) in zip(nnx.to_flat_state(grads), nnx.to_flat_state(plain_grads)):
        np.testing.assert_allclose(a[...], b[...], rtol=1e-5, atol=1e-7, err_msg=str(path))


def test_loss_chunk_must_divide_the_sequence_and_be_non_negative() -> None:
    with pytest.raises(ModelError) as err:
        SMALL.replace(loss_chunk=-1)
    assert err.value.hint
    graphdef, state = nnx.split(nnx.eval_shape(
        lambda: transformer.Transformer(SMALL.replace(loss_chunk=5), rngs=nnx.Rngs(0))))
    batch = batch_of(SMALL, 1, 16)
    with pytest.raises(ModelError) as err:
        jax.eval_shape(lambda s: loss_fn(nnx.merge(graphdef, s), batch), state)
    assert "divide" in str(err.value) and "seq_len" in err.value.hint


# ------------------------------------------------------------------------ splash attention


def test_splash_attention_computes_the_same_model_as_xla_attention(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The kernel runs in Pallas's interpreter on CPU: exact, slow, so the shape is minimal
    (one layer, one sequence of 128, GQA with two query heads per kv head)."""
    cfg = SMALL.replace(d_model=32, n_heads=2, n_kv_heads=1)
    graphdef, state = nnx.split(transformer.Transformer(cfg, rngs=nnx.Rngs(0)))
    splash_graphdef, _ = nnx.split(
        nnx.eval_shape(lambda: transformer.Transformer(cfg.replace(attention="splash"),
                                                       rngs=nnx.Rngs(0))))
    batch = batch_of(cfg, 1, 128)
    monkeypatch.setattr(transformer, "backend_name", lambda: "tpu")

    @partial(jax.jit, compiler_options=FAST_BACKEND)
    def both(state: nnx.State) -> Any:
        def value_and_grad(gd: nnx.GraphDef) -> Any:
            return jax.value_and_grad(lambda s: loss_fn(nnx.merge(gd, s), batch)[0])(state)

        return value_and_grad(graphdef), value_and_grad(splash_graphdef)

    (loss, grads), (splash_loss, splash_grads) = both(state)
    np.testing.assert_allclose(splash_loss, loss, rtol=1e-5)
    for (path, a), (_, b) in zip(nnx.to_flat_state(splash_grads), nnx.to_flat_state(grads)):
        np.testing.assert_allclose(a[...], b[...], rtol=1e-4, atol=1e-6, err_msg=str(path))


def test_splash_attention_is_refused_off_tpu_and_needs_whole_tiles() -> None:
    model = transformer.Transformer(SMALL.replace(attention="splash"), rngs=nnx.Rngs(0))
    if jax.default_backend() != "tpu":
        with pytest.raises(ModelError) as err:
            jax.eval_shape(model, jnp.zeros((1, 128), jnp.int32))
        assert "TPU" in str(err.value) and "auto" in err.value.hint
    q = jnp.zeros((1, 100, 2, 16))
    with pytest.raises(ModelError) as err:
        splash_attention(q, q, q)
    assert "128" in str(err.value) and err.value.hint


def test_first_reaching_interpolates_the_crossing_in_log_x() -> None:
    """The shared curve reader of the CPT and HyperCloning benchmarks."""
    common = load_benchmark("common")
    x, loss = np.array([1e9, 1e10, 1e11]), np.array([3.0, 2.0, 1.0])
    assert common.first_reaching(x, loss, 1.5) == pytest.approx(10 ** 10.5)
    assert common.first_reaching(x, loss, 3.5) == 1e9   # already there at the first eval
    assert common.first_reaching(x, loss, 0.5) is None  # never reached



def test_mfu_benchmark_imports_without_the_data_stack() -> None:
    """A GPU image has jax, flax and optax only: the benchmark module must import there
    (the trainer's config is imported when a step is built)."""
    code = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('grain', 'array_record', 'tensorflow_datasets',"
        " 'tensorboardX'):\n"
        "            raise ImportError(name)\n"
        "sys.meta_path.insert(0, Block())\n"
        f"sys.path.insert(0, {str(BENCHMARKS)!r})\n"
        "import mfu\n"
        "assert mfu.PRESETS['h100'].variants\n"
    )
    import subprocess

    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=BENCHMARKS.parent, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
