"""Tokenizers: bytes by default, a SentencePiece model when one is given.

The byte tokenizer needs no file and no training, so every corpus (source code, prose,
the synthetic language) is readable out of the box and a loss in nats per token is a loss
per byte.  Ids 0..255 are the bytes themselves and id 256 ends a document, so the
vocabulary has 257 entries.  A SentencePiece ``.model`` file replaces it when the config
names one; ``sentencepiece`` is imported only then, so it is not a dependency of the
default path.

``DataError`` lives here because this is the lowest module of the data layer: the corpus,
the TFDS builder and the pipeline all raise it, and ``training.data`` re-exports it.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Protocol, Sequence, Union

import numpy as np

from chinchax.errors import DataError


BYTE_TOKENIZER = "byte"

Text = Union[str, bytes]


class Tokenizer(Protocol):
    """What the pipeline needs from a tokenizer."""

    vocab_size: int
    eod_id: int
    fingerprint: str  # identifies the mapping text -> ids, for cache keys

    def encode(self, text: Text) -> np.ndarray:
        """Ids of ``text`` (no end-of-document id), as a 1-D int32 array."""
        ...

    def decode(self, ids: Sequence[int]) -> str:
        """Text of ``ids``; end-of-document ids are dropped."""
        ...


class ByteTokenizer:
    """One id per byte (0..255) plus an end-of-document id (256)."""

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
    """A trained SentencePiece model.

    The end-of-document id is the model's ``</s>`` when it has one; a model trained
    without ``</s>`` gets one extra id after its pieces, so documents stay separable.
    """

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
                hint="pip install sentencepiece (or set data.tokenizer=byte)",
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
    """``"byte"`` or the path of a SentencePiece ``.model`` file."""
    if spec == BYTE_TOKENIZER:
        return ByteTokenizer()
    if not spec:
        raise DataError(
            "the tokenizer is empty",
            hint="set data.tokenizer to 'byte' or to the path of a SentencePiece .model file",
        )
    return SentencePieceTokenizer(spec)
