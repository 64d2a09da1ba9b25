"""codec-shards: look inside a codec-LM dataset, trust it, debug it.

    codec-shards summary DIR [--json]                 totals, per split, tokens/document, vocabulary use
    codec-shards show DIR --shard train/shard-000000 --index 3 [--bytes]
    codec-shards decode DIR --out OUT [--split train] [--limit N] [--key KEY …] [--raw]
    codec-shards sheet DIR --out sheet.png [--num-documents 64]
    codec-shards trace DIR FILE …                     what happened to an input: document, duplicate, rejected
    codec-shards verify DIR [--no-decode] [--workers N]
                                                      exits 1 and lists every problem found; all cores

DIR is what `python -m preprocess.run` wrote (local, gs://, s3://). Also runnable as
`python -m shared.tools.codec_shards`. The same checks with the shards checked by a Beam pipeline on any
runner: `python -m preprocess.verify DIR --runner DataflowRunner …` (the preprocess extra).
Exit status: 0 done, 1 problems found or a folder that is not a readable dataset, 2 a usage error.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from shared.format.dataset import Dataset, DatasetError
from shared.format.files import safe_file_name, write_atomic
from shared.format.shards import DOCUMENTS, INPUTS, SPLITS, document_tokens, sample_key, shard_name_of
from shared.tools import cli
from shared.tools.contact_sheet import save_contact_sheet, strip
from shared.tools.verify import print_report, verify

PROG = "codec-shards"


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
        "outcomes": dataset.outcome_counts() if "inputs" in manifest else None,
    }


def token_label(dataset: Dataset, token: int) -> str:
    if token == dataset.manifest["bos_id"]:
        return "<BOS>"
    if token == dataset.manifest["eos_id"]:
        return "<EOS>"
    return dataset.tokenizer.token_bytes[token].hex(" ")


def print_summary(summary: dict[str, Any]) -> None:
    totals, outcomes = summary["totals"], summary["outcomes"]
    print(f"{summary['dataset']}: {summary['profile']}, vocab {summary['vocab_size']}, seq_len {summary['seq_len']}")
    print(f"  inputs {totals['inputs']:,} = encoded {totals['encoded']:,} + rejected {totals['rejected']:,}; "
          f"duplicates {totals['duplicates']:,}; documents {totals['documents']:,}; "
          f"dropped tokens {totals['dropped_tokens']:,}")
    if outcomes:
        share = {k: f"{outcomes[k] / max(1, totals['inputs']):.1%}" for k in ("document", "duplicate", "rejected")}
        print(f"  every input ({INPUTS}): {outcomes['document']:,} documents ({share['document']}), "
              f"{outcomes['duplicate']:,} duplicates ({share['duplicate']}), "
              f"{outcomes['rejected']:,} rejected ({share['rejected']})"
              + (": " + ", ".join(f"{r} {n:,}" for r, n in outcomes["reasons"].items()) if outcomes["reasons"] else ""))
    else:
        print(f"  (no {INPUTS}: made before per-input records; rerun the job to get them)")
    for split, figures in summary["splits"].items():
        print(f"  {split:5s}: {figures['shards']:,} shards, {figures['sequences']:,} sequences, "
              f"{figures['documents']:,} documents, {figures['tokens']:,} tokens")
    per = summary["tokens_per_document"]
    print(f"  tokens per document: mean {per['mean']:,.0f}, p50 {per['p50']:,.0f}, "
          f"p95 {per['p95']:,.0f}, max {per['max']:,}")
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
    try:
        shard = dataset.find_shard(shard_name)
    except DatasetError as error:  # the flag names no shard of this dataset
        raise cli.UsageError(f"--shard {shard_name}: {error}") from None
    windows = dataset.read_windows(shard)
    if not 0 <= index < len(windows):
        raise cli.UsageError(f"{shard['path']} has {len(windows)} sequences; --index must be in "
                             f"0..{len(windows) - 1}")
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
            raise cli.UsageError(f"--key {missing[0]}: no document with that key")
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
        if raw:
            suffix, data = profile.file_suffix, profile.restore(stream)
        else:
            suffix, data = profile.view_suffix, profile.viewable(stream)
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


# ---- trace -------------------------------------------------------------------------------------
def trace(dataset: Dataset, name: str) -> list[str]:
    """What happened to the input ``name`` (its source as the job named it, or its path's end), as lines;
    none when no input has that name."""
    found = dataset.find_inputs(name)
    keys = sorted({row["key"] for row in found if row["key"]})
    columns = ["key", "source", "split", "shard", "sequence", "offset", "tokens", "complete"]
    documents = {r["key"]: r for r in dataset.rows([("key", "in", keys)], columns=columns)} if keys else {}
    lines = []
    for row in found:
        document = documents.get(row["key"])
        if row["outcome"] == "rejected":
            lines.append(f"{row['source']}: rejected ({row['reason']}): {row['message']}")
        elif document is None:
            lines.append(f"{row['source']}: {row['outcome']} {row['key']}, which {DOCUMENTS} does not hold "
                         "(run `codec-shards verify`)")
        elif row["outcome"] == "duplicate":
            lines.append(f"{row['source']}: duplicate: the same stream as document {row['key']}, kept from "
                         f"{document['source']}")
        else:
            place = (f"{document['split']}/{document['shard']} sequence {document['sequence']} offset "
                     f"{document['offset']}, {document['tokens']:,} tokens")
            lines.append(f"{row['source']}: document {row['key']} in {place}"
                         + ("" if document["complete"] else " (cut at the shard's end: not trained on whole)"))
    return lines


# ---- the command line ------------------------------------------------------------------------
def verify_on_beam(args: argparse.Namespace, beam_argv: list[str]) -> int:
    """``verify --runner …`` of the release before: ``python -m preprocess.verify`` with the same arguments,
    in its own process (this command imports nothing of the Beam job); its exit status."""
    cli.warn_deprecated(PROG, "verify --runner", "python -m preprocess.verify DIR --runner …")
    if importlib.util.find_spec("apache_beam") is None:
        raise cli.UsageError("verify --runner needs the Beam job's dependencies: pip install 'codec-lm[preprocess]'")
    command = [sys.executable, "-m", "preprocess.verify", args.dir, "--runner", args.runner, *beam_argv]
    command += ["--no_decode"] * args.no_decode + (["--report", args.report] if args.report else [])
    return subprocess.run(command).returncode


@cli.command(PROG)
def main(argv: list[str] | None = None) -> int:
    parser = cli.parser(PROG, __doc__)
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
    p.add_argument("--num-documents", type=int, default=64, metavar="N", help="documents on the sheet (default 64)")
    cli.deprecated(p, "--n", "--num-documents", type=int)
    p.add_argument("--split", choices=SPLITS, default="train")
    p = commands.add_parser("trace",
                            help="what happened to an input: which document, duplicate of which, or why rejected")
    p.add_argument("dir")
    p.add_argument("inputs", nargs="+", metavar="FILE",
                   help="an input as the job named it (path, shard.tar#member, file.parquet#row), or its path's end")
    p = commands.add_parser(
        "verify", help="check everything; exit 1 listing each problem",
        description="Check the manifest, the index files, where every input went, and each shard (size, checksum, "
                    "layout, ids, document boundaries, a strict decode of every document), the shards on every "
                    "core. On a Beam runner: python -m preprocess.verify DIR --runner … (same report and exit "
                    "status).")
    p.add_argument("dir")
    p.add_argument("--no-decode", action="store_true", help="skip the (slow) strict decode of every document")
    p.add_argument("--workers", type=int, help="processes checking shards locally (default: one per core)")
    p.add_argument("--runner", help=argparse.SUPPRESS)  # deprecated: python -m preprocess.verify
    p.add_argument("--report", help=argparse.SUPPRESS)  # with --runner only
    args, beam_argv = parser.parse_known_args(argv)
    if args.command != "verify" and beam_argv:
        parser.error(f"unrecognized arguments: {' '.join(beam_argv)}")
    if args.command == "verify" and beam_argv and not args.runner:
        parser.error(f"unrecognized arguments: {' '.join(beam_argv)} (Beam pipeline options need "
                     "python -m preprocess.verify DIR --runner …)")
    if args.command == "verify" and args.workers is not None and args.workers < 1:
        parser.error(f"--workers must be positive, not {args.workers}")
    if args.command == "verify" and args.runner and args.workers is not None:
        parser.error("--workers is for local checking; with --runner the runner's own options say how many workers")
    if args.command == "verify" and args.report and not args.runner:
        parser.error("--report is where a --runner pipeline writes its findings; a local verify prints them")
    return run_command(args, beam_argv)


def run_command(args: argparse.Namespace, beam_argv: list[str]) -> int:
    """The subcommand ``args`` names: a missing DIR or unwritable --out is a usage error (2), a folder that
    is not a readable dataset a failure (1)."""
    cli.existing_dir(args.dir, "dataset")
    if args.command == "verify" and args.runner:
        return verify_on_beam(args, beam_argv)
    dataset = Dataset.open(args.dir)
    if args.command in ("decode", "sheet"):
        cli.writable(args.out, "--out", folder=args.command == "decode")
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
        print(f"wrote {sheet(dataset, args.out, args.num_documents, args.split)}")
    elif args.command == "trace":
        missing = []
        for name in args.inputs:
            lines = trace(dataset, name)
            print("\n".join(lines) if lines else f"{name}: no input of that name")
            missing += [] if lines else [name]
        if missing:
            print(f"{PROG}: {len(missing)} names matched no input. Inputs are named as the job read them "
                  "(a path as --input spelled it, shard.tar#member, file.parquet#row, sample:name); the end of "
                  "a path also matches.", file=sys.stderr)
            return 1
    else:
        problems = verify(dataset, decode=not args.no_decode, workers=args.workers)
        return print_report(dataset, problems, decode=not args.no_decode)
    return 0


if __name__ == "__main__":
    sys.exit(main())
