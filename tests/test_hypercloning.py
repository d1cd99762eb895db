"""HyperCloning: a grown model computes the small model's logits, trains, and is reachable from
the command line and from a config's ``init: {grow_from, factor}``.

The small models are "trained-looking": every parameter drawn at random with its own gain,
norm scales away from 1 and biases away from 0, so that a rule that only holds for a fresh
initialisation (one that ignores a norm scale or a bias, say) fails.
"""

from __future__ import annotations

import functools
import math
from pathlib import Path
from typing import Any, Callable, Dict, Tuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from chinchax.errors import ChinchaxError, ModelError, TrainingError
from launch.cli import main as cli_main
from launch.config import load_experiment, load_run_config, resolve, run_config_to_yaml
from models.config import ModelConfig

from models.grow_shape import DEFAULT_NOISE_SCALE, grow_config, shrink_config
from models.hypercloning import copy_blocks, grow_params, param_name
from loss_helpers import cross_entropy
from models.sharding import DEFAULT_RULES, MeshConfig, make_mesh, state_shardings
from models.transformer import Transformer
from scaling.flops import train_flops_per_token
from training.checkpoint import CheckpointConfig, Checkpointer
from training.config import InitConfig, RunConfig, TrainConfig
from training.data import DataConfig, build_train_iterator
from training.grow import check_growth, initialise_state
from training.metrics import read_records
from training.state import initial_train_state
from training.trainer import train

FAST_BACKEND = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}
RULES = [list(rule) for rule in DEFAULT_RULES]
EXACT = 1e-4  # float32: max |wide logits - small logits|, symmetric variant
NOISY = 1e-3  # noisy variant: the noise cancels in a float sum, so rounding grows a little

SHAPES = {
    "mha-untied-scanned": ModelConfig(vocab_size=64, d_model=32, n_layers=2, n_heads=2, d_ff=64),
    "gqa-tied-scanned": ModelConfig(vocab_size=64, d_model=32, n_layers=2, n_heads=4,
                                    n_kv_heads=2, d_ff=48, tie_embeddings=True),
    "gqa-bias-unscanned": ModelConfig(vocab_size=64, d_model=32, n_layers=2, n_heads=4,
                                      n_kv_heads=1, d_ff=64, use_bias=True, scan_layers=False),
    "mha-tied-bias-gelu-headdim": ModelConfig(vocab_size=64, d_model=24, n_layers=1, n_heads=2,
                                              head_dim=8, d_ff=40, mlp="gelu", use_bias=True,
                                              tie_embeddings=True),
}
TRAINED = SHAPES["gqa-tied-scanned"]
RUN_SHAPE = TRAINED.replace(vocab_size=257)  # a run on bytes (the checkpoint and CLI tests)


@functools.lru_cache(maxsize=None)
def graph(cfg: ModelConfig) -> Tuple[nnx.GraphDef, nnx.State, nnx.State]:
    """Graph definition, abstract parameters and (empty) other state of ``cfg``'s model."""
    return nnx.split(nnx.eval_shape(lambda: Transformer(cfg, rngs=nnx.Rngs(0))), nnx.Param, ...)


def trained_looking(cfg: ModelConfig, seed: int = 0) -> nnx.State:
    """Parameters of ``cfg``'s tree drawn like a trained model's: kernels ~ N(0, 1/fan_in) with
    a random gain per tensor, norm scales around 1, biases around 0 (numpy: nothing compiles)."""
    rng = np.random.default_rng(seed)

    def draw(path: Any, leaf: jax.ShapeDtypeStruct) -> jax.Array:
        name = param_name(path)
        if name[-1] == "scale":
            value = 1.0 + 0.3 * rng.standard_normal(leaf.shape)
        elif name[-1] == "bias":
            value = 0.2 * rng.standard_normal(leaf.shape)
        else:
            fan_in = leaf.shape[-1] if name == ("embed",) else leaf.shape[-2]
            value = rng.uniform(0.5, 2.0) * rng.standard_normal(leaf.shape) / math.sqrt(fan_in)
        return jnp.asarray(value, leaf.dtype)

    return jax.tree_util.tree_map_with_path(draw, graph(cfg)[1])


@functools.lru_cache(maxsize=None)
def forward(cfg: ModelConfig) -> Callable[[Any, jax.Array], jax.Array]:
    """Jitted logits of ``cfg``'s model (one compile per shape for the whole file)."""
    graphdef, _, rest = graph(cfg)
    return jax.jit(lambda p, tokens: nnx.merge(graphdef, p, rest)(tokens),
                   compiler_options=FAST_BACKEND)


TX = optax.adamw(3e-3)


@functools.lru_cache(maxsize=None)
def train_step(cfg: ModelConfig) -> Callable:
    """Jitted ``(params, opt_state, batch) -> (params, opt_state, loss, grads)`` with AdamW."""
    graphdef, _, rest = graph(cfg)

    def loss(p: Any, batch: jax.Array) -> jax.Array:
        return cross_entropy(nnx.merge(graphdef, p, rest)(batch[:, :-1]), batch[:, 1:])[0]

    def step(p: Any, opt_state: Any, batch: jax.Array) -> Tuple[Any, Any, jax.Array, Any]:
        value, grads = jax.value_and_grad(loss)(p, batch)
        updates, opt_state = TX.update(grads, opt_state, p)
        return optax.apply_updates(p, updates), opt_state, value, grads

    return jax.jit(step, compiler_options=FAST_BACKEND)


def tokens(cfg: ModelConfig, batch: int = 2, seq: int = 12, seed: int = 7) -> jax.Array:
    return jnp.asarray(np.random.default_rng(seed).integers(0, cfg.vocab_size, (batch, seq)),
                       jnp.int32)


def max_diff(a: jax.Array, b: jax.Array) -> float:
    return float(np.max(np.abs(np.asarray(a) - np.asarray(b))))


def named(params: Any) -> Dict[Tuple[str, ...], np.ndarray]:
    """Leaves by name (a layer list stacked), as numpy, for looking at the copies."""
    out: Dict[Tuple[str, ...], list] = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        out.setdefault(param_name(path), []).append(np.asarray(leaf))
    return {k: v[0] if len(v) == 1 else np.stack(v) for k, v in out.items()}


# ------------------------------------------------------------------------ function preserved


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_the_grown_model_computes_the_small_models_logits(shape: str) -> None:
    cfg = SHAPES[shape]
    params = trained_looking(cfg)
    x = tokens(cfg)
    small_logits = forward(cfg)(params, x)
    assert float(jnp.std(small_logits)) > 0.5  # not a trivial (near-constant) function

    wide_cfg = grow_config(cfg, 2)
    for variant, bound in (("symmetric", EXACT), ("noisy", NOISY)):
        wide = grow_params(params, cfg, 2, variant=variant, rng=jax.random.key(1))
        assert jax.tree.structure(wide) == jax.tree.structure(graph(wide_cfg)[1])
        diff = max_diff(forward(wide_cfg)(wide, x), small_logits)
        assert diff < bound, (variant, diff)


def test_factor_three_and_the_grown_shape() -> None:
    cfg = SHAPES["gqa-tied-scanned"]
    wide_cfg = grow_config(cfg, 3)
    assert (wide_cfg.d_model, wide_cfg.d_ff, wide_cfg.n_heads, wide_cfg.kv_heads) == (96, 144, 12, 6)
    assert wide_cfg.resolved_head_dim == cfg.resolved_head_dim
    assert wide_cfg.n_heads // wide_cfg.kv_heads == cfg.n_heads // cfg.kv_heads  # GQA groups kept
    assert shrink_config(wide_cfg, 3) == cfg

    params = trained_looking(cfg, seed=1)
    x = tokens(cfg)
    wide = grow_params(params, cfg, 3, variant="noisy", rng=jax.random.key(2))
    assert max_diff(forward(wide_cfg)(wide, x), forward(cfg)(params, x)) < NOISY


def test_the_noise_cancels_blockwise_and_has_the_stated_scale() -> None:
    cfg = SHAPES["mha-untied-scanned"]
    params = trained_looking(cfg)
    small = named(params)
    noisy = named(grow_params(params, cfg, 2, variant="noisy", rng=jax.random.key(3)))
    symmetric = named(grow_params(params, cfg, 2))
    up = small[("blocks", "up", "kernel")]  # [L, D, F]
    blocks = copy_blocks(copy_blocks(noisy[("blocks", "up", "kernel")], 2, -1), 2, -3)  # [L,2,D,2,F]
    np.testing.assert_allclose(blocks.sum(axis=1), np.stack([up, up], axis=-2), atol=1e-5)
    eta = blocks - (up / 2)[:, None, :, None, :]
    measured = float(np.std(eta[0])) / float(np.std(up[0] / 2))
    assert abs(measured - DEFAULT_NOISE_SCALE) < 0.05, measured
    # the symmetric variant is plain tiling; embeddings unscaled; the untied head divided by n
    np.testing.assert_array_equal(symmetric[("embed",)], np.tile(small[("embed",)], (1, 2)))
    np.testing.assert_allclose(symmetric[("head", "kernel")],
                               np.tile(small[("head", "kernel")], (2, 1)) / 2)
    np.testing.assert_array_equal(noisy[("final_norm", "scale")],
                                  np.tile(small[("final_norm", "scale")], 2))


# ------------------------------------------------------------------------ training after growth


def test_noisy_copies_get_different_gradients_and_both_variants_train() -> None:
    cfg = TRAINED
    params = trained_looking(cfg)
    wide_cfg = grow_config(cfg, 2)
    step = train_step(wide_cfg)
    batch = tokens(cfg, batch=4, seq=16, seed=11)
    for variant in ("symmetric", "noisy"):
        wide = grow_params(params, cfg, 2, variant=variant, rng=jax.random.key(4))
        opt_state = TX.init(wide)
        losses = []
        for index in range(5):
            wide, opt_state, loss, grads = step(wide, opt_state, batch)
            losses.append(float(loss))
            if index:
                continue
            grads = named(grads)  # the first gradient: output copies of each kernel compared
            for name in (("blocks", "up", "kernel"), ("blocks", "q", "kernel"),
                         ("blocks", "down", "kernel"), ("embed",)):
                copies = copy_blocks(grads[name], 2, -1)
                gap = np.max(np.abs(copies[..., 0, :] - copies[..., 1, :])) / np.max(np.abs(copies))
                if variant == "symmetric":
                    assert gap < 1e-5, (name, gap)  # copies stay copies: the width is unused
                else:
                    assert gap > 1e-2, (name, gap)  # the noise makes the copies train apart
        assert all(math.isfinite(v) for v in losses)
        assert losses[-1] < losses[0] - 0.1, (variant, losses)


# ------------------------------------------------------------------------ meshes and checkpoints


def test_growing_onto_another_mesh_writes_the_target_shards() -> None:
    cfg = TRAINED
    params = trained_looking(cfg)
    mesh8 = make_mesh(MeshConfig(data=2, fsdp=2, tensor=2))
    mesh4 = make_mesh(MeshConfig(data=1, fsdp=2, tensor=2), devices=jax.devices()[4:])
    small = jax.device_put(params, state_shardings(graph(cfg)[1], mesh8, RULES))
    wide_cfg = grow_config(cfg, 2)
    targets = state_shardings(graph(wide_cfg)[1], mesh4, RULES)
    wide = grow_params(small, cfg, 2, variant="noisy", out_shardings=targets)
    for got, want in zip(jax.tree.leaves(wide), jax.tree.leaves(targets)):
        assert got.sharding.is_equivalent_to(want, got.ndim)
        assert got.sharding.device_set == set(jax.devices()[4:])
    q = named(graph(wide_cfg)[1])  # only names; the layout of q:
    assert ("blocks", "q", "kernel") in q
    q_kernel = wide["blocks"]["q"]["kernel"][...]
    assert q_kernel.sharding.spec[1:] == ("fsdp", "tensor")  # really split over both axes
    x = tokens(cfg)
    assert max_diff(forward(wide_cfg)(jax.device_get(wide), x), forward(cfg)(params, x)) < NOISY


def _source_run(tmp_path: Path, cfg: ModelConfig) -> Tuple[Path, RunConfig]:
    """A run directory as ``chinchax train`` leaves it (config.yaml and a checkpoint holding
    params, optimiser state and step), written from 8 devices, with trained-looking params."""
    run_dir = tmp_path / "small"
    run_cfg = RunConfig(
        name="small", run_dir=str(run_dir), model=cfg,
        train=TrainConfig(steps=1, global_batch=8, seq_len=16, log_every=1, eval_every=1,
                          eval_batches=1),
        data=DataConfig(source="synthetic", synthetic_documents=16, synthetic_document_length=512,
                        cache_dir=str(tmp_path / "cache")),
        mesh=MeshConfig(data=4, fsdp=2))  # 257 rows do not split over a tensor axis
    _, state, _ = initial_train_state(run_cfg, make_mesh(run_cfg.mesh))
    state["params"] = jax.device_put(trained_looking(cfg),
                                     jax.tree.map(lambda x: x.sharding, state["params"]))
    run_dir.mkdir()
    (run_dir / "config.yaml").write_text(run_config_to_yaml(run_cfg))
    with Checkpointer(run_dir / "checkpoints", CheckpointConfig(async_save=False)) as ckpt:
        ckpt.save(5, state, {"data": {}}, force=True)
    return run_dir, run_cfg


@pytest.fixture(scope="module")
def source_run(tmp_path_factory: pytest.TempPathFactory) -> Tuple[Path, RunConfig]:
    return _source_run(tmp_path_factory.mktemp("hypercloning"), RUN_SHAPE)


def test_a_config_grows_a_checkpoint_from_8_devices_onto_4(
        source_run: Tuple[Path, RunConfig], tmp_path: Path) -> None:
    run_dir, small_cfg = source_run
    wide_cfg = RunConfig(name="wide", run_dir=str(tmp_path / "wide"),
                         model=grow_config(small_cfg.model, 2), train=small_cfg.train,
                         data=small_cfg.data, mesh=MeshConfig(data=1, fsdp=4),
                         init=InitConfig(grow_from=str(run_dir), factor=2, variant="noisy"))
    mesh4 = make_mesh(wide_cfg.mesh, devices=jax.devices()[:4])
    _, state, _ = initial_train_state(wide_cfg, mesh4)
    fresh = state["params"]
    state, record = initialise_state(wide_cfg.init, state, wide_cfg.model)
    assert record["grow_from"] == str(run_dir) and record["step"] == 5
    assert record["factor"] == 2 and record["variant"] == "noisy"
    for got, want in zip(jax.tree.leaves(state["params"]), jax.tree.leaves(fresh)):
        assert got.sharding == want.sharding and got.shape == want.shape

    x = tokens(small_cfg.model)
    wide_logits = forward(wide_cfg.model)(jax.device_get(state["params"]), x)
    assert max_diff(wide_logits, forward(small_cfg.model)(trained_looking(small_cfg.model), x)) < NOISY


# ------------------------------------------------------------------------ command line


def test_chinchax_grow_writes_a_run_that_starts_at_the_small_models_loss(
        source_run: Tuple[Path, RunConfig], tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    run_dir, small_cfg = source_run
    out = tmp_path / "grown"
    code = cli_main(["grow", str(run_dir), "--factor", "2", "--out", str(out), "--variant",
                     "noisy", "--seed", "3", "--set", "train.steps=1", "--set", "mesh.data=2",
                     "--set", "mesh.fsdp=4"])
    assert code == 0
    assert "32 -> 64" in capsys.readouterr().out

    resolved = load_run_config(out / "config.yaml")
    assert resolved.model == grow_config(small_cfg.model, 2)
    assert resolved.init == InitConfig(grow_from=str(run_dir), factor=2, variant="noisy",
                                       noise_seed=3, noise_scale=DEFAULT_NOISE_SCALE)
    assert not resolved.prediction.enabled and resolved.seed == 3 and resolved.train.steps == 1
    assert resolved.data == small_cfg.data  # same data, same order (data.seed)
    assert train_flops_per_token(resolved.model, 16) > 2.5 * train_flops_per_token(small_cfg.model, 16)

    experiment = resolve(load_experiment(str(out / "experiment.yaml")))
    assert experiment == resolved
    summary = train(experiment)  # mesh data 2 x fsdp 4; the source wrote from data 4 x fsdp 2
    assert summary["init"]["grow_from"] == str(run_dir) and summary["init"]["factor"] == 2

    # the wide run's first loss is the small model's loss on that same first batch
    first = read_records(out, "train")[0]
    assert first["step"] == 1
    batch = next(build_train_iterator(experiment.data, seq_len=16, global_batch=8))
    logits = forward(small_cfg.model)(trained_looking(small_cfg.model), jnp.asarray(batch["inputs"]))
    small_loss = float(cross_entropy(logits, jnp.asarray(batch["targets"]))[0])
    assert abs(first["loss"] - small_loss) < 1e-3, (first["loss"], small_loss)


# ------------------------------------------------------------------------ errors


@pytest.mark.parametrize("factor, words", [(2.5, "not an integer"), (1, "below 2"),
                                           (True, "not an integer"), ("2", "not an integer")])
def test_bad_factors_are_one_error(factor: Any, words: str) -> None:
    with pytest.raises(ModelError, match=words) as caught:
        grow_config(SHAPES["mha-untied-scanned"], factor)
    assert caught.value.hint


def test_bad_variants_and_mismatched_parameters_are_errors() -> None:
    cfg = SHAPES["mha-untied-scanned"]
    params = trained_looking(cfg)
    with pytest.raises(ModelError, match="variant"):
        grow_params(params, cfg, 2, variant="diagonal")
    with pytest.raises(ModelError, match="noise scale"):
        grow_params(params, cfg, 2, variant="noisy", noise_scale=-1.0)
    with pytest.raises(ModelError, match="shape") as caught:
        grow_params(params, cfg.replace(d_ff=32), 2)  # parameters of another model
    assert "config.yaml" in caught.value.hint
    with pytest.raises(ModelError, match="not part of this model"):
        grow_params(params, cfg.replace(tie_embeddings=True), 2)
    with pytest.raises(ModelError, match="cannot be 2 copies"):
        shrink_config(ModelConfig(d_model=48, n_heads=3, d_ff=96), 2)


def test_a_config_that_is_not_the_grown_shape_is_one_error(
        source_run: Tuple[Path, RunConfig]) -> None:
    run_dir, small_cfg = source_run
    wrong = grow_config(small_cfg.model, 2).replace(n_heads=4, n_kv_heads=4, head_dim=16)
    with pytest.raises(TrainingError, match="n_heads: expected 8, got 4") as caught:
        check_growth(InitConfig(grow_from=str(run_dir), factor=2), wrong)
    assert "chinchax grow" in caught.value.hint
    with pytest.raises(TrainingError, match="init.grow_from=.*does not exist"):
        check_growth(InitConfig(grow_from=str(run_dir / "missing"), factor=2), wrong)
    with pytest.raises(ChinchaxError, match="factor"):
        InitConfig(grow_from=str(run_dir))  # a factor is required
    with pytest.raises(ChinchaxError, match="variant"):
        InitConfig(grow_from=str(run_dir), factor=2, variant="diagonal")


def test_a_checkpoint_that_does_not_match_its_config_is_one_error(
        source_run: Tuple[Path, RunConfig], tmp_path: Path) -> None:
    run_dir, small_cfg = source_run
    lying = tmp_path / "lying"
    lying.mkdir()
    (lying / "checkpoints").symlink_to(run_dir / "checkpoints")
    other = small_cfg.model.replace(d_ff=64)
    edited = RunConfig(**{**small_cfg.__dict__, "model": other, "run_dir": str(lying)})
    (lying / "config.yaml").write_text(run_config_to_yaml(edited))
    with pytest.raises(TrainingError, match="stores 'params/blocks/down/kernel/value' with shape") as caught:
        check_growth(InitConfig(grow_from=str(lying), factor=2), grow_config(other, 2))
    assert "config.yaml" in caught.value.hint


def test_cli_errors_are_one_line_with_a_hint(source_run: Tuple[Path, RunConfig], tmp_path: Path,
                                             capsys: pytest.CaptureFixture) -> None:
    run_dir, _ = source_run
    new = str(tmp_path / "new")
    cases = [
        (["grow", str(run_dir), "--factor", "1.5", "--out", new], "not an integer"),
        (["grow", str(run_dir), "--factor", "1", "--out", new], "below 2"),
        (["grow", str(tmp_path), "--factor", "2", "--out", new], "no config.yaml"),
        (["grow", str(run_dir), "--factor", "2", "--out", str(run_dir)], "already holds a run"),
        (["grow", str(run_dir), "--factor", "2", "--out", new, "--set", "model.d_model=48"],
         "d_model: expected 64, got 48"),
    ]
    for argv, words in cases:
        assert cli_main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 2 and words in err[0] and err[1].startswith("  hint:"), err
    assert not Path(new).exists()  # nothing is written when the request is refused
