"""`chinchax tokenize` and `data.source: shards` / `hf`: shards that are independent,
restartable and the same however many processes wrote them; training that reads them like
the in-memory path and resumes exactly."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, List

import numpy as np
import pytest

from chinchax.errors import DataError
from launch.cli import main
from training.data import DataConfig, build_eval_sets, build_train_iterator, stream_identity
from data_stats_helpers import corpus_summary
from training.shards import MANIFEST, ShardSequences, done_file
from training.tokenize_job import TokenizeJob, is_validation, run_tokenize, shard_documents

SEQ_LEN = 16


def write_inputs(folder: Path) -> List[bytes]:
    """A JSONL file and a Parquet file of numbered documents; returns every document."""
    pq = pytest.importorskip("pyarrow.parquet")
    import pyarrow as pa

    folder.mkdir(parents=True, exist_ok=True)
    first = [f"json document {i}: " + "alpha beta " * (i % 9 + 1) for i in range(120)]
    second = [f"parquet document {i}: " + "gamma delta " * (i % 7 + 2) for i in range(80)]
    with open(folder / "a.jsonl", "w") as lines:
        for text in first:
            lines.write(json.dumps({"text": text, "id": 0}) + "\n")
    pq.write_table(pa.table({"text": second}), folder / "b.parquet")
    return [t.encode() for t in first + second]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("inputs")
    write_inputs(folder)
    return folder


@pytest.fixture(scope="module")
def shards(inputs: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("shards") / "out"
    job = TokenizeJob(inputs=(str(inputs),), out=str(out), num_shards=3, validation_fraction=0.1)
    assert run_tokenize(job, processes=2, progress=False) is not None
    return out


def job_of(out: Path) -> TokenizeJob:
    saved = json.loads((out / MANIFEST).read_text())["job"]
    return TokenizeJob(out=str(out), **{**saved, "inputs": tuple(saved["inputs"])})


def test_manifest_counts_every_document_once_with_its_end_of_document_id(shards: Path, inputs: Path) -> None:
    documents = write_inputs(inputs)
    manifest = json.loads((shards / MANIFEST).read_text())
    splits = manifest["splits"]
    assert splits["train"]["documents"] + splits["validation"]["documents"] == len(documents)
    assert 0 < splits["validation"]["documents"] < len(documents) / 3
    assert splits["train"]["tokens"] + splits["validation"]["tokens"] == sum(len(d) + 1 for d in documents)
    assert manifest["tokenizer"]["fingerprint"] == "byte" and len(manifest["fingerprint"]) == 16


def test_shards_read_back_as_the_packed_stream_of_their_documents(shards: Path) -> None:
    job = job_of(shards)
    expected = []
    for index in range(job.num_shards):
        for document in shard_documents(job, index):
            if not is_validation(document, job.validation_fraction):
                expected.extend(list(document) + [256])
    stream = np.asarray(expected, np.int32)
    sequences = ShardSequences(str(shards), "train", SEQ_LEN)
    assert len(sequences) == (stream.size - 1) // SEQ_LEN
    for i in (0, 1, len(sequences) // 2, len(sequences) - 1):
        np.testing.assert_array_equal(sequences[i], stream[i * SEQ_LEN : i * SEQ_LEN + SEQ_LEN + 1])


def test_one_process_writes_the_same_shards_and_a_lost_shard_is_redone_alone(
    shards: Path, tmp_path: Path
) -> None:
    job = TokenizeJob(**{**job_of(shards).__dict__, "out": str(tmp_path / "one")})
    first = run_tokenize(job, processes=1, progress=False)
    assert first["fingerprint"] == json.loads((shards / MANIFEST).read_text())["fingerprint"]
    out = Path(job.out)
    kept = (out / "train-00000-of-00003.array_record").stat().st_mtime_ns
    (out / done_file(1)).unlink()
    (out / MANIFEST).unlink()
    again = run_tokenize(job, processes=1, progress=False)
    assert again["fingerprint"] == first["fingerprint"]
    assert (out / "train-00000-of-00003.array_record").stat().st_mtime_ns == kept


def test_a_folder_of_another_job_and_a_wrong_tokenizer_are_refused(shards: Path) -> None:
    other = TokenizeJob(**{**job_of(shards).__dict__, "num_shards": 5})
    with pytest.raises(DataError, match="another tokenize job"):
        run_tokenize(other, progress=False)
    with pytest.raises(DataError) as caught:
        build_train_iterator(DataConfig(source="shards", path=str(shards), tokenizer=str(shards / "x.json")),
                             seq_len=SEQ_LEN, global_batch=4)
    assert "tokenizer" in str(caught.value)


def test_hosts_read_disjoint_rows_and_resume_exactly(shards: Path) -> None:
    cfg = DataConfig(source="shards", path=str(shards))
    whole = build_train_iterator(cfg, seq_len=SEQ_LEN, global_batch=8)
    hosts = [build_train_iterator(cfg, seq_len=SEQ_LEN, global_batch=8, process_index=p, process_count=2)
             for p in range(2)]
    for _ in range(5):
        joined = np.concatenate([next(h)["inputs"] for h in hosts])
        np.testing.assert_array_equal(joined, next(whole)["inputs"])
    resumed = build_train_iterator(cfg, seq_len=SEQ_LEN, global_batch=8)
    resumed.set_state(whole.get_state())
    np.testing.assert_array_equal(next(resumed)["inputs"], next(whole)["inputs"])
    assert stream_identity(cfg, SEQ_LEN)["corpus"] == corpus_summary(cfg)["fingerprint"]
    assert list(build_eval_sets(cfg, seq_len=SEQ_LEN, batch_size=4, num_batches=2)) == ["shards"]


def test_cli_tokenizes_and_training_on_shards_resumes_exactly(inputs: Path, tmp_path: Path) -> None:
    from launch.config import load_experiment, resolve
    from training.metrics import read_records
    from training.trainer import train

    out = tmp_path / "shards"
    assert main(["tokenize", str(inputs / "a.jsonl"), str(inputs / "b.parquet"), "--out", str(out),
                 "--num-shards", "2", "--processes", "2", "--validation-fraction", "0.2"]) == 0

    def experiment(run: str, **train_fields: Any) -> dict:
        return {"name": "shards", "run_dir": str(tmp_path / run),
                "model": {"vocab_size": 257, "d_model": 32, "n_layers": 2, "n_heads": 2, "d_ff": 64},
                "data": {"source": "shards", "path": str(out)},
                "train": {"steps": 6, "global_batch": 8, "seq_len": SEQ_LEN, "log_every": 1, "eval_every": 3,
                          "eval_batches": 1, **train_fields},
                "optim": {"learning_rate": 1e-2, "warmup_steps": 1},
                "checkpoint": {"every_steps": 2, "keep_last": 2}}

    def losses(run: str) -> dict:
        return {r["step"]: r["loss"] for r in read_records(tmp_path / run, "train")}

    assert train(resolve(load_experiment(experiment("a"))))["status"] == "complete"
    assert train(resolve(load_experiment(experiment("b", stop_after_steps=3))))["status"] == "stopped"
    assert train(resolve(load_experiment(experiment("b"))))["status"] == "complete"
    assert losses("a") == losses("b") and sorted(losses("a")) == list(range(1, 7))


def test_hf_source_reads_a_save_to_disk_folder_and_tokenize_takes_it_too(tmp_path: Path) -> None:
    datasets = pytest.importorskip("datasets")
    texts = [f"saved document {i} " * 3 for i in range(40)]
    datasets.Dataset.from_dict({"body": texts}).save_to_disk(str(tmp_path / "saved"))
    cfg = DataConfig(source="hf", path=str(tmp_path / "saved"), text_feature="body",
                     cache_dir=str(tmp_path / "cache"))
    summary = corpus_summary(cfg)
    assert summary["documents"] == 40 and summary["tokens"] == sum(len(t) + 1 for t in texts)
    jsonl = DataConfig(source="hf", path=str(tmp_path / "rows.jsonl"), text_feature="body",
                       cache_dir=str(tmp_path / "cache"))
    (tmp_path / "rows.jsonl").write_text("".join(json.dumps({"body": t}) + "\n" for t in texts))
    assert corpus_summary(jsonl)["fingerprint"] == summary["fingerprint"]  # same rows, same tokens
    job = TokenizeJob(inputs=(str(tmp_path / "saved"),), out=str(tmp_path / "out"), column="body", num_shards=2)
    manifest = run_tokenize(job, progress=False)
    assert sum(manifest["splits"][s]["tokens"] for s in ("train", "validation")) == summary["tokens"]


def test_a_missing_column_and_an_unfinished_folder_are_one_line_errors(inputs: Path, tmp_path: Path) -> None:
    job = TokenizeJob(inputs=(str(inputs / "a.jsonl"),), out=str(tmp_path / "o"), column="body", num_shards=1)
    with pytest.raises(DataError, match="no column 'body'"):
        run_tokenize(job, progress=False)
    with pytest.raises(DataError) as caught:
        corpus_summary(DataConfig(source="shards", path=str(tmp_path / "o")))
    assert "chinchax tokenize" in caught.value.hint


def test_hosts_share_a_job_and_the_last_one_writes_the_manifest(shards: Path, tmp_path: Path) -> None:
    job = TokenizeJob(**{**job_of(shards).__dict__, "out": str(tmp_path / "hosts")})
    assert run_tokenize(job, host_index=1, host_count=2, progress=False) is None  # shard 1 only
    assert sorted(p.name for p in Path(job.out).glob("shard-*.json")) == [done_file(1)]
    manifest = run_tokenize(job, host_index=0, host_count=2, progress=False)  # shards 0 and 2
    assert manifest["fingerprint"] == json.loads((shards / MANIFEST).read_text())["fingerprint"]
    with pytest.raises(DataError, match="host-index"):
        run_tokenize(job, host_index=2, host_count=2, progress=False)
