"""The input pipeline: corpora, the document split, packing, exact resume, sharding, errors."""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from pathlib import Path
from typing import Dict, List

import numpy as np
import pytest

from chinchax.errors import ChinchaxError, DataError
from training import corpus as corpus_lib
from training.sources import embedded, synthetic
from training.data import (DataConfig, PackedSequences, build_eval_batches, build_train_iterator, split_documents, split_stream, to_global_batch, train_sequences, vocab_size)
from data_stats_helpers import (conditional_entropy_nats, corpus_summary, describe, entropy_rate_nats, loss_floor_nats,
                                unigram_entropy_nats)

EOD = 256


def take(iterator, count: int) -> List[Dict[str, np.ndarray]]:
    return [next(iterator) for _ in range(count)]


def assert_same_batches(
    left: List[Dict[str, np.ndarray]], right: List[Dict[str, np.ndarray]]
) -> None:
    assert len(left) == len(right)
    for a, b in zip(left, right):
        assert a.keys() == b.keys()
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One cache per module: the embedded corpus is built once for all tests here."""
    return str(tmp_path_factory.mktemp("chinchax-cache"))


@pytest.fixture(scope="module")
def small_synthetic(cache: str) -> DataConfig:
    """A synthetic corpus small enough that an epoch is a few dozen sequences."""
    return DataConfig(
        source="synthetic",
        cache_dir=cache,
        synthetic_documents=20,
        synthetic_document_length=200,
        validation_fraction=0.1,
        seed=3,
        num_threads=2,
    )


def lettered_corpus(directory: Path, count: int, length: int = 300) -> Path:
    """``count`` files, file i made only of letter i: every token names its document."""
    directory.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        (directory / f"doc{i:02d}.txt").write_text(chr(ord("A") + i) * length)
    return directory


# --- config -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "fields, words",
    [
        ({"source": "embeded"}, "embedded"),
        ({"source": "text"}, "data.path"),
        ({"source": "tfds"}, "tfds_name"),
        ({"validation_fraction": 1.0}, "fraction"),
        ({"seed": -1}, "seed"),
        ({"synthetic_alphabet": 100}, "symbols"),
        ({"synthetic_order": 4}, "order"),
        ({"synthetic_branching": 17}, "synthetic_alphabet"),
        ({"num_threads": -1}, "threads"),
    ],
)
def test_bad_config_is_one_line_data_error_whose_hint_names_the_fix(
    fields: dict, words: str
) -> None:
    with pytest.raises(DataError) as caught:
        DataConfig(**fields)
    assert isinstance(caught.value, ChinchaxError)
    assert "\n" not in str(caught.value)
    assert words in str(caught.value) + " " + caught.value.hint


def test_config_is_frozen() -> None:
    cfg = DataConfig()
    with pytest.raises(Exception):
        cfg.source = "text"  # type: ignore[misc]


# --- the embedded corpus ------------------------------------------------------------------


def test_embedded_corpus_is_a_packaged_few_mb_subset_of_the_stdlib() -> None:
    files = embedded.embedded_files()
    assert files == sorted(files)
    assert 1_000_000 < sum(size for _, size in files) <= embedded.EMBEDDED_MAX_BYTES
    assert all(name.endswith(".py") for name, _ in files)
    assert not any(part in embedded.EMBEDDED_EXCLUDED_DIRS for name, _ in files for part in name.split("/"))
    assert embedded.ARCHIVE.stat().st_size < 2_000_000  # shipped in the package


def test_embedded_corpus_is_the_same_bytes_under_every_supported_python(tmp_path: Path) -> None:
    """Built (tokenized into a fresh cache) here, and its digest read by each CPython
    3.10-3.13 this machine has: one fingerprint for all."""
    import subprocess
    import sys

    cfg = DataConfig(cache_dir=str(tmp_path))
    built = corpus_lib.load_corpus(cfg)
    expected = np.concatenate([np.append(np.frombuffer(data, np.uint8).astype(np.int64), EOD)
                               for data in embedded.documents(cfg, tmp_path)])
    np.testing.assert_array_equal(np.asarray(built.tokens, np.int64), expected)
    assert embedded.embedded_fingerprint() == embedded.EMBEDDED_SHA256
    pythons = [sys.executable] + sorted(str(p) for p in Path.home().glob(".pyenv/versions/3.1[0-3].*/bin/python"))
    script = "from training.sources.embedded import embedded_fingerprint; print(embedded_fingerprint())"
    root = Path(__file__).resolve().parent.parent
    for python in pythons:
        found = subprocess.run([python, "-c", script], capture_output=True, text=True, cwd=root,
                               env={"PYTHONPATH": str(root)}, timeout=120)
        assert found.stdout.strip() == embedded.EMBEDDED_SHA256, (python, found.stderr[-300:])


def test_a_changed_embedded_archive_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import gzip
    import io
    import tarfile

    changed = tmp_path / "corpus.tar.gz"
    with tarfile.open(fileobj=(buffer := io.BytesIO()), mode="w") as tar:
        info = tarfile.TarInfo("files/a.py")
        info.size = 3
        tar.addfile(info, io.BytesIO(b"x=1"))
    changed.write_bytes(gzip.compress(buffer.getvalue()))
    monkeypatch.setattr(embedded, "ARCHIVE", changed)
    embedded._documents.cache_clear()
    try:
        with pytest.raises(DataError, match="digest"):
            embedded.embedded_files()
    finally:
        embedded._documents.cache_clear()


def test_embedded_corpus_is_built_once_then_read_from_the_cache(
    cache: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = DataConfig(cache_dir=cache)
    built = corpus_lib.load_corpus(cfg)
    files = embedded.embedded_files()
    assert built.num_documents == len(files)
    assert built.num_tokens == sum(size for _, size in files) + len(
        files
    )  # bytes + one separator each
    assert (np.asarray(built.tokens)[np.asarray(built.offsets[1:]) - 1] == EOD).all()
    entries = list((Path(cache) / "corpus").glob("embedded-*/tokens.npy"))
    assert len(entries) == 1

    def no_rebuild(*args, **kwargs):
        raise AssertionError("the cached corpus was tokenized again")

    monkeypatch.setattr(corpus_lib, "_tokenize", no_rebuild)
    monkeypatch.setattr(corpus_lib, "_LOADED", {})
    again = corpus_lib.load_corpus(cfg)
    assert again.fingerprint == built.fingerprint
    np.testing.assert_array_equal(np.asarray(again.tokens), np.asarray(built.tokens))


def test_embedded_corpus_numbers_and_one_line_description(cache: str) -> None:
    cfg = DataConfig(cache_dir=cache)
    summary = corpus_summary(cfg)
    assert summary["train_tokens"] + summary["validation_tokens"] == summary["tokens"]
    assert summary["train_documents"] + summary["validation_documents"] == summary["documents"]
    assert 0.02 < summary["validation_tokens"] / summary["tokens"] < 0.15
    entropy = unigram_entropy_nats(cfg)
    assert 2.0 < entropy < math.log(257)  # source code is far from uniform bytes
    line = describe(cfg)
    assert "\n" not in line and f"{summary['documents']:,} documents" in line
    assert vocab_size(cfg) == 257
    assert loss_floor_nats(cfg, seq_len=64) is None


def test_unigram_entropy_is_the_entropy_of_token_frequencies() -> None:
    assert corpus_lib.unigram_entropy_nats(np.array([3, 3, 3, 3]), 8) == pytest.approx(0.0)
    assert corpus_lib.unigram_entropy_nats(np.array([0, 1, 0, 1]), 8) == pytest.approx(math.log(2))
    assert corpus_lib.unigram_entropy_nats(np.arange(16), 16) == pytest.approx(math.log(16))


# --- split and packing --------------------------------------------------------------------


def test_split_is_by_document_disjoint_complete_and_seeded() -> None:
    train, validation = split_documents(200, 0.05, seed=0)
    assert validation.size == 10 and train.size == 190
    assert np.union1d(train, validation).tolist() == list(range(200))
    again_train, again_validation = split_documents(200, 0.05, seed=0)
    assert (
        again_validation.tolist() == validation.tolist() and again_train.tolist() == train.tolist()
    )
    assert split_documents(200, 0.05, seed=1)[1].tolist() != validation.tolist()
    assert split_documents(3, 0.01, seed=0)[1].size == 1  # a positive fraction keeps one document
    assert split_documents(5, 0.0, seed=0)[1].size == 0


def test_packed_sequences_overlap_by_one_so_every_token_is_a_target_once() -> None:
    stream = np.arange(23)
    sequences = PackedSequences(stream, seq_len=5)
    assert len(sequences) == 4  # (23 - 1) // 5
    rows = np.stack([sequences[i] for i in range(len(sequences))])
    assert rows.shape == (4, 6) and rows.dtype == np.int32
    np.testing.assert_array_equal(rows[:, 1:].ravel(), np.arange(1, 21))  # targets: each once
    np.testing.assert_array_equal(rows[1:, 0], rows[:-1, -1])


def test_validation_text_never_reaches_training_batches(tmp_path: Path) -> None:
    cfg = DataConfig(
        source="text",
        path=str(lettered_corpus(tmp_path / "docs", 20)),
        cache_dir=str(tmp_path / "cache"),
        validation_fraction=0.2,
    )
    corpus = corpus_lib.load_corpus(cfg)
    _, validation_docs = split_documents(corpus.num_documents, 0.2, seed=0)
    validation_letters = {ord("A") + int(i) for i in validation_docs}
    train_tokens = np.concatenate(
        [
            b["targets"].ravel()
            for b in take(build_train_iterator(cfg, seq_len=32, global_batch=4), 60)
        ]
    )
    eval_tokens = np.concatenate(
        [
            b["targets"].ravel()
            for b in build_eval_batches(cfg, seq_len=32, batch_size=4, num_batches=3)
        ]
    )
    assert validation_letters and not validation_letters & set(train_tokens.tolist())
    assert set(eval_tokens.tolist()) <= validation_letters | {EOD}
    assert EOD in train_tokens  # short documents are packed together with separators


def test_train_batches_have_the_promised_shapes_and_shifted_targets(
    small_synthetic: DataConfig,
) -> None:
    iterator = build_train_iterator(small_synthetic, seq_len=16, global_batch=8)
    for batch in take(iterator, 5):
        assert set(batch) == {"inputs", "targets"}
        assert batch["inputs"].shape == batch["targets"].shape == (8, 16)
        assert batch["inputs"].dtype == batch["targets"].dtype == np.int32
        np.testing.assert_array_equal(batch["inputs"][:, 1:], batch["targets"][:, :-1])
        assert (batch["inputs"] >= 0).all() and (batch["inputs"] < 257).all()


def test_each_epoch_visits_every_sequence_once_in_a_new_order(small_synthetic: DataConfig) -> None:
    elements = train_sequences(small_synthetic, seq_len=16)
    corpus = corpus_lib.load_corpus(small_synthetic)
    train_docs, _ = split_documents(corpus.num_documents, 0.1, seed=3)
    source = PackedSequences(split_stream(corpus, train_docs), 16)
    n = len(source)
    expected = sorted(tuple(source[i]) for i in range(n))
    epoch0 = [tuple(elements[i]) for i in range(n)]
    epoch1 = [tuple(elements[i]) for i in range(n, 2 * n)]
    assert sorted(epoch0) == expected and sorted(epoch1) == expected
    assert epoch0 != epoch1


# --- exact resume -------------------------------------------------------------------------


def test_resume_from_state_yields_exactly_the_batches_that_would_have_come(
    small_synthetic: DataConfig,
) -> None:
    k, m = 7, 9  # 16 batches of 8 cross the epoch boundary of this small corpus
    original = build_train_iterator(small_synthetic, seq_len=16, global_batch=8)
    take(original, k)
    state = json.loads(json.dumps(original.get_state()))  # survives a JSON round trip
    assert len(json.dumps(state)) < 300
    expected = take(original, m)

    resumed = build_train_iterator(small_synthetic, seq_len=16, global_batch=8)
    resumed.set_state(state)
    assert_same_batches(take(resumed, m), expected)
    assert resumed.get_state() == original.get_state()


def test_state_is_independent_of_host_count_and_hosts_partition_the_global_batch(
    small_synthetic: DataConfig,
) -> None:
    single = build_train_iterator(small_synthetic, seq_len=16, global_batch=8)
    take(single, 3)
    state = single.get_state()
    expected = take(single, 4)

    hosts = [
        build_train_iterator(
            small_synthetic, seq_len=16, global_batch=8, process_index=p, process_count=2
        )
        for p in range(2)
    ]
    for host in hosts:
        host.set_state(state)
        assert host.local_batch == 4
    for step in range(4):
        parts = [next(host) for host in hosts]
        for key in ("inputs", "targets"):  # process order == row order of the global batch
            np.testing.assert_array_equal(
                np.concatenate([p[key] for p in parts]), expected[step][key]
            )
    assert hosts[0].get_state() == hosts[1].get_state() == single.get_state()


def test_resume_with_a_different_global_batch_neither_replays_nor_skips(
    small_synthetic: DataConfig,
) -> None:
    big = build_train_iterator(small_synthetic, seq_len=16, global_batch=8)
    take(big, 2)
    state = big.get_state()
    following = next(big)
    small = build_train_iterator(small_synthetic, seq_len=16, global_batch=4)
    small.set_state(state)
    halves = take(small, 2)
    np.testing.assert_array_equal(
        np.concatenate([h["inputs"] for h in halves]), following["inputs"]
    )


def test_state_from_another_data_stream_is_refused(small_synthetic: DataConfig) -> None:
    state = build_train_iterator(small_synthetic, seq_len=16, global_batch=8).get_state()
    other_length = build_train_iterator(small_synthetic, seq_len=8, global_batch=8)
    with pytest.raises(DataError, match="seq_len"):
        other_length.set_state(state)
    other_seed = build_train_iterator(
        dataclasses.replace(small_synthetic, seed=4), seq_len=16, global_batch=8
    )
    with pytest.raises(DataError, match="seed"):
        other_seed.set_state(state)
    with pytest.raises(DataError):
        other_length.set_state({"next_index": 3})


def test_split_seed_keeps_the_validation_set_while_the_order_changes(
    small_synthetic: DataConfig,
) -> None:
    reordered = dataclasses.replace(small_synthetic, seed=11, split_seed=small_synthetic.seed)
    assert (
        corpus_summary(reordered)["validation_tokens"]
        == corpus_summary(small_synthetic)["validation_tokens"]
    )
    assert_same_batches(
        build_eval_batches(reordered, seq_len=16, batch_size=4, num_batches=2),
        build_eval_batches(small_synthetic, seq_len=16, batch_size=4, num_batches=2),
    )
    first = next(build_train_iterator(small_synthetic, seq_len=16, global_batch=8))
    assert not np.array_equal(
        next(build_train_iterator(reordered, seq_len=16, global_batch=8))["inputs"], first["inputs"]
    )


# --- evaluation batches -------------------------------------------------------------------


def test_eval_batches_are_fixed_and_split_over_hosts_like_training(cache: str) -> None:
    cfg = DataConfig(cache_dir=cache)
    first = build_eval_batches(cfg, seq_len=64, batch_size=8, num_batches=3)
    assert len(first) == 3 and first[0]["inputs"].shape == (8, 64)
    assert_same_batches(build_eval_batches(cfg, seq_len=64, batch_size=8, num_batches=3), first)
    assert not np.array_equal(first[0]["inputs"], first[1]["inputs"])
    host1 = build_eval_batches(
        cfg, seq_len=64, batch_size=8, num_batches=3, process_index=1, process_count=2
    )
    np.testing.assert_array_equal(host1[2]["targets"], first[2]["targets"][4:])


def test_eval_returns_what_the_validation_split_holds_with_a_warning(
    small_synthetic: DataConfig, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="training.data"):
        batches = build_eval_batches(small_synthetic, seq_len=16, batch_size=8, num_batches=1000)
    summary = corpus_summary(small_synthetic)
    assert len(batches) == (summary["validation_tokens"] - 1) // 16 // 8
    assert "not 1000" in caplog.text


# --- errors -------------------------------------------------------------------------------


def test_too_few_tokens_for_one_batch_is_a_clear_error(small_synthetic: DataConfig) -> None:
    with pytest.raises(DataError, match="fewer than one batch") as caught:
        build_train_iterator(small_synthetic, seq_len=512, global_batch=64)
    assert "seq_len" in caught.value.hint
    with pytest.raises(DataError, match="validation split"):
        build_eval_batches(small_synthetic, seq_len=512, batch_size=64, num_batches=1)


def test_missing_and_empty_text_sources_are_clear_errors(tmp_path: Path) -> None:
    cache_dir = str(tmp_path / "cache")
    with pytest.raises(DataError, match="does not exist"):
        describe(DataConfig(source="text", path=str(tmp_path / "nowhere"), cache_dir=cache_dir))
    with pytest.raises(DataError, match="matches no files"):
        describe(DataConfig(source="text", glob=str(tmp_path / "*.txt"), cache_dir=cache_dir))
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "a.txt").write_text("")
    with pytest.raises(DataError, match="empty"):
        describe(DataConfig(source="text", path=str(tmp_path / "empty"), cache_dir=cache_dir))
    (tmp_path / "blank").mkdir()
    (tmp_path / "blank" / "a.txt").write_text("  \n\n  ")
    with pytest.raises(DataError, match="no documents"):
        describe(DataConfig(source="text", path=str(tmp_path / "blank"), cache_dir=cache_dir))
    (tmp_path / "one.txt").write_text("a single document " * 50)
    with pytest.raises(DataError, match="at least 2") as caught:
        describe(DataConfig(source="text", path=str(tmp_path / "one.txt"), cache_dir=cache_dir))
    assert "document_separator" in caught.value.hint


def test_unknown_tfds_name_is_a_clear_error(tmp_path: Path) -> None:
    cfg = DataConfig(
        source="tfds", tfds_name="no_such_dataset_xyz", tfds_download=False, cache_dir=str(tmp_path)
    )
    with pytest.raises(DataError, match="unknown TFDS dataset 'no_such_dataset_xyz'") as caught:
        describe(cfg)
    assert "\n" not in str(caught.value) and caught.value.hint


def test_shapes_that_do_not_split_over_hosts_are_refused(small_synthetic: DataConfig) -> None:
    with pytest.raises(DataError, match="hosts"):
        build_train_iterator(
            small_synthetic, seq_len=16, global_batch=6, process_index=0, process_count=4
        )
    with pytest.raises(DataError, match="process_index"):
        build_train_iterator(
            small_synthetic, seq_len=16, global_batch=8, process_index=2, process_count=2
        )


# --- the local-text TFDS builder ----------------------------------------------------------


def test_text_builder_writes_array_record_that_tfds_data_source_reads_back(tmp_path: Path) -> None:
    import tensorflow_datasets as tfds

    from training import text_builder

    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.txt").write_bytes(b"first part\n\nsecond \xff part\n")
    (tmp_path / "in" / "b.md").write_text("only part of b")
    (tmp_path / "in" / ".hidden").write_text("never read")
    files = text_builder.resolve_text_files(str(tmp_path / "in"))
    assert [Path(f).name for f in files] == ["a.txt", "b.md"]
    data_dir = str(tmp_path / "tfds")

    name = text_builder.build_text_dataset(files, data_dir)
    assert list(Path(data_dir).rglob("*.array_record*"))
    source = tfds.data_source(name, split="train", data_dir=data_dir, download=False)
    assert [source[i]["text"] for i in range(len(source))] == [
        b"first part\n\nsecond \xff part\n",  # raw bytes, invalid UTF-8 included
        b"only part of b",
    ]
    assert text_builder.build_text_dataset(files, data_dir) == name  # same files: reused

    split_name = text_builder.build_text_dataset(files, data_dir, document_separator="\n\n")
    assert split_name != name
    pieces = tfds.data_source(split_name, split="train", data_dir=data_dir, download=False)
    assert [pieces[i]["text"] for i in range(len(pieces))] == [
        b"first part",
        b"second \xff part\n",
        b"only part of b",
    ]


def test_text_and_tfds_sources_read_the_same_documents(tmp_path: Path) -> None:
    from training import text_builder

    docs = lettered_corpus(tmp_path / "docs", 6, length=50)
    text_cfg = DataConfig(
        source="text", glob=str(docs / "*.txt"), cache_dir=str(tmp_path / "cache")
    )
    text_corpus = corpus_lib.load_corpus(text_cfg)
    assert text_corpus.num_documents == 6 and text_corpus.num_tokens == 6 * 51
    name = text_builder.build_text_dataset(
        text_builder.resolve_text_files(str(docs)), str(tmp_path / "tfds")
    )
    tfds_cfg = DataConfig(
        source="tfds",
        tfds_name=name,
        tfds_data_dir=str(tmp_path / "tfds"),
        cache_dir=str(tmp_path / "cache"),
    )
    assert corpus_lib.load_corpus(tfds_cfg).fingerprint == text_corpus.fingerprint
    with pytest.raises(DataError, match="no text feature 'body'"):
        describe(dataclasses.replace(tfds_cfg, text_feature="body"))


def test_changed_text_files_build_a_new_corpus(tmp_path: Path) -> None:
    docs = lettered_corpus(tmp_path / "docs", 4, length=40)
    cfg = DataConfig(source="text", path=str(docs), cache_dir=str(tmp_path / "cache"))
    before = corpus_lib.load_corpus(cfg)
    (docs / "doc00.txt").write_text("changed " * 20)
    after = corpus_lib.load_corpus(cfg)
    assert after.fingerprint != before.fingerprint
    assert after.num_tokens == before.num_tokens - 41 + 161


# --- the synthetic language ---------------------------------------------------------------


def test_markov_language_entropy_rate_matches_the_sampled_log_likelihood() -> None:
    language = synthetic.MarkovLanguage.from_seed(alphabet=12, order=2, branching=3, seed=5)
    assert np.isclose(language.stationary.sum(), 1.0) and np.allclose(
        language.transition.sum(axis=1), 1.0
    )
    symbols = language.sample(num_documents=64, length=600, seed=9)
    contexts = symbols[:, 0] * 12 + symbols[:, 1]
    losses = []
    for position in range(2, symbols.shape[1]):
        losses.append(-np.log(language.transition[contexts, symbols[:, position]]))
        contexts = (contexts * 12 + symbols[:, position]) % 144
    losses = np.concatenate(losses)
    error = losses.std() / math.sqrt(losses.size)
    assert abs(losses.mean() - entropy_rate_nats(language)) < 4 * error
    # With no context the best guess is the stationary symbol law: the sample's frequencies.
    frequencies = np.bincount(symbols.ravel(), minlength=12) / symbols.size
    assert corpus_lib.unigram_entropy_nats(symbols.ravel(), 12) == pytest.approx(
        conditional_entropy_nats(language, 0), abs=0.02
    )
    assert abs(frequencies - language.stationary.reshape(12, 12).sum(axis=0)).max() < 0.02
    assert (
        conditional_entropy_nats(language, 0)
        > conditional_entropy_nats(language, 1)
        > entropy_rate_nats(language)
    )


def test_synthetic_corpus_loss_floor_is_what_the_true_model_scores_on_batches(cache: str) -> None:
    cfg = DataConfig(
        source="synthetic",
        cache_dir=cache,
        synthetic_alphabet=8,
        synthetic_order=1,
        synthetic_branching=3,
        synthetic_documents=16,
        synthetic_document_length=2000,
    )
    language = synthetic.synthetic_language(cfg)
    floor = loss_floor_nats(cfg, seq_len=32)
    assert floor == pytest.approx(
        entropy_rate_nats(language)
    )  # order 1: every target has its context
    code = {ord(c): i for i, c in enumerate(synthetic.SYNTHETIC_SYMBOLS[:8])}
    losses = []
    for batch in take(build_train_iterator(cfg, seq_len=32, global_batch=16), 40):
        for previous, target in zip(batch["inputs"].ravel(), batch["targets"].ravel()):
            if previous != EOD and target != EOD:
                losses.append(
                    -math.log(language.transition[code[int(previous)], code[int(target)]])
                )
    error = np.std(losses) / math.sqrt(len(losses))
    assert abs(np.mean(losses) - floor) < 4 * error
    assert unigram_entropy_nats(cfg) > floor + 0.2  # context matters: the unigram bound is looser


def test_order_two_floor_charges_the_first_target_its_shorter_context(cache: str) -> None:
    cfg = DataConfig(source="synthetic", cache_dir=cache)
    language = synthetic.synthetic_language(cfg)
    rate, first = entropy_rate_nats(language), conditional_entropy_nats(language, 1)
    assert loss_floor_nats(cfg, seq_len=4) == pytest.approx((first + 3 * rate) / 4)
    assert loss_floor_nats(cfg, seq_len=1024) == pytest.approx(rate, abs=(first - rate) / 1000)
    assert "entropy rate" in describe(cfg)


# --- global arrays ------------------------------------------------------------------------


def test_to_global_batch_shards_rows_over_data_and_fsdp() -> None:
    import jax
    from jax.sharding import NamedSharding, PartitionSpec

    mesh = jax.make_mesh(
        (2, 4, 1), ("data", "fsdp", "tensor"), axis_types=(jax.sharding.AxisType.Auto,) * 3
    )
    local = {
        "inputs": np.arange(16 * 5, dtype=np.int32).reshape(16, 5),
        "targets": np.ones((16, 5), np.int32),
    }
    glob = to_global_batch(local, mesh)
    assert glob["inputs"].shape == (16, 5)
    assert glob["inputs"].sharding.is_equivalent_to(
        NamedSharding(mesh, PartitionSpec(("data", "fsdp"), None)), 2
    )
    np.testing.assert_array_equal(np.asarray(glob["inputs"]), local["inputs"])
    assert len(glob["inputs"].addressable_shards) == 8
    assert glob["inputs"].addressable_shards[0].data.shape == (2, 5)
    only_data = to_global_batch(local, mesh, PartitionSpec("data", None))
    assert only_data["targets"].addressable_shards[0].data.shape == (8, 5)
    with pytest.raises(DataError, match="does not split"):
        to_global_batch({"inputs": np.zeros((6, 5), np.int32)}, mesh)


def test_a_tfds_dataset_prepared_as_tfrecord_says_how_to_prepare_it(monkeypatch: pytest.MonkeyPatch) -> None:
    import tensorflow_datasets as tfds

    from training.sources.tfds_source import tfds_documents

    def tfrecord_only(*args, **kwargs):  # what tfds raises for a TFRecord build
        raise NotImplementedError("Random access data source for file format TFRECORD is not supported. "
                                  "Possible root causes:\n* ...")

    monkeypatch.setattr(tfds, "data_source", tfrecord_only)
    with pytest.raises(DataError) as caught:
        list(tfds_documents("lm1b", split="train", data_dir="/data/tfds", feature="text", download=False))
    assert "\n" not in str(caught.value) and "TFRecord" in str(caught.value)
    assert "tfds build lm1b --file_format=array_record --data_dir=/data/tfds" in caught.value.hint


def test_eval_bytes_per_token_turns_a_loss_into_bits_per_byte(tmp_path: Path) -> None:
    from training.data import bits_per_byte, data_identity, eval_bytes_per_token

    corpus = lettered_corpus(tmp_path / "docs", 10, length=300)
    cfg = DataConfig(source="text", path=str(corpus), cache_dir=str(tmp_path / "cache"), validation_fraction=0.2)
    # byte tokens: each validation document is 300 bytes and 301 tokens (its end-of-document id)
    assert eval_bytes_per_token(cfg) == {"text": pytest.approx(300 / 301)}
    assert bits_per_byte(math.log(2.0), 0.5) == pytest.approx(2.0)
    identity = data_identity(cfg)
    assert identity["tokenizer"] == "byte" and identity["vocab_size"] == 257
    assert identity["fingerprint"] == corpus_summary(cfg)["fingerprint"]
