"""Stage 10: the dataset's index files, the manifest last (no manifest, no dataset).

Runs once, after every shard is written: writes tokenizer.json, merges the per-shard document rows
into documents.parquet (streaming, one shard's rows at a time), writes rejected.jsonl, removes shards
a previous run left behind, checks that every input is accounted for, and writes manifest.json.
"""

from __future__ import annotations

import json
import platform
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import av
import pyarrow.parquet as pq

from shared.format.files import delete, join, matching, open_atomic, open_binary, write_atomic
from shared.format.shards import (
    DOCUMENT_SCHEMA,
    DOCUMENTS,
    FORMAT,
    MANIFEST,
    REJECTED,
    SPLITS,
    STAGING,
    TOKENIZER,
    manifest_json,
    sha256_hex,
    shard_name_of,
    staged_documents_path,
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


def merge_document_rows(output: str, shards: list[dict[str, Any]]) -> None:
    """documents.parquet in shard order, one shard's rows in memory at a time."""
    with open_atomic(join(output, DOCUMENTS)) as handle, pq.ParquetWriter(handle, DOCUMENT_SCHEMA) as writer:
        for shard in shards:
            with open_binary(join(output, staged_documents_path(shard["split"], shard_name_of(shard)))) as source:
                writer.write_table(pq.read_table(source, schema=DOCUMENT_SCHEMA))


def finalize(_: Any, *, output: str, config: dict[str, Any], profile_record: dict[str, Any],
             shards: list[dict[str, Any]], rejected: list[dict[str, str]], inputs: int, encoded: int, duplicates: int,
             tokenizer_json: str, seq_len: int) -> dict[str, Any]:
    rejected = sorted(rejected, key=lambda r: (r["source"], r["reason"], r["message"]))
    write_atomic(join(output, REJECTED), "".join(json.dumps(r, sort_keys=True) + "\n" for r in rejected))
    if not tokenizer_json:
        raise RuntimeError(f"none of the {inputs} inputs could be encoded; see {join(output, REJECTED)} for why")
    tokenizer = ByteTokenizer.from_str(tokenizer_json)
    write_atomic(join(output, TOKENIZER), tokenizer_json)

    shards = sorted(shards, key=lambda s: (SPLITS.index(s["split"]), s["path"]))
    merge_document_rows(output, shards)
    wanted = {join(output, s["path"]) for s in shards}
    delete([p for split in SPLITS for p in matching(join(output, split, "shard-*.tar")) if p not in wanted])
    delete([join(output, STAGING)])

    documents = sum(s["documents"] for s in shards)
    totals = {
        "inputs": inputs, "encoded": encoded, "rejected": len(rejected), "duplicates": duplicates,
        "documents": documents, "tokens": sum(s["tokens"] + s["dropped_tokens"] for s in shards),
        "sequences": sum(s["sequences"] for s in shards), "dropped_tokens": sum(s["dropped_tokens"] for s in shards),
    }
    if inputs != encoded + len(rejected) or encoded != documents + duplicates:
        raise RuntimeError(f"accounting error, please report it: {totals}")
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
        "documents": DOCUMENTS, "rejected": REJECTED,
        "arguments": config,
        "versions": library_versions(),
    }
    write_atomic(join(output, MANIFEST), manifest_json(manifest))
    return manifest
