"""Tokenizers: the byte default round-trips any text; SentencePiece is optional and says so."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from chinchax.errors import ChinchaxError, DataError
from training.tokenizer import ByteTokenizer, load_tokenizer


def test_byte_tokenizer_is_the_default_with_one_extra_id_for_end_of_document() -> None:
    tokenizer = load_tokenizer("byte")
    assert isinstance(tokenizer, ByteTokenizer)
    assert tokenizer.vocab_size == 257
    assert tokenizer.eod_id == 256 == tokenizer.vocab_size - 1


@pytest.mark.parametrize("text", ["def f(x):\n    return x * 2\n", "naïve café — 東京 🚀", ""])
def test_byte_tokenizer_round_trips_text_one_id_per_utf8_byte(text: str) -> None:
    tokenizer = ByteTokenizer()
    ids = tokenizer.encode(text)
    assert ids.dtype == np.int32
    assert ids.tolist() == list(text.encode("utf-8"))
    assert tokenizer.decode(ids) == text
    assert tokenizer.encode(text.encode("utf-8")).tolist() == ids.tolist()  # bytes in, same ids


def test_byte_tokenizer_keeps_invalid_utf8_bytes_and_decode_skips_separators() -> None:
    tokenizer = ByteTokenizer()
    raw = b"ok \xff\xfe end"
    ids = tokenizer.encode(raw)
    assert ids.tolist() == list(raw)
    with_separator = np.concatenate(
        [tokenizer.encode("ab"), [tokenizer.eod_id], tokenizer.encode("cd")]
    )
    assert tokenizer.decode(with_separator) == "abcd"


def test_missing_sentencepiece_model_file_is_a_data_error_with_a_hint(tmp_path: Path) -> None:
    with pytest.raises(DataError) as caught:
        load_tokenizer(str(tmp_path / "absent.model"))
    assert isinstance(caught.value, ChinchaxError)
    assert "absent.model" in str(caught.value) and "\n" not in str(caught.value)
    assert "byte" in caught.value.hint


def test_sentencepiece_not_installed_tells_how_to_install_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = tmp_path / "tok.model"
    model.write_bytes(b"not really a model")
    monkeypatch.setitem(sys.modules, "sentencepiece", None)  # makes `import sentencepiece` fail
    with pytest.raises(DataError) as caught:
        load_tokenizer(str(model))
    assert "pip install sentencepiece" in caught.value.hint


def test_sentencepiece_model_encodes_decodes_and_reserves_an_end_of_document_id(
    tmp_path: Path,
) -> None:
    spm = pytest.importorskip("sentencepiece")
    corpus = tmp_path / "corpus.txt"
    lines = [f"the quick brown fox {i} jumps over the lazy dog number {i * 7}" for i in range(300)]
    corpus.write_text("\n".join(lines))
    prefix = tmp_path / "tok"
    spm.SentencePieceTrainer.train(
        input=str(corpus), model_prefix=str(prefix), vocab_size=64, model_type="bpe", minloglevel=2
    )
    tokenizer = load_tokenizer(str(prefix) + ".model")
    assert tokenizer.vocab_size == 64
    assert 0 <= tokenizer.eod_id < tokenizer.vocab_size
    ids = tokenizer.encode("the lazy dog")
    assert ids.dtype == np.int32 and ids.size > 0 and (ids < tokenizer.vocab_size).all()
    assert tokenizer.eod_id not in ids.tolist()
    assert tokenizer.decode(list(ids) + [tokenizer.eod_id]) == "the lazy dog"
    assert tokenizer.fingerprint.startswith("spm-") and tokenizer.fingerprint != "byte"


def _train_hf_tokenizer(folder: Path, eos: str | None) -> Path:
    """A small BPE ``tokenizer.json`` trained here (nothing downloads)."""
    tokenizers = pytest.importorskip("tokenizers")
    model = tokenizers.Tokenizer(tokenizers.models.BPE(unk_token="<unk>"))
    model.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    model.decoder = tokenizers.decoders.ByteLevel()
    specials = ["<unk>"] + ([eos] if eos else [])
    trainer = tokenizers.trainers.BpeTrainer(vocab_size=300, special_tokens=specials,
                                             initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet())
    lines = [f"the quick brown fox {i} jumps over the lazy dog" for i in range(200)]
    model.train_from_iterator(lines, trainer=trainer)
    folder.mkdir(parents=True, exist_ok=True)
    model.save(str(folder / "tokenizer.json"))
    return folder / "tokenizer.json"


def test_tokenizer_json_encodes_decodes_and_adds_an_end_of_document_id(tmp_path: Path) -> None:
    path = _train_hf_tokenizer(tmp_path / "plain", eos=None)
    tokenizer = load_tokenizer(str(path))
    assert tokenizer.eod_id == tokenizer.vocab_size - 1  # no end token in the vocabulary: one more id
    ids = tokenizer.encode("the lazy dog")
    assert ids.dtype == np.int32 and 0 < ids.size < len("the lazy dog")
    assert tokenizer.decode(list(ids) + [tokenizer.eod_id]) == "the lazy dog"
    assert tokenizer.fingerprint.startswith("hf-")


def test_hugging_face_folder_uses_its_eos_token(tmp_path: Path) -> None:
    path = _train_hf_tokenizer(tmp_path / "folder", eos="</s>")
    (path.parent / "tokenizer_config.json").write_text('{"eos_token": {"content": "</s>"}}')
    tokenizer = load_tokenizer(str(path.parent))
    assert tokenizer.eod_id < tokenizer.vocab_size
    assert tokenizer.decode([tokenizer.eod_id]) == ""
    assert tokenizer.fingerprint == load_tokenizer(str(path)).fingerprint


def test_a_folder_without_a_tokenizer_is_a_data_error_with_a_hint(tmp_path: Path) -> None:
    with pytest.raises(DataError) as caught:
        load_tokenizer(str(tmp_path))
    assert "tokenizer.json" in str(caught.value) and "byte" in caught.value.hint
