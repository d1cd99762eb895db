"""``chinchax sample`` and ``chinchax export`` on a run trained by the normal trainer."""

from __future__ import annotations

import json
from pathlib import Path

import jax
import numpy as np
import pytest

from launch.cli import main
from launch.config import load_experiment, load_run_config, resolve
from training.trained import load_trained_model
from training.trainer import train


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer byte-level model trained for 6 steps with the normal trainer."""
    tmp = tmp_path_factory.mktemp("sample")
    exp = {
        "name": "tiny", "run_dir": str(tmp / "run"),
        "model": {"vocab_size": 260, "d_model": 32, "n_layers": 2, "n_heads": 4, "n_kv_heads": 2,
                  "d_ff": 64},
        "data": {"source": "synthetic", "cache_dir": str(tmp / "cache"),
                 "synthetic_documents": 32, "synthetic_document_length": 512},
        "train": {"steps": 6, "global_batch": 8, "seq_len": 32, "eval_every": 6, "eval_batches": 1},
        "optim": {"learning_rate": 1e-2, "warmup_steps": 1},
        "checkpoint": {"every_steps": 3},
    }
    train(resolve(load_experiment(exp)))
    return tmp / "run"


def _sample(run: Path, capsys: pytest.CaptureFixture, *flags: str) -> str:
    assert main(["sample", str(run), "--prompt", "def ", "--max-tokens", "12", *flags]) == 0
    return capsys.readouterr().out


def test_cli_sample_is_deterministic_under_a_seed(tiny_run: Path,
                                                  capsys: pytest.CaptureFixture) -> None:
    first = _sample(tiny_run, capsys, "--seed", "1", "--top-p", "0.95")
    assert first.startswith("def ")
    assert _sample(tiny_run, capsys, "--seed", "1", "--top-p", "0.95") == first
    greedy = _sample(tiny_run, capsys, "--temperature", "0", "--seed", "1")
    assert _sample(tiny_run, capsys, "--temperature", "0", "--seed", "2") == greedy
    assert main(["sample", str(tiny_run), "--max-tokens", "4", "--step", "3"]) == 0
    assert "step 3" in capsys.readouterr().err


def test_cli_sample_refuses_a_folder_that_is_not_a_run(tmp_path: Path,
                                                       capsys: pytest.CaptureFixture) -> None:
    assert main(["sample", str(tmp_path), "--prompt", "x"]) == 2
    assert "config.yaml" in capsys.readouterr().err


def test_cli_export_writes_a_folder_a_llama_loader_reads(tiny_run: Path, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture) -> None:
    from transformers import FlaxLlamaForCausalLM

    out = tmp_path / "hf"
    assert main(["export", str(tiny_run), "--format", "hf", str(out)]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["step"] == 6 and "byte-level" in printed["tokenizer"]
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {p.name for p in out.iterdir()}
    tokens = np.arange(40, 72).reshape(2, 16)
    model = load_trained_model(load_run_config(tiny_run / "config.yaml"), run_dir=tiny_run).model
    np.testing.assert_allclose(FlaxLlamaForCausalLM.from_pretrained(str(out))(tokens).logits,
                               model(tokens), atol=1e-4, rtol=0)
    assert main(["export", str(tiny_run), str(out)]) == 2  # never overwrites an export
    assert "not empty" in capsys.readouterr().err


def test_sampling_sharded_over_fsdp_and_tensor_gives_the_same_text(tiny_run: Path) -> None:
    from models.decode import SamplingConfig
    from models.sharding import MeshConfig, make_mesh
    from training.trained import complete

    cfg = load_run_config(tiny_run / "config.yaml")
    sampling = SamplingConfig(max_tokens=10, temperature=0.8, top_p=0.9, seed=5)
    texts = []
    for mesh_cfg in (MeshConfig(data=1, fsdp=1, tensor=1), MeshConfig(data=2, fsdp=2, tensor=2)):
        mesh = make_mesh(mesh_cfg, jax.devices()[:mesh_cfg.data * mesh_cfg.fsdp * mesh_cfg.tensor])
        trained = load_trained_model(cfg, run_dir=tiny_run, mesh=mesh)
        embed = trained.model.embed[...]
        texts.append(complete(trained, cfg, "def ", sampling))
    assert len(embed.sharding.device_set) == 8 and not embed.sharding.is_fully_replicated
    assert texts[0] == texts[1]


def test_plain_orbax_restores_the_parameters(tiny_run: Path) -> None:
    """The README's recipe: a checkpoint read with orbax alone, onto one device."""
    import orbax.checkpoint as ocp

    handlers = {"state": ocp.StandardCheckpointHandler(), "extra": ocp.JsonCheckpointHandler()}
    with ocp.CheckpointManager((tiny_run / "checkpoints").resolve(), item_handlers=handlers) as manager:
        step = manager.latest_step()
        stored = manager.item_metadata(step)["state"]  # shapes and dtypes only
        here = jax.sharding.SingleDeviceSharding(jax.devices()[0])
        target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=here), stored)
        restored = manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(target), extra=ocp.args.JsonRestore()))
    params = restored["state"]["params"]
    model = load_trained_model(load_run_config(tiny_run / "config.yaml"), run_dir=tiny_run).model
    assert step == 6
    np.testing.assert_array_equal(params["embed"]["value"], model.embed[...])
    np.testing.assert_array_equal(params["blocks"]["q"]["kernel"]["value"], model.blocks.q.kernel[...])


def test_a_mesh_larger_than_this_machine_falls_back_to_data_parallel(tiny_run: Path) -> None:
    import dataclasses

    from models.sharding import MeshConfig
    from training.trained import run_mesh

    cfg = load_run_config(tiny_run / "config.yaml")
    pod = dataclasses.replace(cfg, mesh=MeshConfig(data=1, fsdp=16, tensor=2))
    assert dict(run_mesh(pod).shape) == {"data": 8, "fsdp": 1, "tensor": 1}
    fits = dataclasses.replace(cfg, mesh=MeshConfig(data=2, fsdp=2, tensor=2))
    assert dict(run_mesh(fits).shape) == {"data": 2, "fsdp": 2, "tensor": 2}  # kept as it is
