"""``chinchax tokenize INPUTS --out DIR``: text to pre-tokenized ArrayRecord shards, once; a killed
job resumes, and hosts share one with ``--host-index i --host-count n``.
"""

from __future__ import annotations

import argparse
import json
import os

from training.tokenize_job import TokenizeJob, run_tokenize


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "tokenize", help="turn text into pre-tokenized shards for data.source=shards",
        description="Tokenize local files (text, JSONL, Parquet; folders and globs), a Hugging Face "
        "dataset saved with save_to_disk, or one on the Hub, into ArrayRecord shards and a manifest.",
    )
    parser.add_argument("inputs", nargs="*", help="files, folders, globs ('**' recurses), or a save_to_disk folder")
    parser.add_argument("--out", required=True, help="the shards folder (resumes an unfinished job)")
    parser.add_argument("--tokenizer", default="byte",
                        help="'byte', a SentencePiece .model, a tokenizer.json, or a Hugging Face tokenizer folder")
    parser.add_argument("--column", default="text", help="the text column of JSONL / Parquet / HF rows")
    parser.add_argument("--separator", default="", help="plain text: split files into documents at this string")
    parser.add_argument("--hf-name", help="a Hugging Face Hub dataset (instead of INPUTS)")
    parser.add_argument("--hf-config", help="the Hub dataset's configuration")
    parser.add_argument("--split", default="train", help="the Hugging Face split to read")
    parser.add_argument("--num-shards", type=int, default=8, help="shards of the whole job (fixed once started)")
    parser.add_argument("--validation-fraction", type=float, default=0.01,
                        help="share of documents held out for evaluation")
    parser.add_argument("--processes", type=int, default=os.cpu_count() or 1, help="worker processes on this host")
    parser.add_argument("--host-index", type=int, default=0, help="this host's place among --host-count hosts")
    parser.add_argument("--host-count", type=int, default=1, help="hosts sharing the job")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    job = TokenizeJob(inputs=tuple(args.inputs), out=args.out, tokenizer=args.tokenizer, column=args.column,
                      separator=args.separator, hf_name=args.hf_name, hf_config=args.hf_config,
                      split=args.split, num_shards=args.num_shards, validation_fraction=args.validation_fraction)
    manifest = run_tokenize(job, processes=args.processes, host_index=args.host_index, host_count=args.host_count)
    if manifest is None:
        print(f"this host's shards are done; other hosts' are not yet, so {args.out} has no manifest yet")
        return 0
    splits = manifest["splits"]
    print(json.dumps({"out": args.out, "fingerprint": manifest["fingerprint"],
                      "tokenizer": manifest["tokenizer"]["spec"],
                      **{f"{s}_tokens": splits[s]["tokens"] for s in splits},
                      **{f"{s}_documents": splits[s]["documents"] for s in splits},
                      "text_mb": round(sum(splits[s]["text_bytes"] for s in splits) / 1e6, 3)}, indent=1))
    return 0
