"""Stage 10: the dataset's index files, the manifest last (no manifest, no dataset).

Runs once, after every shard is written: writes tokenizer.json, merges the per-shard document rows
into documents.parquet and the per-bucket input rows into inputs.parquet (streaming, one shard or
bucket at a time), writes rejected.jsonl, removes what a previous or killed run left behind (old
shards, temporary files), checks that every input is accounted for, and writes manifest.json.
"""

from __future__ import annotations

import json
import platform
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import av
import pyarrow.parquet as pq

from preprocess.output_folder import is_own_file
from shared.format.files import delete, join, matching, open_atomic, read_parquet, write_atomic
from shared.format.shards import (
    DOCUMENT_SCHEMA,
    DOCUMENTS,
    FORMAT,
    INPUT_SCHEMA,
    INPUTS,
    MANIFEST,
    REJECTED,
    SPLITS,
    STAGING,
    TOKENIZER,
    input_buckets,
    manifest_json,
    sha256_hex,
    shard_name_of,
    staged_documents_path,
    staged_inputs_path,
)
from shared.format.tokenizer import ByteTokenizer

PACKAGES = ("codec-lm", "apache-beam", "pillow", "av", "tokenizers", "numpy", "pyarrow", "webdataset")


def library_versions() -> dict[str, str]:
    versions = {"python": platform.python_version(), "ffmpeg": ".".join(map(str, av.library_versions["libavcodec"]))}
    for package in PACKAGES:
        try:
            versions[package] = version(package)
        except PackageNotFoundError:
            versions[package] = "not installed"
    return versions


def relative_to(folder: str, path: str) -> str:
    """``path`` (as ``matching(join(folder, …))`` spells it) relative to ``folder``."""
    return path[len(folder.rstrip("/")) + 1:]


def merge_document_rows(output: str, shards: list[dict[str, Any]]) -> None:
    """documents.parquet in shard order, one shard's rows in memory at a time."""
    with open_atomic(join(output, DOCUMENTS)) as handle, pq.ParquetWriter(handle, DOCUMENT_SCHEMA) as writer:
        for shard in shards:
            source = join(output, staged_documents_path(shard["split"], shard_name_of(shard)))
            writer.write_table(read_parquet(source, schema=DOCUMENT_SCHEMA))


def merge_input_rows(output: str, inputs: int, written: list[dict[str, Any]]) -> dict[str, int]:
    """inputs.parquet: bucket b is row group b (empty when no input hashed there); returns rows per outcome."""
    staged = {record["bucket"] for record in written}
    outcomes: dict[str, int] = {}
    for record in written:
        for outcome, count in record["outcomes"].items():
            outcomes[outcome] = outcomes.get(outcome, 0) + count
    with open_atomic(join(output, INPUTS)) as handle, pq.ParquetWriter(handle, INPUT_SCHEMA) as writer:
        for bucket in range(input_buckets(inputs)):
            if bucket not in staged:
                writer.write_table(INPUT_SCHEMA.empty_table())
                continue
            writer.write_table(read_parquet(join(output, staged_inputs_path(bucket)), schema=INPUT_SCHEMA))
    return outcomes


def finalize(_: Any, *, output: str, config: dict[str, Any], profile_record: dict[str, Any],
             shards: list[dict[str, Any]], rejected: list[dict[str, str]], input_records: list[dict[str, Any]],
             inputs: int, encoded: int, duplicates: int, tokenizer_json: str, seq_len: int) -> dict[str, Any]:
    rejected = sorted(rejected, key=lambda r: (r["source"], r["reason"], r["message"]))
    write_atomic(join(output, REJECTED), "".join(json.dumps(r, sort_keys=True) + "\n" for r in rejected))
    if not tokenizer_json:
        raise RuntimeError(f"none of the {inputs} inputs could be encoded; see {join(output, REJECTED)} for why")
    tokenizer = ByteTokenizer.from_str(tokenizer_json)
    write_atomic(join(output, TOKENIZER), tokenizer_json)

    shards = sorted(shards, key=lambda s: (SPLITS.index(s["split"]), s["path"]))
    merge_document_rows(output, shards)
    outcomes = merge_input_rows(output, inputs, input_records)
    wanted = {join(output, s["path"]) for s in shards}
    # Shards of an earlier run that this one did not write, and temporary files of writes that never
    # finished (a killed run, a retried worker). Only names this job writes: nothing else in the folder.
    leftovers = [p for split in SPLITS for p in matching(join(output, split, "shard-*.tar")) + matching(
        join(output, split, ".*.tmp-*")) if p not in wanted] + matching(join(output, ".*.tmp-*"))
    delete([join(output, STAGING)] + [p for p in leftovers if is_own_file(relative_to(output, p))])

    documents = sum(s["documents"] for s in shards)
    totals = {
        "inputs": inputs, "encoded": encoded, "rejected": len(rejected), "duplicates": duplicates,
        "documents": documents, "tokens": sum(s["tokens"] + s["dropped_tokens"] for s in shards),
        "sequences": sum(s["sequences"] for s in shards), "dropped_tokens": sum(s["dropped_tokens"] for s in shards),
    }
    recorded = {"document": documents, "duplicate": duplicates, "rejected": len(rejected)}
    if inputs != encoded + len(rejected) or encoded != documents + duplicates or outcomes != {
            k: v for k, v in recorded.items() if v}:
        raise RuntimeError(f"accounting error, please report it: {totals}; {INPUTS} holds {outcomes}")
    rejection_reasons: dict[str, int] = {}
    for r in rejected:
        rejection_reasons[r["reason"]] = rejection_reasons.get(r["reason"], 0) + 1
    manifest = {
        "format": FORMAT,
        "modality": config["modality"],
        "profile": profile_record,
        "tokenizer": {"path": TOKENIZER, "sha256": sha256_hex(tokenizer_json.encode())},
        "vocab_size": tokenizer.vocab_size, "bos_id": tokenizer.bos_id, "eos_id": tokenizer.eos_id,
        "dtype": tokenizer.dtype.name, "seq_len": seq_len,
        "shards": [{k: s[k] for k in ("split", "path", "sha256", "bytes", "sequences", "tokens")} for s in shards],
        "totals": totals,
        "rejection_reasons": dict(sorted(rejection_reasons.items())),
        "documents": DOCUMENTS, "rejected": REJECTED, "inputs": INPUTS,
        "arguments": config,
        "versions": library_versions(),
    }
    write_atomic(join(output, MANIFEST), manifest_json(manifest))
    return manifest
