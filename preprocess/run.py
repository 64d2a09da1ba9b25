"""Raw image/video datasets -> codec streams -> BPE -> packed WebDataset token shards (Apache Beam).

    python -m preprocess.run --output out/images                          # embedded sample photos, all cores
    python -m preprocess.run --input 'photos/**.jpg' --output out/images   # ** spans folders
    python -m preprocess.run --modality video --input 'clips/*.mp4' --output out/videos
    python -m preprocess.run --input 'gs://bucket/laion/*.tar' --output gs://bucket/jpeg-lm \\
        --runner DataflowRunner --project P --region R --temp_location gs://bucket/tmp \\
        --sdk_container_image IMAGE

Any standard Beam pipeline option passes through (--runner, --direct_num_workers,
--direct_running_mode, Dataflow's --project/--region/--temp_location/--sdk_container_image …).
Locally (DirectRunner) the job uses every core unless --direct_num_workers says otherwise.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
import time
from typing import Any

import numpy as np
import pyarrow.parquet as pq
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import (
    DirectOptions,
    GoogleCloudOptions,
    SetupOptions,
    StandardOptions,
    WorkerOptions,
    _BeamArgumentParser,
)

from preprocess.options import DEFAULT_SAMPLE_SIZE, SAMPLE_SPLIT_GROUP, PreprocessOptions
from preprocess.pipeline import JobConfig, build_pipeline
from preprocess.runner import new_pipeline, pipeline_options, run_to_end, runs_locally
from shared.codec.registry import MODALITIES, get_profile
from shared.format.files import delete, exists, join, read_bytes
from shared.format.shards import MANIFEST, STAGING
from shared.format.tokenizer import ByteTokenizer


def input_paths(pattern: str) -> list[str]:
    """What ``--input`` matches, as the job's own reader (Beam's fileio) will match it: ``**`` spans folders."""
    return sorted(m.path for r in FileSystems.match([pattern]) for m in r.metadata_list)


def job_config(options: PreprocessOptions, progress_dir: str | None) -> JobConfig:
    """Check every flag before anything runs, and resolve the paper's defaults."""
    def fail(message: str) -> None:
        raise SystemExit(f"preprocess.run: error: {message}")

    if not options.output:
        fail("--output DIR is required (the dataset folder to write)")
    modality, defaults = options.modality, MODALITIES[options.modality]
    try:
        profile = get_profile(options.profile or defaults.profile)
    except ValueError as error:
        fail(str(error))
    if profile.modality != modality:
        fail(f"--profile {profile.name} is for {profile.modality}s, but --modality {modality} needs a profile "
             f"for {modality}s (e.g. {defaults.profile})")
    for pattern in options.input or []:
        paths = input_paths(pattern)
        if not paths:
            fail(f"--input {pattern!r} matches no file")
        parquet = [p for p in paths if p.endswith(".parquet")]
        if parquet:  # a wrong --parquet-column is a flag error: check the first file's schema up front
            try:
                with FileSystems.open(parquet[0], compression_type=CompressionTypes.UNCOMPRESSED) as handle:
                    names = pq.ParquetFile(handle).schema_arrow.names
            except Exception:  # noqa: BLE001 — a corrupt file is the workers' to reject, not a flag error
                names = [options.parquet_column]
            if options.parquet_column not in names:
                fail(f"{parquet[0]} has no column {options.parquet_column!r} (columns: {names}); pass --parquet-column")
    tokenizer_json = None
    if options.tokenizer:
        if not exists(options.tokenizer):
            fail(f"--tokenizer {options.tokenizer} does not exist")
        tokenizer_json = read_bytes(options.tokenizer).decode()
        try:
            vocab_size = ByteTokenizer.from_str(tokenizer_json).vocab_size
        except Exception as error:
            fail(f"--tokenizer {options.tokenizer} is not a codec-LM tokenizer.json ({error})")
    else:
        vocab_size = defaults.vocab_size if options.vocab_size is None else options.vocab_size
        if vocab_size < 258:
            fail(f"--vocab-size must be at least 258 (256 bytes + BOS + EOS), not {vocab_size}")
    seq_len = defaults.seq_len if options.seq_len is None else options.seq_len
    if seq_len < 1:
        fail(f"--seq-len must be positive, not {seq_len}")
    if not 0.0 <= options.val_fraction < 1.0:
        fail(f"--val-fraction must be in [0, 1), not {options.val_fraction}")
    split_group = options.split_group or (None if options.input else SAMPLE_SPLIT_GROUP)
    if split_group is not None:
        try:
            re.compile(split_group)
        except re.error as error:
            fail(f"--split-group {split_group!r} is not a regular expression ({error})")
    if options.bpe_sample < 1:
        fail(f"--bpe-sample must be positive, not {options.bpe_sample}")
    dtype = np.dtype(np.uint16 if vocab_size <= 1 << 16 else np.uint32)
    if options.shard_sequences is not None and options.shard_sequences < 1:
        fail(f"--shard-sequences must be positive, not {options.shard_sequences}")
    sequences_per_shard = options.shard_sequences or max(1, options.shard_bytes // ((seq_len + 1) * dtype.itemsize))
    sample_size = DEFAULT_SAMPLE_SIZE[modality] if options.sample_size is None else options.sample_size
    if sample_size < 1:
        fail(f"--sample-size must be positive, not {sample_size}")
    if options.max_pixels is not None and options.max_pixels < 1:
        fail(f"--max-pixels must be positive, not {options.max_pixels}")
    arguments: dict[str, Any] = {
        "modality": modality, "inputs": list(options.input or []) or f"embedded sample dataset ({sample_size} items)",
        "profile": profile.name, "vocab_size": vocab_size, "bpe_sample": options.bpe_sample,
        "tokenizer": options.tokenizer, "seq_len": seq_len, "val_fraction": options.val_fraction, "split_group": split_group,
        "seed": options.seed,
        "sequences_per_shard": sequences_per_shard, "parquet_column": options.parquet_column,
        "max_pixels": options.max_pixels,
    }
    return JobConfig(
        output=options.output.rstrip("/"), modality=modality, inputs=list(options.input or []),
        profile=profile.to_json(), vocab_size=vocab_size, bpe_sample=options.bpe_sample, tokenizer_json=tokenizer_json,
        seq_len=seq_len, val_fraction=options.val_fraction, split_group=split_group, seed=options.seed,
        tokens_per_shard=sequences_per_shard * (seq_len + 1), dtype=dtype.name, parquet_column=options.parquet_column,
        sample_size=sample_size, max_pixels=options.max_pixels, arguments=arguments, progress_dir=progress_dir,
    )


def print_help() -> None:
    """Our flags first, then the Beam options a user of this job is most likely to need."""
    parser = _BeamArgumentParser(prog="python -m preprocess.run", description=__doc__,
                                 usage="python -m preprocess.run --output DIR [--input PATTERN …] [flags] [Beam options]",
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    PreprocessOptions._add_argparse_args(parser)
    for beam_options in (StandardOptions, DirectOptions, GoogleCloudOptions, WorkerOptions, SetupOptions):
        beam_options._add_argparse_args(parser.add_argument_group(f"Beam {beam_options.__name__}"))
    parser.print_help()


def run(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the job; returns the manifest it wrote."""
    argv = argv if argv is not None else sys.argv[1:]
    if "-h" in argv or "--help" in argv:
        print_help()
        raise SystemExit(0)
    options = pipeline_options(argv)
    job_options = options.view_as(PreprocessOptions)
    with tempfile.TemporaryDirectory(prefix="codec-lm-progress-") as progress_dir:
        progress_dir = progress_dir if runs_locally(options) else None
        job = job_config(job_options, progress_dir)
        # A rerun into the same folder: the old manifest goes first, so a crash never looks complete.
        delete([join(job.output, MANIFEST), join(job.output, STAGING)])
        started = time.monotonic()
        pipeline = new_pipeline(options)
        build_pipeline(pipeline, job)
        run_to_end(pipeline, progress_dir)
    manifest = json.loads(read_bytes(join(job.output, MANIFEST)))
    print_summary(manifest, job.output, time.monotonic() - started)
    return manifest


def print_summary(manifest: dict[str, Any], output: str, seconds: float) -> None:
    totals = manifest["totals"]
    print(f"\n{output}: {manifest['profile']['name']}, vocab {manifest['vocab_size']}, seq_len {manifest['seq_len']} "
          f"({seconds:.0f} s)")
    print(f"  inputs {totals['inputs']:,} = encoded {totals['encoded']:,} + rejected {totals['rejected']:,}; "
          f"duplicates {totals['duplicates']:,}; documents {totals['documents']:,}")
    print(f"  tokens {totals['tokens']:,} in {totals['sequences']:,} sequences "
          f"({totals['dropped_tokens']:,} dropped at shard ends); "
          f"{totals['tokens'] / max(1, totals['documents']):,.0f} tokens per document")
    for split in ("train", "val"):
        shards = [s for s in manifest["shards"] if s["split"] == split]
        print(f"  {split}: {len(shards)} shards, {sum(s['sequences'] for s in shards):,} sequences, "
              f"{sum(s['bytes'] for s in shards) / 2**20:.1f} MiB")
    if manifest["rejection_reasons"]:
        print("  rejected: " + ", ".join(f"{reason} {count}" for reason, count in manifest["rejection_reasons"].items())
              + f" (details in {join(output, manifest['rejected'])})")


if __name__ == "__main__":
    run()
