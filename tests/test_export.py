"""Hugging Face export: a real Llama loader reads the folder and computes our logits."""

from __future__ import annotations

import json
from pathlib import Path

import jax
import numpy as np
import pytest
from flax import nnx

from chinchax.errors import ConfigError
from models.config import ModelConfig
from models.transformer import Transformer
from training.export_hf import check_llama, export_llama
from training.tokenizer import ByteTokenizer


def perturbed_model(cfg: ModelConfig, seed: int = 0) -> Transformer:
    """A model whose every parameter (norm scales included) is distinct, so a swapped or
    mis-transposed weight changes the logits."""
    model = Transformer(cfg, rngs=nnx.Rngs(seed))
    rng = np.random.default_rng(seed)
    state = nnx.state(model, nnx.Param)
    nnx.update(model, jax.tree.map(
        lambda x: x + 0.2 * rng.standard_normal(x.shape).astype(x.dtype), state))
    return model


def hf_logits(folder: Path, tokens: np.ndarray) -> np.ndarray:
    from transformers import FlaxLlamaForCausalLM  # transformers 4.x: Llama in Flax, no torch

    return np.asarray(FlaxLlamaForCausalLM.from_pretrained(str(folder))(tokens).logits)


@pytest.mark.parametrize("tie,scan", [(False, True), (True, False)], ids=["untied-scanned", "tied-looped"])
def test_hf_llama_loader_reproduces_our_logits(tmp_path: Path, tie: bool, scan: bool) -> None:
    cfg = ModelConfig(vocab_size=260, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=64,
                      tie_embeddings=tie, scan_layers=scan, norm_eps=1e-5)
    model = perturbed_model(cfg)
    info = export_llama(model, tmp_path / "hf", data_tokenizer="byte", max_positions=32)
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert (config["num_key_value_heads"], config["tie_word_embeddings"]) == (2, tie)
    assert "byte-level" in info["tokenizer"]
    tokens = np.random.default_rng(1).integers(0, 257, (2, 24))
    ours = np.asarray(model(tokens))
    np.testing.assert_allclose(hf_logits(tmp_path / "hf", tokens), ours, atol=1e-4, rtol=0)


def test_exported_byte_tokenizer_gives_our_ids(tmp_path: Path) -> None:
    from transformers import PreTrainedTokenizerFast

    cfg = ModelConfig(vocab_size=257, d_model=16, n_layers=1, n_heads=2, d_ff=32)
    export_llama(Transformer(cfg, rngs=nnx.Rngs(0)), tmp_path, data_tokenizer="byte",
                 max_positions=16)
    hf = PreTrainedTokenizerFast.from_pretrained(str(tmp_path))
    text = "héllo wörld\n\tdef f(x): return x  # ✓"
    ids = ByteTokenizer().encode(text).tolist()
    assert hf(text)["input_ids"] == ids
    assert hf.decode(ids) == text
    assert hf.eos_token_id == ByteTokenizer.eod_id


def test_export_refuses_models_that_are_not_llama() -> None:
    with pytest.raises(ConfigError, match="SwiGLU"):
        check_llama(ModelConfig(mlp="gelu"))
    with pytest.raises(ConfigError, match="biases"):
        check_llama(ModelConfig(use_bias=True))
