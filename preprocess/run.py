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
A rerun into the same --output with the same inputs and flags replaces the dataset; a folder holding one
made otherwise, or files the job does not write, is refused unless --overwrite (which replaces only the
job's own files). --dry_run=True checks the flags, the inputs and the output folder, builds (on
Dataflow: translates) the pipeline, and writes nothing.
Exit status: 0 done, 1 the job failed, 2 a usage error (docs/cli.md).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import apache_beam as beam
import numpy as np
import pyarrow.parquet as pq
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import (
    DirectOptions,
    GoogleCloudOptions,
    PipelineOptions,
    SetupOptions,
    StandardOptions,
    WorkerOptions,
    _BeamArgumentParser,
)

from preprocess.options import DEFAULT_SAMPLE_SIZE, SAMPLE_SPLIT_GROUP, PreprocessOptions, renamed_flags
from preprocess.output_folder import check_output_folder, clear_previous_run
from preprocess.pipeline import JobConfig, build_pipeline
from preprocess.runner import checked_pipeline_options, is_dry_run, new_pipeline, run_to_end, runs_locally
from shared.codec.registry import MODALITIES, get_profile
from shared.errors import CodecLmError
from shared.format.files import exists, is_remote, join, read_bytes
from shared.format.shards import MANIFEST
from shared.format.stores import StoreError, check_folder
from shared.format.tokenizer import ByteTokenizer
from shared.tools import cli
from shared.tools.cli import UsageError

PROG = "python -m preprocess.run"


class JobFailed(CodecLmError):
    """The pipeline ran and failed (exit status 1): a worker's error, or finalize's accounting."""


def last_line(error: BaseException) -> str:
    """The line of an error that says what went wrong: Beam wraps a worker's error in a message that holds
    the worker's traceback and ends with the original ``Type: message [while running 'Step']``."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[-1] if lines else type(error).__name__


def input_paths(pattern: str) -> list[str]:
    """What ``--input`` matches, as the job's own reader (Beam's fileio) will match it: ``**`` spans folders."""
    return sorted(m.path for r in FileSystems.match([pattern]) for m in r.metadata_list)


def writable_output(output: str, dry_run: bool) -> None:
    """A local ``--output`` can be made and written, tried for real; a dry run removes the folders it made.
    (A remote one was tried by ``check_stores``.)"""
    if is_remote(output):
        return
    made = [folder for folder in (Path(output), *Path(output).parents) if not folder.exists()]  # deepest first
    cli.writable(output, "--output")
    if dry_run:
        for folder in made:
            with contextlib.suppress(OSError):
                folder.rmdir()


def check_stores(options: PreprocessOptions, dry_run: bool) -> None:
    """Object stores before anything is listed or read: one line for a missing credential or bucket, no right
    to write --output, or an --output that is a bucket's root, instead of the clients' retries and tracebacks.
    A dry run does not touch the output's store (it may run where no credentials are); the inputs it
    matches, it must reach."""
    if is_remote(options.output):
        try:
            check_folder(options.output, "--output")
        except StoreError as error:
            raise UsageError(str(error)) from None
        if not dry_run:
            cli.writable(options.output, "--output")
    for pattern in options.input or []:
        cli.store_ready(pattern, "--input")


def job_config(options: PreprocessOptions, progress_dir: str | None, dry_run: bool = False) -> JobConfig:
    """Check every flag before anything runs, and resolve the paper's defaults. A wrong flag is a
    ``UsageError``; no input is read before the output folder is known to be writable."""
    if not options.output:
        raise UsageError("--output DIR is required (the dataset folder to write)")
    check_stores(options, dry_run)
    matched: dict[str, list[str]] = {}
    for pattern in options.input or []:
        matched[pattern] = input_paths(pattern)
        if not matched[pattern]:
            raise UsageError(f"--input {pattern}: no such file" if not any(c in pattern for c in "*?[")
                             else f"--input {pattern!r} matches no file")
    modality, defaults = options.modality, MODALITIES[options.modality]
    try:
        profile = get_profile(options.profile or defaults.profile)
    except ValueError as error:
        raise UsageError(str(error)) from None
    if profile.modality != modality:
        raise UsageError(f"--profile {profile.name} is for {profile.modality}s, but --modality {modality} needs a "
                         f"profile for {modality}s (e.g. {defaults.profile})")
    tokenizer_json = None
    if options.tokenizer:
        if not exists(options.tokenizer):
            raise UsageError(f"--tokenizer {options.tokenizer}: no such file")
        tokenizer_json = read_bytes(options.tokenizer).decode()
        try:
            vocab_size = ByteTokenizer.from_str(tokenizer_json).vocab_size
        except Exception as error:  # noqa: BLE001 — whatever the file holds, it is the flag that is wrong
            raise UsageError(f"--tokenizer {options.tokenizer} is not a codec-LM tokenizer.json ({error})") from None
    else:
        vocab_size = defaults.vocab_size if options.vocab_size is None else options.vocab_size
        if vocab_size < 258:
            raise UsageError(f"--vocab_size must be at least 258 (256 bytes + BOS + EOS), not {vocab_size}")
    seq_len = defaults.seq_len if options.seq_len is None else options.seq_len
    if seq_len < 1:
        raise UsageError(f"--seq_len must be positive, not {seq_len}")
    if not 0.0 <= options.val_fraction < 1.0:
        raise UsageError(f"--val_fraction must be in [0, 1), not {options.val_fraction}")
    split_group = options.split_group or (None if options.input else SAMPLE_SPLIT_GROUP)
    if split_group is not None:
        try:
            re.compile(split_group)
        except re.error as error:
            raise UsageError(f"--split_group {split_group!r} is not a regular expression ({error})") from None
    if options.bpe_sample < 1:
        raise UsageError(f"--bpe_sample must be positive, not {options.bpe_sample}")
    dtype = np.dtype(np.uint16 if vocab_size <= 1 << 16 else np.uint32)
    if options.shard_sequences is not None and options.shard_sequences < 1:
        raise UsageError(f"--shard_sequences must be positive, not {options.shard_sequences}")
    sequences_per_shard = options.shard_sequences or max(1, options.shard_bytes // ((seq_len + 1) * dtype.itemsize))
    sample_size = DEFAULT_SAMPLE_SIZE[modality] if options.sample_size is None else options.sample_size
    if sample_size < 1:
        raise UsageError(f"--sample_size must be positive, not {sample_size}")
    if options.max_pixels is not None and options.max_pixels < 1:
        raise UsageError(f"--max_pixels must be positive, not {options.max_pixels}")
    writable_output(options.output, dry_run)  # the first check that may make something: the folder
    for paths in matched.values():
        parquet = [p for p in paths if p.endswith(".parquet")]
        if parquet:  # a wrong --parquet_column is a flag error: check the first file's schema up front
            try:
                with FileSystems.open(parquet[0], compression_type=CompressionTypes.UNCOMPRESSED) as handle:
                    names = pq.ParquetFile(handle).schema_arrow.names
            except Exception:  # noqa: BLE001 — a corrupt file is the workers' to reject, not a flag error
                names = [options.parquet_column]
            if options.parquet_column not in names:
                raise UsageError(f"{parquet[0]} has no column {options.parquet_column!r} (columns: {names}); "
                                 "pass --parquet_column")
    arguments: dict[str, Any] = {
        "modality": modality, "inputs": list(options.input or []) or f"embedded sample dataset ({sample_size} items)",
        "profile": profile.name, "vocab_size": vocab_size, "bpe_sample": options.bpe_sample,
        "tokenizer": options.tokenizer, "seq_len": seq_len, "val_fraction": options.val_fraction,
        "split_group": split_group, "seed": options.seed,
        "sequences_per_shard": sequences_per_shard, "parquet_column": options.parquet_column,
        "max_pixels": options.max_pixels,
    }
    return JobConfig(
        output=options.output.rstrip("/"), modality=modality, inputs=list(options.input or []),
        profile=profile.to_json(), vocab_size=vocab_size, bpe_sample=options.bpe_sample, tokenizer_json=tokenizer_json,
        seq_len=seq_len, val_fraction=options.val_fraction, split_group=split_group, seed=options.seed,
        tokens_per_shard=sequences_per_shard * (seq_len + 1), dtype=dtype.name, parquet_column=options.parquet_column,
        sample_size=sample_size, max_pixels=options.max_pixels, arguments=arguments, progress_dir=progress_dir,
        input_files=sum(map(len, matched.values())),
    )


def unquoted_glob(leftovers: list[str]) -> UsageError:
    """What arguments no flag takes mean: almost always a glob the shell expanded (--input /data/*.jpg
    became --input /data/a.jpg /data/b.jpg …), of which the job would have read the first file alone."""
    folder, _, name = leftovers[0].rpartition("/")
    example = (folder + "/" if folder else "") + "*" + ("." + name.rsplit(".", 1)[1] if "." in name else "")
    return UsageError(f"{len(leftovers)} arguments that no flag takes (first: {leftovers[0]}): the shell probably "
                      f"expanded an unquoted --input glob; quote it (--input '{example}') so the job matches it")


def print_help() -> None:
    """Our flags first, then the Beam options a user of this job is most likely to need."""
    parser = _BeamArgumentParser(prog=PROG, description=__doc__,
                                 usage=f"{PROG} --output DIR [--input PATTERN …] [flags] [Beam options]",
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    PreprocessOptions._add_argparse_args(parser)
    for beam_options in (StandardOptions, DirectOptions, GoogleCloudOptions, WorkerOptions, SetupOptions):
        beam_options._add_argparse_args(parser.add_argument_group(f"Beam {beam_options.__name__}"))
    parser.print_help()


def run(argv: list[str] | None = None) -> dict[str, Any] | None:
    """Run the job; returns the manifest it wrote (None for a ``--dry_run``, which writes nothing).
    Raises ``UsageError`` for a command line that cannot work, before any input is read."""
    argv = renamed_flags(list(sys.argv[1:] if argv is None else argv), PROG)
    options, leftovers, _ = checked_pipeline_options(argv)
    if leftovers:
        raise unquoted_glob(leftovers)
    dry_run = is_dry_run(options)
    job_options = options.view_as(PreprocessOptions)
    with tempfile.TemporaryDirectory(prefix="codec-lm-progress-") as progress_dir:
        progress_dir = progress_dir if runs_locally(options) and not dry_run else None
        job = job_config(job_options, progress_dir, dry_run)
        if not (dry_run and is_remote(job.output)):  # a dry run reads no object store (it may have no credentials)
            check_output_folder(job.output, job.arguments, job_options.overwrite)
        if not dry_run:
            clear_previous_run(job.output)
        started = time.monotonic()
        pipeline = new_pipeline(options)
        build_pipeline(pipeline, job)
        if dry_run:
            translate(pipeline, options)
            print(dry_run_summary(job, options))
            return None
        try:
            run_to_end(pipeline, progress_dir)
        except Exception as error:  # noqa: BLE001 — what failed, as one line (Beam's own message ends with it)
            raise JobFailed(f"the job failed: {last_line(error)}") from error
    manifest = json.loads(read_bytes(join(job.output, MANIFEST)))
    print_summary(manifest, job.output, time.monotonic() - started)
    return manifest


def translate(pipeline: beam.Pipeline, options: PipelineOptions) -> None:
    """What a dry run can check without running: the DataflowRunner translates the job and stops before
    submitting it (its ``--dry_run``); other runners would run it, so only Beam's translation is done."""
    if "dataflow" in (options.view_as(StandardOptions).runner or "").lower():
        pipeline.run().wait_until_finish()
    else:
        pipeline.to_runner_api()


def dry_run_summary(job: JobConfig, options: PipelineOptions) -> str:
    runner = options.view_as(StandardOptions).runner or "DirectRunner"
    patterns = f"{len(job.inputs)} --input pattern" + ("s" if len(job.inputs) != 1 else "")
    inputs = (f"{job.input_files:,} files matched by {patterns}" if job.inputs
              else f"the embedded sample dataset ({job.sample_size} {job.modality}s)")
    return (f"dry run: would read {inputs} and write {job.output} on {runner}: profile {job.arguments['profile']}, "
            f"vocab {job.vocab_size}, seq_len {job.seq_len}; nothing was written")


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


@cli.command(PROG)
def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if "-h" in argv or "--help" in argv:
        print_help()
        return 0
    run(argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
