"""Bytes by default (no file needed, and nats per token are nats per byte; 256 ends a document);
SentencePiece, ``tokenizer.json`` or a Hugging Face folder when named."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Optional, Protocol, Sequence, Union

import numpy as np

from chinchax.errors import DataError


BYTE_TOKENIZER = "byte"
TOKENIZER_KINDS = "'byte', a SentencePiece .model file, a tokenizer.json, or a Hugging Face tokenizer folder"
# End-of-document candidates when a tokenizer.json has no tokenizer_config.json beside it.
EOD_TOKENS = ("</s>", "<|endoftext|>", "<|end_of_text|>", "<eos>", "[SEP]")

Text = Union[str, bytes]


class Tokenizer(Protocol):
    vocab_size: int
    eod_id: int
    fingerprint: str  # identifies the mapping text -> ids, for cache keys

    def encode(self, text: Text) -> np.ndarray:
        """1-D int32 ids, without the end-of-document id."""
        ...

    def decode(self, ids: Sequence[int]) -> str:
        """End-of-document ids are dropped."""
        ...


class ByteTokenizer:
    vocab_size: int = 257
    eod_id: int = 256
    fingerprint: str = "byte"

    def encode(self, text: Text) -> np.ndarray:
        data = text.encode("utf-8") if isinstance(text, str) else bytes(text)
        return np.frombuffer(data, dtype=np.uint8).astype(np.int32)

    def decode(self, ids: Sequence[int]) -> str:
        kept = [int(i) for i in ids if 0 <= int(i) < 256]
        return bytes(kept).decode("utf-8", errors="replace")

    def __repr__(self) -> str:
        return "ByteTokenizer(vocab_size=257, eod_id=256)"


class SentencePieceTokenizer:
    """End-of-document is ``</s>``, or one extra id after the pieces when the model has none."""

    def __init__(self, model_path: str) -> None:
        path = Path(model_path).expanduser()
        if not path.is_file():
            raise DataError(
                f"tokenizer model file {str(path)!r} does not exist",
                hint="set data.tokenizer to 'byte' or to the path of a SentencePiece .model file",
            )
        try:
            import sentencepiece  # noqa: PLC0415 -- optional dependency, only for this path
        except ImportError as exc:
            raise DataError(
                "the tokenizer is a SentencePiece model but the sentencepiece package is not installed",
                hint="pip install 'chinchax[spm]' (or pip install sentencepiece, or set data.tokenizer=byte)",
            ) from exc
        try:
            self._processor = sentencepiece.SentencePieceProcessor(model_file=str(path))
        except Exception as exc:  # sentencepiece raises bare RuntimeError/OSError
            raise DataError(
                f"cannot load SentencePiece model {str(path)!r}: {exc}",
                hint="point data.tokenizer at a .model file written by spm_train",
            ) from exc
        pieces = int(self._processor.get_piece_size())
        eos = int(self._processor.eos_id())
        self.eod_id = eos if eos >= 0 else pieces
        self.vocab_size = pieces if eos >= 0 else pieces + 1
        digest = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
        self.fingerprint = f"spm-{digest}"
        self.path = str(path)

    def encode(self, text: Text) -> np.ndarray:
        string = text.decode("utf-8", errors="replace") if isinstance(text, bytes) else text
        return np.asarray(self._processor.encode(string), dtype=np.int32)

    def decode(self, ids: Sequence[int]) -> str:
        kept = [int(i) for i in ids if int(i) != self.eod_id]
        return str(self._processor.decode(kept))

    def __repr__(self) -> str:
        return f"SentencePieceTokenizer({self.path!r}, vocab_size={self.vocab_size})"


def load_tokenizer(spec: str = BYTE_TOKENIZER) -> Tokenizer:
    """``"byte"``, a ``.model`` file, a ``tokenizer.json``, or a folder holding either."""
    if spec == BYTE_TOKENIZER:
        return ByteTokenizer()
    if not spec:
        raise DataError("the tokenizer is empty", hint=f"set data.tokenizer to {TOKENIZER_KINDS}")
    path = Path(spec).expanduser()
    if path.is_dir():
        if (path / "tokenizer.json").is_file():
            return HFTokenizer(str(path / "tokenizer.json"))
        if (path / "tokenizer.model").is_file():
            return SentencePieceTokenizer(str(path / "tokenizer.model"))
        raise DataError(f"tokenizer folder {str(path)!r} holds no tokenizer.json or tokenizer.model",
                        hint=f"set data.tokenizer to {TOKENIZER_KINDS}")
    if path.suffix == ".json":
        return HFTokenizer(str(path))
    return SentencePieceTokenizer(spec)


def _eos_token(tokenizer_json: Path) -> Optional[str]:
    config = tokenizer_json.parent / "tokenizer_config.json"
    if not config.is_file():
        return None
    eos = json.loads(config.read_text()).get("eos_token")
    return eos.get("content") if isinstance(eos, dict) else eos


class HFTokenizer:
    """Special tokens not added. End-of-document: the folder's ``eos_token``, else a usual end token
    (:data:`EOD_TOKENS`), else one extra id after the vocabulary."""

    def __init__(self, json_path: str) -> None:
        path = Path(json_path).expanduser()
        if not path.is_file():
            raise DataError(f"tokenizer file {str(path)!r} does not exist", hint=f"set data.tokenizer to {TOKENIZER_KINDS}")
        try:
            import tokenizers  # noqa: PLC0415 -- optional dependency, only for this path
        except ImportError as exc:
            raise DataError("the tokenizer is a tokenizer.json but the tokenizers package is not installed",
                            hint="pip install 'chinchax[hf]' (or pip install tokenizers)") from exc
        try:
            self._tokenizer = tokenizers.Tokenizer.from_file(str(path))
        except Exception as exc:  # tokenizers raises bare Exception subclasses from Rust
            raise DataError(f"cannot load tokenizer {str(path)!r}: {str(exc).splitlines()[0] if str(exc) else exc!r}",
                            hint="point data.tokenizer at a tokenizer.json saved by the tokenizers library") from exc
        size = int(self._tokenizer.get_vocab_size(with_added_tokens=True))
        candidates = [t for t in (_eos_token(path), *EOD_TOKENS) if t]
        found = [self._tokenizer.token_to_id(t) for t in candidates]
        eod = next((int(i) for i in found if i is not None), None)
        self.eod_id = size if eod is None else eod
        self.vocab_size = size + 1 if eod is None else size
        self.fingerprint = "hf-" + hashlib.sha256(path.read_bytes()).hexdigest()[:16]
        self.path = str(path)

    def encode(self, text: Text) -> np.ndarray:
        string = text.decode("utf-8", errors="replace") if isinstance(text, bytes) else text
        return np.asarray(self._tokenizer.encode(string, add_special_tokens=False).ids, dtype=np.int32)

    def decode(self, ids: Sequence[int]) -> str:
        return str(self._tokenizer.decode([int(i) for i in ids if int(i) != self.eod_id]))

    def __repr__(self) -> str:
        return f"HFTokenizer({self.path!r}, vocab_size={self.vocab_size})"
