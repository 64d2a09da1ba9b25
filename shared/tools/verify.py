"""`codec-shards verify`: every check a dataset must pass, its shards on every core.

The dataset-level checks (tokenizer, index files, unknown files, totals, where every input went) run in
the calling process. Each shard's checks (size, checksum, tar layout, ids, document boundaries, the
strict decode of every document) depend on that shard alone, so they run in a pool of processes (one
per core by default), or, through ``check_shards``, elsewhere: ``python -m preprocess.verify`` runs them
as a Beam pipeline on the engine that wrote the data, with the same report (``print_report``).
"""

from __future__ import annotations

import io
import json
import multiprocessing
import os
import tarfile
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from tqdm import tqdm

from shared.codec.errors import InvalidMediaError
from shared.format.dataset import Dataset
from shared.format.files import exists, read_bytes
from shared.format.shards import (
    DOCUMENTS,
    INPUTS,
    MANIFEST,
    OUTCOMES,
    REJECTED,
    TOKENIZER,
    document_tokens,
    input_bucket,
    input_buckets,
    sample_key,
    sha256_hex,
    shard_name_of,
)


@dataclass(frozen=True)
class ShardReport:
    path: str  # the shard's path in the manifest
    problems: list[str]
    documents: int  # documents in the shard (the complete ones strictly decoded, unless decoding was off)


# ---- the dataset as a whole --------------------------------------------------------------------
def check_dataset(dataset: Dataset) -> list[str]:
    """Every problem outside the shards' contents, as sentences."""
    problems: list[str] = []
    manifest = dataset.manifest
    try:
        tokenizer_text = read_bytes(dataset.path(manifest["tokenizer"]["path"]))
        if sha256_hex(tokenizer_text) != manifest["tokenizer"]["sha256"]:
            problems.append(f"{TOKENIZER}: sha256 differs from the manifest's")
        tokenizer = dataset.tokenizer
        if (tokenizer.vocab_size, tokenizer.bos_id, tokenizer.eos_id) != (
                manifest["vocab_size"], manifest["bos_id"], manifest["eos_id"]):
            problems.append(f"{TOKENIZER}: vocabulary/BOS/EOS disagree with the manifest")
    except Exception as error:  # noqa: BLE001 — each filesystem and tokenizer parser raises its own: a reported problem
        return problems + [f"{TOKENIZER}: cannot be read ({error}); nothing else can be checked"]
    try:
        documents = dataset.documents_table(["key", "source", "split", "shard", "tokens"])
    except Exception as error:  # noqa: BLE001 — each filesystem and Parquet reader raises its own: a reported problem
        return problems + [f"{DOCUMENTS}: cannot be read ({error}); nothing else can be checked"]

    known = {MANIFEST, manifest["tokenizer"]["path"], manifest["documents"], manifest["rejected"]}
    known |= {s["path"] for s in manifest["shards"]} | ({manifest["inputs"]} if "inputs" in manifest else set())
    for relative in dataset.files():
        if relative not in known:
            problems.append(f"{relative}: unknown file (not in the manifest)")

    # columnar (Arrow) counting: at 23M documents a Python object per row would not fit
    keys = documents.group_by("key").aggregate([("key", "count")])
    repeated = keys.filter(pc.greater(keys["key_count"], 1))["key"].to_pylist()
    if repeated:
        problems.append(f"{DOCUMENTS}: {len(repeated)} keys name more than one document (first: {repeated[0]})")
    shards_used = documents.group_by(["split", "shard"]).aggregate([]).to_pylist()
    listed = {(s["split"], shard_name_of(s)) for s in manifest["shards"]}
    places = {(r["split"], r["shard"]) for r in shards_used} - listed
    for split, name in sorted(places):
        problems.append(f"{DOCUMENTS}: documents in {split}/{name}, a shard the manifest does not list")
    totals = manifest["totals"]
    expected = {"documents": documents.num_rows, "sequences": sum(s["sequences"] for s in manifest["shards"]),
                "tokens": int(pc.sum(documents["tokens"]).as_py() or 0)}
    for name, value in expected.items():
        if totals.get(name) != value:
            problems.append(f"{MANIFEST}: totals.{name} is {totals.get(name)}, the data has {value}")
    if (totals["inputs"] != totals["encoded"] + totals["rejected"]
            or totals["encoded"] != totals["documents"] + totals["duplicates"]):
        problems.append(f"{MANIFEST}: totals do not add up "
                        "(inputs = encoded + rejected, encoded = documents + duplicates)")

    rejected: Counter[tuple[str, str]] = Counter()
    rejected_path = dataset.path(manifest["rejected"])
    if not exists(rejected_path):
        problems.append(f"{REJECTED}: missing")
    else:
        lines = read_bytes(rejected_path).decode().splitlines()
        if len(lines) != totals["rejected"]:
            problems.append(f"{REJECTED}: {len(lines)} lines, but the manifest counts {totals['rejected']} rejected")
        try:
            rejected = Counter((r["source"], r["reason"]) for r in map(json.loads, lines))
        except (ValueError, KeyError, TypeError) as error:
            problems.append(f"{REJECTED}: not one JSON record with source and reason per line ({error})")
    if "inputs" in manifest:
        problems += check_inputs(dataset, documents.select(["key", "source"]), rejected)
    return problems


def check_inputs(dataset: Dataset, documents: pa.Table, rejected: Counter[tuple[str, str]]) -> list[str]:
    """Input by input: each one a document of documents.parquet, a duplicate of one, or a rejection of
    rejected.jsonl; the outcome counts equal the manifest's totals; each row in its hash bucket."""
    problems: list[str] = []
    totals = dataset.manifest["totals"]
    kept, duplicate_keys, found_rejected = [], [], Counter()
    counts: Counter[str] = Counter()
    misplaced = malformed = 0
    try:
        with dataset.input_records() as records:
            if records.num_row_groups != input_buckets(totals["inputs"]):
                problems.append(f"{INPUTS}: {records.num_row_groups} row groups, expected "
                                f"{input_buckets(totals['inputs'])} for {totals['inputs']:,} inputs")
            for index in range(records.num_row_groups):  # one row group in memory at a time
                group = records.read_row_group(index)
                misplaced += sum(input_bucket(s, records.num_row_groups) != index for s in group["source"].to_pylist())
                outcome = group["outcome"]
                counts.update({e["values"]: e["counts"] for e in pc.value_counts(outcome).to_pylist()})
                is_rejected = pc.fill_null(pc.equal(outcome, "rejected"), False)
                # a document or duplicate names a key and no reason; a rejection names a reason and no key
                malformed += pc.sum(pc.or_(pc.not_equal(pc.is_null(group["key"]), is_rejected),
                                           pc.equal(pc.is_null(group["reason"]), is_rejected))).as_py() or 0
                kept.append(group.filter(pc.fill_null(pc.equal(outcome, "document"), False)).select(["key", "source"]))
                duplicate_keys.append(group.filter(pc.fill_null(pc.equal(outcome, "duplicate"), False))["key"])
                rows = group.filter(is_rejected).select(["source", "reason"]).to_pylist()
                found_rejected.update((r["source"], r["reason"]) for r in rows)
    except Exception as error:  # noqa: BLE001 — as above, for the inputs table
        return problems + [f"{INPUTS}: cannot be read ({error})"]

    if sum(counts.values()) != totals["inputs"]:
        problems.append(f"{INPUTS}: {sum(counts.values()):,} inputs, the manifest counts {totals['inputs']:,}")
    for outcome, total in zip(OUTCOMES, ("documents", "duplicates", "rejected")):
        if counts.get(outcome, 0) != totals[total]:
            problems.append(f"{INPUTS}: {counts.get(outcome, 0):,} inputs are {outcome}s, the manifest counts "
                            f"{totals[total]:,} {total}")
    unknown = sorted(set(counts) - set(OUTCOMES), key=str)
    if unknown:
        problems.append(f"{INPUTS}: unknown outcomes {unknown[:3]} (expected one of {', '.join(OUTCOMES)})")
    if misplaced:
        problems.append(f"{INPUTS}: {misplaced:,} rows outside their source's row group (lookups would miss them)")
    if malformed:
        problems.append(f"{INPUTS}: {malformed:,} rows whose key/reason do not fit their outcome")
    kept_table = pa.concat_tables(kept) if kept else documents.schema.empty_table()
    if not kept_table.sort_by("key").equals(documents.sort_by("key")):
        # Arrow anti-joins, not Python sets: a mismatch at 23M rows must not need 10 GB to report
        only_here = kept_table.join(documents, keys=["key", "source"], join_type="left anti")
        only_there = documents.join(kept_table, keys=["key", "source"], join_type="left anti")
        first = (only_here.num_rows and only_here.slice(0, 1).to_pylist()) or only_there.slice(0, 1).to_pylist()
        problems.append(f"{INPUTS}: its documents differ from {DOCUMENTS}'s ({only_here.num_rows:,} only in "
                        f"{INPUTS}, {only_there.num_rows:,} only in {DOCUMENTS}"
                        + (f"; first: {first[0]['source']} {first[0]['key']})" if first else "; rows repeated)"))
    duplicates = pa.chunked_array(duplicate_keys, pa.string()) if duplicate_keys else pa.chunked_array([], pa.string())
    orphans = len(duplicates) - (pc.sum(pc.is_in(duplicates, value_set=documents["key"].combine_chunks())).as_py() or 0)
    if orphans:
        problems.append(f"{INPUTS}: {orphans:,} duplicates name a document that does not exist")
    if found_rejected != rejected:
        differ = sorted((found_rejected - rejected) + (rejected - found_rejected))
        problems.append(f"{INPUTS}: its rejections differ from {REJECTED}'s ({len(differ):,} differ; first: "
                        f"{differ[0][0]} {differ[0][1]})")
    return problems


# ---- one shard -----------------------------------------------------------------------------------
def verify_shard(dataset: Dataset, shard: dict[str, Any], *, decode: bool) -> ShardReport:
    """Every problem of one shard, and how many of its documents were checked."""
    manifest = dataset.manifest
    width, dtype, vocab = manifest["seq_len"] + 1, np.dtype(manifest["dtype"]), manifest["vocab_size"]
    where, path, name = shard["path"], dataset.path(shard["path"]), shard_name_of(shard)
    rows = dataset.shard_rows(shard["split"], name)
    if not exists(path):
        return ShardReport(where, [f"{where}: missing"], len(rows))
    data = read_bytes(path)
    problems = []
    if len(data) != shard["bytes"]:
        problems.append(f"{where}: {len(data)} bytes, the manifest says {shard['bytes']}")
    if sha256_hex(data) != shard["sha256"]:
        problems.append(f"{where}: sha256 differs from the manifest's (corrupted or replaced)")
    windows = []
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
            for index, member in enumerate(tar.getmembers()):
                if member.name != f"{sample_key(name, index)}.npy" or not member.isfile():
                    problems.append(f"{where}: member {index} is {member.name!r}, "
                                    f"expected {sample_key(name, index)}.npy")
                    continue
                ids = np.load(io.BytesIO(tar.extractfile(member).read()), allow_pickle=False)
                if ids.shape != (width,) or ids.dtype != dtype:
                    problems.append(f"{where}: {member.name} is {ids.dtype}{list(ids.shape)}, "
                                    f"expected {dtype}[{width}]")
                    continue
                if ids.size and int(ids.max()) >= vocab:
                    problems.append(f"{where}: {member.name} holds id {int(ids.max())} >= vocab_size {vocab}")
                windows.append(ids)
    except (tarfile.TarError, ValueError, EOFError, OSError) as error:
        return ShardReport(where, problems + [f"{where}: not a readable tar of .npy samples ({error})"], len(rows))
    if len(windows) != shard["sequences"]:
        problems.append(f"{where}: {len(windows)} sequences, the manifest says {shard['sequences']}")
    if windows and not problems:
        problems += check_boundaries(where, np.stack(windows), rows, bos=manifest["bos_id"], eos=manifest["eos_id"])
    if not windows or problems or not decode:
        return ShardReport(where, problems, len(rows))
    windows_2d = np.stack(windows)
    for row in (row for row in rows if row["complete"]):
        stream = dataset.tokenizer.decode(document_tokens(windows_2d, row["sequence"], row["offset"], row["tokens"]))
        if len(stream) != row["stream_bytes"]:
            problems.append(f"{where}: document {row['key']} has {len(stream)} stream bytes, "
                            f"{DOCUMENTS} says {row['stream_bytes']}")
            continue
        try:
            dataset.profile.decode(stream, strict=True)
        except InvalidMediaError as error:
            problems.append(f"{where}: document {row['key']} does not decode ({error})")
    return ShardReport(where, problems, len(rows))


def check_boundaries(where: str, windows: np.ndarray, rows: list[dict[str, Any]], *, bos: int, eos: int) -> list[str]:
    """BOS exactly where documents.parquet says documents start, EOS where complete ones end."""
    flat, width, problems = windows.reshape(-1), windows.shape[1], []
    starts = {r["sequence"] * width + r["offset"] for r in rows if r["sequence"] * width + r["offset"] < flat.size}
    found_bos = set(np.flatnonzero(flat == bos).tolist())
    if found_bos != starts:
        problems.append(f"{where}: BOS at {len(found_bos)} places, {len(starts)} documents start there "
                        f"(first mismatch at token {min(found_bos ^ starts)})")
    ends = {r["sequence"] * width + r["offset"] + r["tokens"] - 1 for r in rows if r["complete"]}
    found_eos = set(np.flatnonzero(flat == eos).tolist())
    if found_eos != ends:
        problems.append(f"{where}: EOS at {len(found_eos)} places, {len(ends)} complete documents end there")
    return problems


# ---- every shard, on every core --------------------------------------------------------------------
OPENED: dict[str, Dataset] = {}  # per worker process: each dataset is opened once


def verify_shard_at(root: str, shard: dict[str, Any], decode: bool) -> ShardReport:
    if root not in OPENED:
        OPENED[root] = Dataset.open(root)
    return checked_shard(OPENED[root], shard, decode=decode)


def checked_shard(dataset: Dataset, shard: dict[str, Any], *, decode: bool) -> ShardReport:
    """``verify_shard``, where whatever a shard provokes (a folder in its place, a network error, a codec
    bug) is one problem of that shard: the other shards are still checked and reported."""
    try:
        return verify_shard(dataset, shard, decode=decode)
    except Exception as error:  # noqa: BLE001 — reported, never fatal
        return ShardReport(shard["path"], [f"{shard['path']}: cannot be checked ({type(error).__name__}: {error})"], 0)


def verify_shards(dataset: Dataset, *, decode: bool, workers: int | None = None,
                  shards: list[dict[str, Any]] | None = None) -> list[ShardReport]:
    """Each shard's report (of all, or of ``shards``), in manifest order, from ``workers`` processes
    (default: one per core)."""
    shards = dataset.manifest["shards"] if shards is None else shards
    workers = min(workers or len(os.sched_getaffinity(0)), max(1, len(shards)))
    total = dataset.manifest["totals"]["documents"] if shards is dataset.manifest["shards"] else None
    progress = tqdm(total=total, desc="verifying", unit="doc", smoothing=0.1)
    reports: dict[str, ShardReport] = {}
    with progress:
        if workers == 1:
            for shard in shards:
                reports[shard["path"]] = report = checked_shard(dataset, shard, decode=decode)
                progress.update(report.documents)
        else:
            # spawn, not fork: the parent has pyarrow's thread pools running, which a fork would copy half-alive
            context = multiprocessing.get_context("spawn")
            with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
                futures = [pool.submit(verify_shard_at, dataset.root, shard, decode) for shard in shards]
                for future in as_completed(futures):
                    report = future.result()
                    reports[report.path] = report
                    progress.update(report.documents)
    return [reports[shard["path"]] for shard in shards]


def verify(dataset: Dataset, *, decode: bool = True, workers: int | None = None,
           check_shards: Callable[[Dataset], list[ShardReport]] | None = None) -> list[str]:
    """Every problem found, as sentences; an empty list means the dataset is sound. ``check_shards``
    checks every shard instead of the local pool (``preprocess.verify``: a Beam pipeline)."""
    problems = check_dataset(dataset)
    if problems and problems[-1].endswith("nothing else can be checked"):
        return problems
    if check_shards is not None:
        reports = check_shards(dataset)
    else:
        reports = verify_shards(dataset, decode=decode, workers=workers)
    return problems + [p for shard in reports for p in shard.problems]


def print_report(dataset: Dataset, problems: list[str], *, decode: bool) -> int:
    """What `codec-shards verify` prints, and its exit status: 1 when there are problems."""
    for problem in problems:
        print(f"PROBLEM {problem}")
    if problems:
        print(f"{len(problems)} problems found in {dataset.root}")
        return 1
    totals = dataset.manifest["totals"]
    print(f"OK: {dataset.root}: {len(dataset.manifest['shards'])} shards, {totals['sequences']:,} sequences, "
          f"{totals['documents']:,} documents" + (", every document decodes strictly" if decode else "")
          + ("" if "inputs" in dataset.manifest else f"; not checked per input (no {INPUTS}: an older dataset)"))
    return 0
