"""A trained run as a Hugging Face Llama folder, since the decoder is exactly Llama's function.
Our half-split RoPE is HF's ``rotate_half``, so q/k need no permutation; kernels are ``[in, out]``
here, ``[out, in]`` there.  ``lm_head.weight`` is written even when tied: Flax loaders need it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Optional

import numpy as np
from flax import nnx

from chinchax.errors import ConfigError
from models.config import ModelConfig
from models.transformer import Transformer
from training.tokenizer import BYTE_TOKENIZER, Tokenizer, load_tokenizer

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
INFO_NAME = "chinchax_export.json"
EOD_TOKEN = "<eod>"  # the byte tokenizer's end-of-document id (256)
# Llama name -> (our module, transpose): per layer, under ``model.layers.<i>.``
_LAYER_WEIGHTS = {
    "input_layernorm.weight": ("attn_norm", "scale", False),
    "self_attn.q_proj.weight": ("q", "kernel", True),
    "self_attn.k_proj.weight": ("k", "kernel", True),
    "self_attn.v_proj.weight": ("v", "kernel", True),
    "self_attn.o_proj.weight": ("o", "kernel", True),
    "post_attention_layernorm.weight": ("mlp_norm", "scale", False),
    "mlp.gate_proj.weight": ("gate", "kernel", True),
    "mlp.up_proj.weight": ("up", "kernel", True),
    "mlp.down_proj.weight": ("down", "kernel", True),
}


def check_llama(cfg: ModelConfig) -> None:
    """Refuse a GELU MLP or biases before anything is written."""
    if cfg.mlp != "swiglu":
        raise ConfigError(f"model.mlp={cfg.mlp!r} has no Llama equivalent (Llama uses SwiGLU)",
                          hint="only runs with model.mlp=swiglu export as Llama")
    if cfg.use_bias:
        raise ConfigError("model.use_bias=true: Llama's projections have no biases",
                          hint="only runs with model.use_bias=false export as Llama")


def llama_config(cfg: ModelConfig, *, max_positions: int, tokenizer: Tokenizer) -> dict[str, Any]:
    """``config.json`` of the equivalent ``LlamaForCausalLM``."""
    return {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "vocab_size": cfg.vocab_size, "hidden_size": cfg.d_model,
        "intermediate_size": cfg.d_ff, "num_hidden_layers": cfg.n_layers,
        "num_attention_heads": cfg.n_heads, "num_key_value_heads": cfg.kv_heads,
        "head_dim": cfg.resolved_head_dim, "hidden_act": "silu",
        "max_position_embeddings": max_positions, "rms_norm_eps": cfg.norm_eps,
        "rope_theta": cfg.rope_theta, "rope_scaling": None,
        "tie_word_embeddings": cfg.tie_embeddings, "attention_bias": False, "mlp_bias": False,
        "attention_dropout": 0.0, "initializer_range": 0.02, "pretraining_tp": 1,
        "use_cache": True, "torch_dtype": "float32",
        "bos_token_id": None, "eos_token_id": tokenizer.eod_id, "pad_token_id": None,
    }


def _layers(blocks: Any, cfg: ModelConfig) -> list[dict[str, Any]]:
    """Per-layer ``{module: {param: array}}``: slices of the stacked blocks, or the list."""
    if cfg.scan_layers:
        return [{m: {p: v[i] for p, v in ps.items()} for m, ps in blocks.items()}
                for i in range(cfg.n_layers)]
    return [blocks[i] for i in range(cfg.n_layers)]


def llama_tensors(model: Transformer) -> dict[str, np.ndarray]:
    """Under Llama's names and ``[out, in]`` layout, float32."""
    cfg = model.cfg
    check_llama(cfg)
    params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    host = lambda x: np.ascontiguousarray(np.asarray(x, dtype=np.float32))  # noqa: E731
    embed = host(params["embed"])
    tensors = {"model.embed_tokens.weight": embed, "model.norm.weight": host(params["final_norm"]["scale"]),
               "lm_head.weight": embed.copy() if cfg.tie_embeddings else host(params["head"]["kernel"].T)}
    for i, layer in enumerate(_layers(params["blocks"], cfg)):
        for name, (module, param, transpose) in _LAYER_WEIGHTS.items():
            value = host(layer[module][param])
            tensors[f"model.layers.{i}.{name}"] = host(value.T) if transpose else value
    return tensors


def write_byte_tokenizer(out: Path, *, eod_id: int) -> None:
    """A BPE with no merges and byte fallback: byte ``b`` is the token ``<0xNN>`` with id ``b``,
    so ids match ours exactly."""
    try:
        from tokenizers import Tokenizer as HFTokenizer, decoders, models
    except ImportError as error:
        raise ConfigError("writing the byte tokenizer needs the tokenizers package",
                          hint="pip install 'chinchax[export]'") from error
    vocab = {f"<0x{b:02X}>": b for b in range(256)}
    vocab[EOD_TOKEN] = eod_id
    hf = HFTokenizer(models.BPE(vocab=vocab, merges=[], byte_fallback=True))
    hf.add_special_tokens([EOD_TOKEN])
    hf.decoder = decoders.Sequence([decoders.ByteFallback(), decoders.Fuse()])
    hf.save(str(out / "tokenizer.json"))
    (out / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": EOD_TOKEN,
         "clean_up_tokenization_spaces": False}, indent=2) + "\n")


def write_tokenizer(spec: str, tokenizer: Tokenizer, out: Path) -> str:
    """Returns a line saying what was written."""
    if spec == BYTE_TOKENIZER:
        write_byte_tokenizer(out, eod_id=tokenizer.eod_id)
        return (f"byte-level tokenizer.json: ids 0-255 are the UTF-8 bytes, {tokenizer.eod_id} is "
                f"{EOD_TOKEN} (end of document)")
    source = Path(spec).expanduser()
    if source.is_dir():
        copied = [f.name for f in sorted(source.iterdir()) if f.is_file()
                  and (f.name.startswith(("tokenizer", "special_tokens")) or f.suffix == ".model")]
        for name in copied:
            shutil.copy2(source / name, out / name)
        return f"copied {', '.join(copied)} from {source}"
    if source.suffix == ".json":
        shutil.copy2(source, out / "tokenizer.json")
        return f"tokenizer.json copied from {source}"
    shutil.copy2(source, out / "tokenizer.model")
    (out / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "LlamaTokenizer", "add_bos_token": False, "add_eos_token": False,
         "legacy": False}, indent=2) + "\n")
    return f"SentencePiece model copied from {source} as tokenizer.model"


def export_llama(model: Transformer, out: Path, *, data_tokenizer: str, max_positions: int,
                 source: Optional[dict[str, Any]] = None) -> dict[str, Any]:
    """Returns what was written (also ``chinchax_export.json``).  Weights carry ``format: pt``
    metadata, which ``FlaxLlamaForCausalLM`` also converts without torch."""
    from safetensors.numpy import save_file

    check_llama(model.cfg)
    tokenizer = load_tokenizer(data_tokenizer)
    out.mkdir(parents=True, exist_ok=True)
    config = llama_config(model.cfg, max_positions=max_positions, tokenizer=tokenizer)
    (out / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n")
    save_file(llama_tensors(model), str(out / WEIGHTS_NAME), metadata={"format": "pt"})
    info = {"format": "hf-llama", "files": [CONFIG_NAME, WEIGHTS_NAME],
            "tokenizer": write_tokenizer(data_tokenizer, tokenizer, out), **(source or {})}
    (out / INFO_NAME).write_text(json.dumps(info, indent=2) + "\n")
    return info
