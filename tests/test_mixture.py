"""Data mixtures: configs, weighted interleaving, exact resume, per-source eval; the prose corpus."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Dict, List

import numpy as np
import pytest

from chinchax.errors import ChinchaxError, ConfigError, DataError
from training import corpus as corpus_lib
from training.data import (DataConfig, MixtureSource, PackedSequences, build_eval_batches, build_eval_sets, build_train_iterator, data_sources, primary_source, split_documents, split_stream, train_sequences)
from data_stats_helpers import corpus_summary, describe, token_frequencies, unigram_entropy_nats
from training.batch_iterator import interleave_counts, interleave_proportions
from training.sources import prose

SEQ_LEN = 32


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(tmp_path_factory.mktemp("chinchax-mixture-cache"))


def synthetic(
    name: str, weight: float, alphabet: int, role: str = "train", seed: int = 0
) -> MixtureSource:
    """A small synthetic language; different alphabets make the sources' sequences distinct."""
    return MixtureSource(
        name=name,
        weight=weight,
        role=role,
        source="synthetic",
        synthetic_alphabet=alphabet,
        synthetic_seed=alphabet,
        synthetic_documents=24,
        synthetic_document_length=300,
        validation_fraction=0.1,
        seed=seed,
    )


@pytest.fixture(scope="module")
def three_way(cache: str) -> DataConfig:
    return DataConfig(
        cache_dir=cache,
        mixture=[
            synthetic("big", 0.6, 4),
            synthetic("mid", 0.3, 8, role="replay"),
            synthetic("small", 0.1, 12),
        ],
    )


def take(iterator, count: int) -> List[Dict[str, np.ndarray]]:
    return [next(iterator) for _ in range(count)]


def rows(batches: List[Dict[str, np.ndarray]]) -> np.ndarray:
    """The ``seq_len + 1`` sequences of the batches, in stream order."""
    return np.concatenate(
        [np.concatenate([b["inputs"], b["targets"][:, -1:]], axis=1) for b in batches], axis=0
    )


def training_sequences(cfg: DataConfig) -> set:
    """Every training sequence of a single source, as bytes, to tell sources apart."""
    corpus = corpus_lib.load_corpus(cfg)
    train, _ = split_documents(
        corpus.num_documents,
        cfg.validation_fraction,
        cfg.seed if cfg.split_seed is None else cfg.split_seed,
    )
    packed = PackedSequences(split_stream(corpus, train), SEQ_LEN)
    return {packed[i].tobytes() for i in range(len(packed))}


def source_of_each_row(cfg: DataConfig, sequences: np.ndarray) -> List[str]:
    members = {s.name: training_sequences(s.config) for s in data_sources(cfg) if s.role != "eval"}
    labels = []
    for row in sequences:
        owners = [
            name for name, known in members.items() if row.astype(np.int32).tobytes() in known
        ]
        assert len(owners) == 1, owners
        labels.append(owners[0])
    return labels


def assert_same(left: List[Dict[str, np.ndarray]], right: List[Dict[str, np.ndarray]]) -> None:
    assert len(left) == len(right)
    for a, b in zip(left, right):
        for key in ("inputs", "targets"):
            np.testing.assert_array_equal(a[key], b[key])


# --- config -------------------------------------------------------------------------------


def test_yaml_mixture_goes_through_the_experiment_loader_and_back(cache: str) -> None:
    from launch.config import load_experiment, load_run_config, resolve, run_config_to_yaml

    experiment = {
        "name": "cpt",
        "model": {"d_model": 32, "n_layers": 1, "n_heads": 2, "d_ff": 64, "vocab_size": 257},
        "train": {"steps": 2, "global_batch": 4, "seq_len": SEQ_LEN},
        "data": {
            "cache_dir": cache,
            "mixture": [
                {"name": "prose", "source": "prose", "weight": 0.9},
                {"name": "python", "source": "embedded", "weight": 0.1, "role": "replay"},
            ],
        },
    }
    # A dotted override replaces the whole list (OmegaConf cannot merge into one list item).
    override = (
        "data.mixture=[{name: prose, source: prose, weight: 0.7}, "
        "{name: python, source: embedded, weight: 0.3, role: replay}]"
    )
    exp = load_experiment(experiment, [override])
    entries = exp.data.mixture
    assert [type(e) for e in entries] == [MixtureSource, MixtureSource]
    assert [(e.name, e.source, e.weight, e.role) for e in entries] == [
        ("prose", "prose", 0.7, "train"),
        ("python", "embedded", 0.3, "replay"),
    ]
    run = resolve(exp)
    path = Path(cache) / "config.yaml"
    path.write_text(run_config_to_yaml(run))
    assert load_run_config(path).data == run.data


@pytest.mark.parametrize(
    "entry, words",
    [
        ({"weigth": 0.5}, "weight"),  # a misspelt key: OmegaConf names the closest
        ({"weight": "heavy"}, "weight"),
        ({"weight": 0.0}, "positive"),
        ({"source": "prosee"}, "prose"),
    ],
)
def test_bad_entries_fail_in_the_loader_naming_the_key(entry: dict, words: str) -> None:
    from chinchax.errors import ConfigError
    from launch.config import load_experiment

    data = {"data": {"mixture": [{"name": "a", "source": "synthetic", **entry}]}}
    with pytest.raises(ConfigError) as caught:
        load_experiment(data)
    assert words in str(caught.value) + " " + caught.value.hint


@pytest.mark.parametrize("weight", [0.0, -0.5, float("nan"), float("inf")])
def test_weights_must_be_positive_and_finite(weight: float) -> None:
    with pytest.raises(DataError) as caught:
        MixtureSource(name="new", weight=weight)
    assert isinstance(caught.value, ChinchaxError)
    assert "data.mixture[new].weight" in str(caught.value) and "role: eval" in caught.value.hint


@pytest.mark.parametrize(
    "entries, words",
    [
        ([{"name": "a", "source": "prosee"}], "did you mean 'prose'"),
        ([{"name": "a", "source": "text"}], "data.mixture[a].path"),
        ([{"name": "a", "role": "replays"}], "did you mean 'replay'"),
        ([{"name": ""}], "name"),
        ([{"name": "eval/x"}], "'/'"),
        ([{"name": "a"}, {"name": "a"}], "more than once"),
        ([{"name": "a", "role": "replay"}, {"name": "b", "role": "eval"}], "role: train"),
        ([["not", "a", "source"]], "mapping"),
    ],
)
def test_bad_mixtures_are_one_clear_error(entries: list, words: str) -> None:
    with pytest.raises(DataError) as caught:
        DataConfig(mixture=entries)
    assert "\n" not in str(caught.value)
    assert words in str(caught.value) + " " + caught.value.hint


def test_a_source_whose_files_do_not_exist_fails_when_read(tmp_path: Path) -> None:
    cfg = DataConfig(
        cache_dir=str(tmp_path),
        mixture=[{"name": "new", "source": "text", "path": str(tmp_path / "missing")}],
    )
    with pytest.raises(DataError) as caught:
        build_train_iterator(cfg, seq_len=SEQ_LEN, global_batch=4)
    assert "missing" in str(caught.value)


def test_sources_resolve_primary_first_and_inherit_shared_settings(cache: str) -> None:
    cfg = DataConfig(
        cache_dir=cache,
        num_threads=1,
        mixture=[
            synthetic("old", 0.2, 4, role="replay"),
            synthetic("new", 0.8, 8),
            synthetic("held", 1.0, 12, role="eval"),
        ],
    )
    sources = data_sources(cfg)
    assert [s.name for s in sources] == ["new", "old", "held"]
    assert primary_source(cfg).name == "new"
    assert all(
        s.config.cache_dir == cache and s.config.num_threads == 1 and not s.config.mixture
        for s in sources
    )
    assert sources[0].config.synthetic_alphabet == 8
    single = DataConfig(source="synthetic", cache_dir=cache)
    assert [(s.name, s.role, s.config) for s in data_sources(single)] == [
        ("synthetic", "train", single)
    ]


# --- interleaving -------------------------------------------------------------------------


def test_proportions_are_the_weights_scaled_so_the_smallest_is_100() -> None:
    assert interleave_proportions([0.6, 0.3, 0.1]) == [600, 300, 100]
    assert interleave_proportions([3, 7]) == [100, 233]
    assert sum(interleave_counts(12345, [600, 300, 100])) == 12345
    with pytest.raises(DataError):
        interleave_proportions([1.0, 0.0])


def test_observed_proportions_match_the_weights_within_sampling_error(
    three_way: DataConfig,
) -> None:
    iterator = build_train_iterator(three_way, seq_len=SEQ_LEN, global_batch=20)
    batches = take(iterator, 60)
    labels = source_of_each_row(three_way, rows(batches))
    n = len(labels)
    for source in data_sources(three_way):
        observed = labels.count(source.name) / n
        bound = 4.0 * math.sqrt(source.weight * (1 - source.weight) / n)  # binomial, 4 sigma
        assert abs(observed - source.weight) <= bound, (source.name, observed)
    # Stratified: every prefix holds each source in proportion, and the state knows the counts.
    counts = {name: labels.count(name) for name in ("big", "mid", "small")}
    assert iterator.get_state()["consumed"] == counts
    assert iterator.consumed_tokens() == {k: v * SEQ_LEN for k, v in counts.items()}
    for prefix in (7, 100, 555):
        assert interleave_counts(prefix, [600, 300, 100]) == [
            labels[:prefix].count(k) for k in ("big", "mid", "small")
        ]


def test_each_source_is_read_in_its_own_order(three_way: DataConfig) -> None:
    sequences = rows(take(build_train_iterator(three_way, seq_len=SEQ_LEN, global_batch=10), 30))
    labels = np.array(source_of_each_row(three_way, sequences))
    for source in data_sources(three_way):
        own = train_sequences(source.config, seq_len=SEQ_LEN)
        drawn = sequences[labels == source.name]
        expected = np.stack([own[i] for i in range(len(drawn))])
        np.testing.assert_array_equal(drawn, expected)


def test_killed_and_resumed_mixture_gives_the_same_batches(three_way: DataConfig) -> None:
    reference = build_train_iterator(three_way, seq_len=SEQ_LEN, global_batch=8)
    before = take(reference, 7)
    saved = json.loads(json.dumps(reference.get_state()))  # as a checkpoint stores it
    after = take(reference, 9)
    for hosts in (1, 2):
        resumed_parts = []
        for host in range(hosts):
            fresh = build_train_iterator(
                three_way, seq_len=SEQ_LEN, global_batch=8, process_index=host, process_count=hosts
            )
            fresh.set_state(saved)
            resumed_parts.append(take(fresh, 9))
        resumed = [
            {
                k: np.concatenate([part[i][k] for part in resumed_parts])
                for k in ("inputs", "targets")
            }
            for i in range(9)
        ]
        assert_same(resumed, after)
    assert not np.array_equal(rows(before[:1]), rows(after[:1]))  # resumed, not restarted


def test_a_state_from_another_mixture_is_refused(three_way: DataConfig) -> None:
    iterator = build_train_iterator(three_way, seq_len=SEQ_LEN, global_batch=8)
    take(iterator, 2)
    state = iterator.get_state()
    reweighted = DataConfig(
        cache_dir=three_way.cache_dir,
        mixture=[
            synthetic("big", 0.5, 4),
            synthetic("mid", 0.4, 8, role="replay"),
            synthetic("small", 0.1, 12),
        ],
    )
    other = build_train_iterator(reweighted, seq_len=SEQ_LEN, global_batch=8)
    with pytest.raises(DataError, match="mixture"):
        other.set_state(state)
    tampered = {**state, "consumed": {"big": 0, "mid": 0, "small": 16}}
    with pytest.raises(DataError, match="per-source"):
        iterator.set_state(tampered)


def test_eval_only_sources_are_never_trained_on(cache: str) -> None:
    cfg = DataConfig(
        cache_dir=cache, mixture=[synthetic("new", 1.0, 4), synthetic("old", 1.0, 8, role="eval")]
    )
    iterator = build_train_iterator(cfg, seq_len=SEQ_LEN, global_batch=8)
    labels = source_of_each_row(cfg, rows(take(iterator, 10)))
    assert set(labels) == {"new"}
    assert iterator.get_state()["consumed"] == {"new": 80}


# --- evaluation ---------------------------------------------------------------------------


def test_eval_sets_hold_each_source_primary_first(cache: str) -> None:
    original = DataConfig(
        source="synthetic",
        cache_dir=cache,
        synthetic_alphabet=8,
        synthetic_seed=8,
        synthetic_documents=24,
        synthetic_document_length=300,
        validation_fraction=0.1,
    )
    cfg = DataConfig(
        cache_dir=cache, mixture=[synthetic("old", 0.2, 8, role="replay"), synthetic("new", 0.8, 4)]
    )
    shape = dict(seq_len=SEQ_LEN, batch_size=4, num_batches=2)
    sets = build_eval_sets(cfg, **shape)
    assert list(sets) == ["new", "old"]
    for source in data_sources(cfg):
        assert_same(sets[source.name], build_eval_batches(source.config, **shape))
    assert_same(build_eval_batches(cfg, **shape), sets["new"])
    # The replay entry repeats the original run's corpus and split, so forgetting is
    # measured on exactly the text the original run held out.
    assert_same(sets["old"], build_eval_batches(original, **shape))
    single = build_eval_sets(original, **shape)
    assert list(single) == ["synthetic"]
    assert_same(single["synthetic"], build_eval_batches(original, **shape))


def test_eval_sets_split_over_hosts_like_training(three_way: DataConfig) -> None:
    whole = build_eval_sets(three_way, seq_len=SEQ_LEN, batch_size=4, num_batches=1)
    halves = [
        build_eval_sets(
            three_way,
            seq_len=SEQ_LEN,
            batch_size=4,
            num_batches=1,
            process_index=i,
            process_count=2,
        )
        for i in range(2)
    ]
    for name, batches in whole.items():
        joined = np.concatenate([halves[0][name][0]["inputs"], halves[1][name][0]["inputs"]])
        np.testing.assert_array_equal(joined, batches[0]["inputs"])


# --- numbers about a mixture ----------------------------------------------------------------


def test_mixture_entropy_and_summary(three_way: DataConfig) -> None:
    sources = data_sources(three_way)
    mixed = sum(s.weight * token_frequencies(s.config) for s in sources)
    present = mixed[mixed > 0]
    assert unigram_entropy_nats(three_way) == pytest.approx(
        float(-(present * np.log(present)).sum())
    )
    # Mixing distinct languages raises the entropy above the weighted mean of theirs.
    assert unigram_entropy_nats(three_way) > sum(
        s.weight * unigram_entropy_nats(s.config) for s in sources
    )
    summary = corpus_summary(three_way)
    assert summary["primary"] == "big"
    assert [(e["name"], e["role"]) for e in summary["mixture"]] == [
        ("big", "train"),
        ("mid", "replay"),
        ("small", "train"),
    ]
    assert sum(e["weight"] for e in summary["mixture"]) == pytest.approx(1.0)
    line = describe(three_way)
    assert "\n" not in line and "big [train, 60%]" in line and "mid [replay, 30%]" in line


# --- the prose corpus -----------------------------------------------------------------------


def bigram_cross_entropy(text: np.ndarray, model: np.ndarray) -> float:
    """Nats per token of ``text`` under the add-0.01 bigram model of ``model``'s tokens."""
    counts = np.zeros((257, 257))
    np.add.at(counts, (model[:-1], model[1:]), 1)
    conditional = (counts + 0.01) / (counts + 0.01).sum(axis=1, keepdims=True)
    return float(-np.log(conditional[text[:-1], text[1:]]).mean())


def test_prose_corpus_is_english_built_once_and_fingerprinted(cache: str, tmp_path: Path) -> None:
    cfg = DataConfig(source="prose", cache_dir=cache)
    summary = corpus_summary(cfg)
    assert summary["tokens"] > 300_000 and summary["documents"] > 100
    assert summary["validation_tokens"] > 10_000
    assert 2.5 < summary["unigram_entropy_nats"] < math.log(257)
    documents = prose.prose_documents()
    assert not any("::=" in d or d.startswith(">>>") for d in documents)
    assert all(len(d) <= 3 * prose.PROSE_DOCUMENT_CHARS for d in documents)
    rebuilt = corpus_summary(DataConfig(source="prose", cache_dir=str(tmp_path)))
    assert rebuilt["fingerprint"] == summary["fingerprint"]
    assert "language reference" in describe(cfg)


def test_prose_and_python_source_differ_as_two_languages(cache: str) -> None:
    prose = np.asarray(
        corpus_lib.load_corpus(DataConfig(source="prose", cache_dir=cache)).tokens, np.int64
    )
    python = np.asarray(
        corpus_lib.load_corpus(DataConfig(source="embedded", cache_dir=cache)).tokens, np.int64
    )
    prose_own = bigram_cross_entropy(prose, prose)
    python_own = bigram_cross_entropy(python, python)
    # Each is markedly harder to predict with the other's statistics than with its own.
    assert bigram_cross_entropy(prose, python) > prose_own + 0.2
    assert bigram_cross_entropy(python, prose) > python_own + 0.2
