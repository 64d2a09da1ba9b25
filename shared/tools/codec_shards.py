"""codec-shards: look inside a codec-LM dataset, trust it, debug it.

    codec-shards summary DIR [--json]                 totals, per split, tokens/document, vocabulary use
    codec-shards show DIR --shard train/shard-000000 --index 3 [--bytes]
    codec-shards decode DIR --out OUT [--split train] [--limit N] [--key KEY …] [--raw]
    codec-shards sheet DIR --out sheet.png [--n 64]
    codec-shards verify DIR [--no-decode]             exits 1 and lists every problem found

DIR is what `python -m preprocess.run` wrote (local, gs://, s3://). Also runnable as
`python -m shared.tools.codec_shards`.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import tarfile
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from shared.codec.errors import InvalidMediaError
from shared.format.dataset import Dataset, DatasetError
from shared.format.files import exists, read_bytes, safe_file_name, write_atomic
from shared.format.shards import (
    DOCUMENTS,
    MANIFEST,
    REJECTED,
    SPLITS,
    TOKENIZER,
    document_tokens,
    sample_key,
    sha256_hex,
    shard_name_of,
)
from shared.tools.contact_sheet import save_contact_sheet, strip


# ---- summary ---------------------------------------------------------------------------------
def summarize(dataset: Dataset, max_shards: int | None = None, top: int = 10) -> dict[str, Any]:
    manifest = dataset.manifest
    tokens = dataset.column("tokens").astype(np.int64)
    split_of = dataset.column("split")
    splits = {}
    for split in SPLITS:
        shards = dataset.shards(split)
        splits[split] = {"shards": len(shards), "sequences": sum(s["sequences"] for s in shards),
                         "documents": int((split_of == split).sum()), "tokens": sum(s["tokens"] for s in shards)}
    counts = np.zeros(manifest["vocab_size"], dtype=np.int64)
    stream_bytes = raw_bytes = 0
    shards = manifest["shards"][:max_shards]
    for shard in tqdm(shards, desc="reading shards", unit="shard", disable=not shards):
        windows = dataset.read_windows(shard)
        counts += np.bincount(windows.reshape(-1), minlength=len(counts))[:len(counts)]
        for row in dataset.shard_rows(shard["split"], shard_name_of(shard), complete=True):
            stream = dataset.tokenizer.decode(document_tokens(windows, row["sequence"], row["offset"], row["tokens"]))
            stream_bytes += len(stream)
            raw_bytes += dataset.profile.raw_pixel_bytes(stream)
    used = int((counts > 0).sum())
    order = np.argsort(-counts, kind="stable")[:top]
    return {
        "dataset": dataset.root, "profile": manifest["profile"]["name"], "vocab_size": manifest["vocab_size"],
        "seq_len": manifest["seq_len"], "totals": manifest["totals"], "splits": splits,
        "tokens_per_document": {"mean": float(tokens.mean()) if len(tokens) else 0.0,
                                "p50": float(np.percentile(tokens, 50)) if len(tokens) else 0.0,
                                "p95": float(np.percentile(tokens, 95)) if len(tokens) else 0.0,
                                "max": int(tokens.max()) if len(tokens) else 0},
        "vocabulary": {"shards_read": len(shards), "ids_used": used, "share_used": used / len(counts),
                       "top": [{"id": int(i), "count": int(counts[i]), "bytes": token_label(dataset, int(i))}
                               for i in order if counts[i]]},
        "compression_vs_raw_pixels": raw_bytes / stream_bytes if stream_bytes else None,
        "rejections": dict(Counter(manifest.get("rejection_reasons", {})).most_common(top)),
    }


def token_label(dataset: Dataset, token: int) -> str:
    if token == dataset.manifest["bos_id"]:
        return "<BOS>"
    if token == dataset.manifest["eos_id"]:
        return "<EOS>"
    return dataset.tokenizer.token_bytes[token].hex(" ")


def print_summary(summary: dict[str, Any]) -> None:
    totals = summary["totals"]
    print(f"{summary['dataset']}: {summary['profile']}, vocab {summary['vocab_size']}, seq_len {summary['seq_len']}")
    print(f"  inputs {totals['inputs']:,} = encoded {totals['encoded']:,} + rejected {totals['rejected']:,}; "
          f"duplicates {totals['duplicates']:,}; documents {totals['documents']:,}; "
          f"dropped tokens {totals['dropped_tokens']:,}")
    for split, figures in summary["splits"].items():
        print(f"  {split:5s}: {figures['shards']:,} shards, {figures['sequences']:,} sequences, "
              f"{figures['documents']:,} documents, {figures['tokens']:,} tokens")
    per = summary["tokens_per_document"]
    print(f"  tokens per document: mean {per['mean']:,.0f}, p50 {per['p50']:,.0f}, p95 {per['p95']:,.0f}, max {per['max']:,}")
    vocab = summary["vocabulary"]
    print(f"  vocabulary: {vocab['ids_used']} of {summary['vocab_size']} ids used ({vocab['share_used']:.1%}), "
          f"over {vocab['shards_read']} shards; most frequent:")
    for entry in vocab["top"]:
        print(f"    {entry['id']:6d}  {entry['count']:>12,}  {entry['bytes']}")
    if summary["compression_vs_raw_pixels"]:
        print(f"  compression vs raw pixels: {summary['compression_vs_raw_pixels']:.1f}x")
    if summary["rejections"]:
        print("  top rejection reasons: " + ", ".join(f"{r} {n:,}" for r, n in summary["rejections"].items()))


# ---- show ------------------------------------------------------------------------------------
def show(dataset: Dataset, shard_name: str, index: int, with_bytes: bool) -> str:
    shard = dataset.find_shard(shard_name)
    windows = dataset.read_windows(shard)
    if not 0 <= index < len(windows):
        raise DatasetError(f"{shard['path']} has {len(windows)} sequences; --index must be in 0..{len(windows) - 1}")
    ids = windows[index]
    name = shard_name_of(shard)
    starts = {r["offset"]: r for r in dataset.rows([("split", "=", shard["split"]), ("shard", "=", name),
                                                     ("sequence", "=", index)])}
    bos, eos = dataset.manifest["bos_id"], dataset.manifest["eos_id"]
    lines = [f"{shard['path']} sequence {index} (sample {sample_key(name, index)}): {len(ids)} ids"]
    segments = np.split(np.arange(len(ids)), [i for i in range(1, len(ids)) if ids[i] == bos or ids[i - 1] == eos])
    for segment in segments:
        first = int(segment[0])
        if ids[first] == bos:
            row = starts.get(first)
            lines.append(f"── BOS at {first}: document {row['key'] if row else '?'}"
                         + (f" ({row['source']}, {row['tokens']} tokens)" if row else ""))
        elif first == 0:
            lines.append("── continues a document from the previous sequence")
        chunk = [int(i) for i in ids[segment]]
        for start in range(0, len(chunk), 16):
            lines.append("   " + " ".join(f"{t:5d}" for t in chunk[start:start + 16]))
        if with_bytes:
            data = dataset.tokenizer.decode(chunk)
            for start in range(0, len(data), 32):
                lines.append(f"   {start:06x}  {data[start:start + 32].hex(' ')}")
        if ids[int(segment[-1])] == eos:
            lines.append(f"── EOS at {int(segment[-1])}")
    return "\n".join(lines)


# ---- decode and sheet ------------------------------------------------------------------------
def select_rows(dataset: Dataset, *, split: str | None, keys: list[str] | None,
                limit: int | None) -> list[dict[str, Any]]:
    filters = [("split", "=", split)] if split else []
    if keys:  # prefixes: find the full keys in the key column first, then read only their rows
        known = [str(k) for k in dataset.column("key")]
        matched = sorted({full for full in known for k in keys if full.startswith(k)})
        missing = [k for k in keys if not any(full.startswith(k) for full in matched)]
        if missing:
            raise DatasetError(f"no document with key {missing[0]!r}")
        rows = dataset.rows(filters + [("key", "in", matched)])
    else:
        rows = dataset.rows(filters + [("complete", "=", True)], limit=limit)
    incomplete = [r for r in rows if not r["complete"]]
    if keys and incomplete:
        print(f"codec-shards: {len(incomplete)} selected documents are cut at a shard end and cannot be rebuilt: "
              + ", ".join(r["key"] for r in incomplete[:5]), file=sys.stderr)
    rows = [r for r in rows if r["complete"]]
    return rows[:limit] if limit else rows


def decode_documents(dataset: Dataset, out: str, rows: list[dict[str, Any]], *, raw: bool) -> list[str]:
    """Write each document as a file inside ``out``; returns the paths written."""
    profile = dataset.profile
    out_dir = Path(out).resolve()
    written: list[str] = []
    names: set[str] = set()
    for row, _, stream in tqdm(dataset.document_streams(rows), total=len(rows), desc="decoding", unit="doc"):
        suffix, data = (profile.file_suffix, profile.restore(stream)) if raw else (profile.view_suffix, profile.viewable(stream))
        name = safe_file_name(row["key"], suffix, limit=150, fallback="document")
        if name in names:  # two keys that sanitise alike: keep both files
            stem, dot, suffix = name.rpartition(".")
            name = f"{stem}-{len(written)}{dot}{suffix}"
        names.add(name)
        target = (out_dir / name).resolve()
        if target.parent != out_dir:  # belt and braces: never write outside OUT
            raise DatasetError(f"refusing to write {target} outside {out_dir}")
        written.append(write_atomic(target, data))
    return written


def sheet(dataset: Dataset, out: str, count: int, split: str | None) -> str:
    rows = select_rows(dataset, split=split, keys=None, limit=count)
    items = []
    for row, _, stream in tqdm(dataset.document_streams(rows), total=len(rows), desc="decoding", unit="doc"):
        items.append((row["key"][:12], strip(dataset.profile.decode(stream).pictures)))
    if not items:
        raise DatasetError("no complete document to show")
    return str(save_contact_sheet(out, items, columns=8, cell=dataset.profile.sheet_cell))


# ---- verify ----------------------------------------------------------------------------------
def verify(dataset: Dataset, *, decode: bool = True) -> list[str]:
    """Every problem found, as sentences; an empty list means the dataset is sound."""
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
    except Exception as error:
        return problems + [f"{TOKENIZER}: cannot be read ({error}); nothing else can be checked"]
    try:
        keys = Counter(str(k) for k in dataset.column("key"))
        places = {(str(a), str(b)) for a, b in zip(dataset.column("split"), dataset.column("shard"))}
        document_tokens_total = int(dataset.column("tokens").sum())
    except Exception as error:
        return problems + [f"{DOCUMENTS}: cannot be read ({error}); nothing else can be checked"]

    known = {MANIFEST, manifest["tokenizer"]["path"], manifest["documents"], manifest["rejected"]}
    known |= {s["path"] for s in manifest["shards"]}
    for path in dataset.files():
        relative = path[len(dataset.root) + 1:]
        if relative not in known:
            problems.append(f"{relative}: unknown file (not in the manifest)")
    rejected_path = dataset.path(manifest["rejected"])
    if not exists(rejected_path):
        problems.append(f"{REJECTED}: missing")
    else:
        lines = read_bytes(rejected_path).decode().splitlines()
        if len(lines) != manifest["totals"]["rejected"]:
            problems.append(f"{REJECTED}: {len(lines)} lines, but the manifest counts {manifest['totals']['rejected']} rejected")

    repeated = [key for key, count in keys.items() if count > 1]
    if repeated:
        problems.append(f"{DOCUMENTS}: {len(repeated)} keys name more than one document (first: {repeated[0]})")
    width, dtype = manifest["seq_len"] + 1, np.dtype(manifest["dtype"])
    bos, eos, vocab = manifest["bos_id"], manifest["eos_id"], manifest["vocab_size"]
    for shard in tqdm(manifest["shards"], desc="verifying shards", unit="shard"):
        places.discard((shard["split"], shard_name_of(shard)))
        problems += verify_shard(dataset, shard, dataset.shard_rows(shard["split"], shard_name_of(shard)),
                                 width=width, dtype=dtype, bos=bos, eos=eos, vocab=vocab, decode=decode)
    for split, name in sorted(places):
        problems.append(f"{DOCUMENTS}: documents in {split}/{name}, a shard the manifest does not list")
    totals = manifest["totals"]
    expected = {"documents": sum(keys.values()), "sequences": sum(s["sequences"] for s in manifest["shards"]),
                "tokens": document_tokens_total}
    for name, value in expected.items():
        if totals.get(name) != value:
            problems.append(f"{MANIFEST}: totals.{name} is {totals.get(name)}, the data has {value}")
    if totals["inputs"] != totals["encoded"] + totals["rejected"] or totals["encoded"] != totals["documents"] + totals["duplicates"]:
        problems.append(f"{MANIFEST}: totals do not add up (inputs = encoded + rejected, encoded = documents + duplicates)")
    return problems


def verify_shard(dataset: Dataset, shard: dict[str, Any], rows: list[dict[str, Any]], *, width: int, dtype: np.dtype,
                 bos: int, eos: int, vocab: int, decode: bool) -> list[str]:
    where, path, name = shard["path"], dataset.path(shard["path"]), shard_name_of(shard)
    if not exists(path):
        return [f"{where}: missing"]
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
                    problems.append(f"{where}: member {index} is {member.name!r}, expected {sample_key(name, index)}.npy")
                    continue
                ids = np.load(io.BytesIO(tar.extractfile(member).read()), allow_pickle=False)
                if ids.shape != (width,) or ids.dtype != dtype:
                    problems.append(f"{where}: {member.name} is {ids.dtype}{list(ids.shape)}, expected {dtype}[{width}]")
                    continue
                if ids.size and int(ids.max()) >= vocab:
                    problems.append(f"{where}: {member.name} holds id {int(ids.max())} >= vocab_size {vocab}")
                windows.append(ids)
    except (tarfile.TarError, ValueError, EOFError, OSError) as error:
        return problems + [f"{where}: not a readable tar of .npy samples ({error})"]
    if len(windows) != shard["sequences"]:
        problems.append(f"{where}: {len(windows)} sequences, the manifest says {shard['sequences']}")
    if not windows or problems:
        return problems
    flat = np.stack(windows).reshape(-1)
    starts = {r["sequence"] * width + r["offset"] for r in rows if r["sequence"] * width + r["offset"] < flat.size}
    found_bos = set(np.flatnonzero(flat == bos).tolist())
    if found_bos != starts:
        problems.append(f"{where}: BOS at {len(found_bos)} places, {len(starts)} documents start there "
                        f"(first mismatch at token {min(found_bos ^ starts)})")
    ends = {r["sequence"] * width + r["offset"] + r["tokens"] - 1 for r in rows if r["complete"]}
    found_eos = set(np.flatnonzero(flat == eos).tolist())
    if found_eos != ends:
        problems.append(f"{where}: EOS at {len(found_eos)} places, {len(ends)} complete documents end there")
    if decode and not problems:
        windows_2d = np.stack(windows)
        for row in rows:
            if not row["complete"]:
                continue
            stream = dataset.tokenizer.decode(document_tokens(windows_2d, row["sequence"], row["offset"], row["tokens"]))
            if len(stream) != row["stream_bytes"]:
                problems.append(f"{where}: document {row['key']} has {len(stream)} stream bytes, {DOCUMENTS} says {row['stream_bytes']}")
                continue
            try:
                dataset.profile.decode(stream, strict=True)
            except InvalidMediaError as error:
                problems.append(f"{where}: document {row['key']} does not decode ({error})")
    return problems


# ---- the command line ------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="codec-shards", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    p = commands.add_parser("summary", help="totals, splits, tokens per document, vocabulary use, rejections")
    p.add_argument("dir")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.add_argument("--max-shards", type=int, help="read at most this many shards for vocabulary statistics")
    p = commands.add_parser("show", help="one sequence: token ids with document boundaries, optionally the bytes")
    p.add_argument("dir")
    p.add_argument("--shard", required=True, help="e.g. train/shard-000000 (as in the manifest)")
    p.add_argument("--index", type=int, required=True, help="sequence index within the shard")
    p.add_argument("--bytes", action="store_true", help="also show a hex view of the bytes the ids stand for")
    p = commands.add_parser("decode", help="rebuild documents as .jpg/.mp4 files, byte-identical to the codec's")
    p.add_argument("dir")
    p.add_argument("--out", required=True, help="folder to write into (created); nothing is written outside it")
    p.add_argument("--split", choices=SPLITS, default=None, help="only this split (default: all)")
    p.add_argument("--limit", type=int, help="at most this many documents")
    p.add_argument("--key", nargs="+", help="only these document keys (prefixes work)")
    p.add_argument("--raw", action="store_true",
                   help="the codec's own file (videos: the Annex-B .h264 stream) instead of the viewable one (.mp4)")
    p = commands.add_parser("sheet", help="a contact sheet PNG of decoded documents")
    p.add_argument("dir")
    p.add_argument("--out", required=True, help="PNG file to write")
    p.add_argument("--n", type=int, default=64, help="documents on the sheet (default 64)")
    p.add_argument("--split", choices=SPLITS, default="train")
    p = commands.add_parser("verify", help="check everything; exit 1 listing each problem")
    p.add_argument("dir")
    p.add_argument("--no-decode", action="store_true", help="skip the (slow) strict decode of every document")
    args = parser.parse_args(argv)

    try:
        dataset = Dataset.open(args.dir)
        if args.command == "summary":
            summary = summarize(dataset, args.max_shards)
            print(json.dumps(summary, indent=2)) if args.json else print_summary(summary)
        elif args.command == "show":
            print(show(dataset, args.shard, args.index, args.bytes))
        elif args.command == "decode":
            rows = select_rows(dataset, split=args.split, keys=args.key, limit=args.limit)
            written = decode_documents(dataset, args.out, rows, raw=args.raw)
            skipped = int((~dataset.column("complete")).sum())
            print(f"wrote {len(written)} files to {args.out}"
                  + (f" ({skipped} documents cut at shard ends cannot be rebuilt)" if skipped and not args.key else ""))
        elif args.command == "sheet":
            print(f"wrote {sheet(dataset, args.out, args.n, args.split)}")
        else:
            problems = verify(dataset, decode=not args.no_decode)
            for problem in problems:
                print(f"PROBLEM {problem}")
            if problems:
                print(f"{len(problems)} problems found in {dataset.root}")
                return 1
            print(f"OK: {dataset.root}: {len(dataset.manifest['shards'])} shards, "
                  f"{dataset.manifest['totals']['sequences']:,} sequences, {len(dataset.documents):,} documents"
                  + ("" if args.no_decode else ", every document decodes strictly"))
    except DatasetError as error:
        print(f"codec-shards: error: {error}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `codec-shards show … | head`
        sys.stderr.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
