"""Local text files built offline into an ArrayRecord TFDS dataset, so they take exactly the path
of a published TFDS dataset and that path is tested with no download and no TensorFlow."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import logging
import os
from pathlib import Path
from typing import Iterator, Sequence, Tuple

import tensorflow_datasets as tfds
from etils import epath

from chinchax.errors import DataError
from training.sources.files import resolve_text_files  # noqa: F401 -- re-exported


log = logging.getLogger(__name__)

DATASET_NAME = "chinchax_text"
SPLIT = "train"


@dataclasses.dataclass
class TextFilesConfig(tfds.core.BuilderConfig):
    files: Tuple[str, ...] = ()
    document_separator: str = ""


# Not registered: a built dataset is read back by name from its files, which also works in a
# process that never imported this module.
with tfds.core.registered.skip_registration():

    class ChinchaxText(tfds.core.GeneratorBasedBuilder):
        """One record per file, or per non-empty piece between separators; raw bytes."""

        VERSION = tfds.core.Version("1.0.0")
        RELEASE_NOTES = {"1.0.0": "Raw bytes of local text files, one record per document."}

        # TFDS finds a builder's code via importlib resources, which needs the optional
        # `importlib_resources` backport inside a package; the file itself is all it needs.
        @tfds.core.utils.classproperty
        @classmethod
        def code_path(cls) -> epath.Path:
            return epath.Path(__file__)

        def _log_download_bytes(self) -> None:  # TFDS prints this to stdout; we log it
            log.info("building %s from local files into %s", self.name, self.data_dir)

        def _log_download_done(self) -> None:
            log.info("built %s in %s", self.name, self.data_dir)

        def _info(self) -> tfds.core.DatasetInfo:
            return tfds.core.DatasetInfo(
                builder=self,
                description="Local text files, one record per document (raw bytes).",
                features=tfds.features.FeaturesDict(
                    {"text": tfds.features.Text(), "path": tfds.features.Text()}
                ),
                disable_shuffling=True,  # records in file order: document i is predictable
            )

        def _split_generators(self, dl_manager: tfds.download.DownloadManager):
            del dl_manager  # everything is local
            return {SPLIT: self._generate_examples()}

        def _generate_examples(self) -> Iterator[Tuple[str, dict]]:
            config = self.builder_config
            assert isinstance(config, TextFilesConfig)
            separator = config.document_separator.encode("utf-8")
            for file_index, name in enumerate(config.files):
                data = Path(name).read_bytes()
                pieces = data.split(separator) if separator else [data]
                for piece_index, piece in enumerate(pieces):
                    if piece.strip():
                        key = f"{file_index:09d}-{piece_index:09d}"
                        yield key, {"text": piece, "path": name}


def config_name(files: Sequence[str], document_separator: str = "") -> str:
    """Digests sizes and mtimes, so changed files build a new dataset, not reuse a stale one."""
    digest = hashlib.sha256(document_separator.encode("utf-8"))
    for name in files:
        stat = os.stat(name)
        digest.update(f"{name}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode("utf-8"))
    return "files_" + digest.hexdigest()[:16]


@contextlib.contextmanager
def _quiet_tfds() -> Iterator[None]:
    """No progress bars, and no warning that our config is not in BUILDER_CONFIGS (it never is)."""
    from tensorflow_datasets.core.utils import tqdm_utils  # noqa: PLC0415

    absl_logger = logging.getLogger("absl")
    previous_level = absl_logger.level
    bars_were_on = bool(getattr(tqdm_utils, "_active", True))
    absl_logger.setLevel(logging.ERROR)
    tqdm_utils.display_progress_bar(False)
    try:
        yield
    finally:
        absl_logger.setLevel(previous_level)
        tqdm_utils.display_progress_bar(bars_were_on)


def build_text_dataset(
    files: Sequence[str], data_dir: str, document_separator: str = ""
) -> str:
    """Build once; returns the name for ``tfds.data_source(name, data_dir=data_dir)``."""
    if not files:
        raise DataError("no text files to build a dataset from", hint="set data.path or data.glob")
    missing = [f for f in files if not os.path.isfile(f)]
    if missing:
        raise DataError(f"text file {missing[0]!r} does not exist", hint="check data.path / data.glob")
    config = TextFilesConfig(
        name=config_name(files, document_separator),
        description=f"{len(files)} local text files",
        files=tuple(files),
        document_separator=document_separator,
    )
    with _quiet_tfds():
        builder = ChinchaxText(config=config, data_dir=data_dir)
        try:
            builder.download_and_prepare(file_format="array_record")
        except Exception as exc:  # TFDS wraps a generator with no records in an AssertionError
            if "No examples were yielded" in str(exc):
                raise DataError(
                    f"the {len(files)} text file(s) hold no documents (only whitespace)",
                    hint="point data.path / data.glob at files with text in them",
                ) from exc
            raise DataError(
                f"cannot build the text dataset: {str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__}",
                hint="check that the files are readable; data.cache_dir must be writable",
            ) from exc
    return f"{DATASET_NAME}/{config.name}"
