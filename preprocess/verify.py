"""`codec-shards verify`'s shard checks as a Beam pipeline, on the engine that wrote the data.

    python -m preprocess.verify DIR --runner DataflowRunner --project P --region R \\
        --temp_location gs://b/tmp --sdk_container_image IMAGE [--report gs://b/verify.json] [--no_decode]
    python -m preprocess.verify out/images                    # DirectRunner, every core

The dataset-level checks (tokenizer, index files, totals, where every input went) run on this machine;
each shard is one element of the pipeline, and each worker opens the dataset once and runs the same
``verify_shard`` as a local verify, so the report and the exit status are those of `codec-shards verify`
(0 sound, 1 problems found, listed; 2 a usage error). The reports travel back through one JSON file
(``--report``), which the workers and this machine can both reach: under ``--temp_location`` on Dataflow.
Flags are spelled like Beam's own (``--snake_case``); any standard Beam option passes through.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import uuid
from collections.abc import Iterator
from typing import Any

import apache_beam as beam
from apache_beam.options.pipeline_options import GoogleCloudOptions, PipelineOptions

from preprocess.progress import Progress
from preprocess.runner import (
    UsageParser,
    checked_pipeline_options,
    new_pipeline,
    pipeline_options,
    run_to_end,
    runs_locally,
)
from shared.format.dataset import Dataset, DatasetError
from shared.format.files import delete, join, read_bytes, write_json_atomic
from shared.tools import cli
from shared.tools.verify import ShardReport, checked_shard, print_report, verify

PROG = "python -m preprocess.verify"


class VerifyShardFn(beam.DoFn):
    def __init__(self, root: str, decode: bool, progress_dir: str | None) -> None:
        self.root, self.decode, self.progress_dir = root, decode, progress_dir

    def setup(self) -> None:
        self.dataset = Dataset.open(self.root)
        self.progress = Progress(self.progress_dir)

    def process(self, shard: dict[str, Any]) -> Iterator[dict[str, Any]]:
        report = checked_shard(self.dataset, shard, decode=self.decode)
        self.progress.add("shards")
        self.progress.add("documents", report.documents)
        self.progress.add("problems", len(report.problems))
        yield {"path": report.path, "problems": report.problems, "documents": report.documents}

    def finish_bundle(self) -> None:
        self.progress.flush()


def write_report(reports: list[dict[str, Any]], path: str) -> None:
    write_json_atomic(path, sorted(reports, key=lambda r: r["path"]))


def verify_shards_on_beam(dataset: Dataset, *, decode: bool, argv: list[str] | None = None, report: str | None,
                          options: PipelineOptions | None = None) -> list[ShardReport]:
    """Each shard's report, in manifest order, from a Beam pipeline run with the Beam options in ``argv``
    (or ``options``, already parsed)."""
    options = options if options is not None else pipeline_options(argv or [])
    local = runs_locally(options)
    temp_location = options.view_as(GoogleCloudOptions).temp_location
    given = report is not None
    with tempfile.TemporaryDirectory(prefix="codec-lm-verify-") as scratch:
        if report is None:
            if local:
                report = join(scratch, "report.json")
            elif temp_location:
                report = join(temp_location, f"codec-shards-verify-{uuid.uuid4().hex}.json")
            else:
                raise DatasetError("with a remote --runner, pass --report (a gs:// or s3:// file the workers can "
                                   "write) or --temp_location")
        progress_dir = join(scratch, "progress") if local else None
        pipeline = new_pipeline(options)
        (
            pipeline
            | "Shards" >> beam.Create(dataset.manifest["shards"])
            | "Spread" >> beam.Reshuffle()  # one shard per work item, across every worker
            | "VerifyShard" >> beam.ParDo(VerifyShardFn(dataset.root, decode, progress_dir))
            | "AllReports" >> beam.combiners.ToList()
            | "WriteReport" >> beam.Map(write_report, report)
        )
        run_to_end(pipeline, progress_dir, shown=("shards", "documents", "problems"), rate_of="documents")
        by_path = {r["path"]: ShardReport(**r) for r in json.loads(read_bytes(report))}
        if not given:
            delete([report])  # ours, under --temp_location: nobody else reads it
    missing = [s["path"] for s in dataset.manifest["shards"] if s["path"] not in by_path]
    if missing:
        raise DatasetError(f"the pipeline reported on {len(by_path)} of {len(dataset.manifest['shards'])} shards "
                           f"(first missing: {missing[0]})")
    return [by_path[s["path"]] for s in dataset.manifest["shards"]]


def own_flags() -> argparse.ArgumentParser:
    """The command's flags that are not pipeline options (the Beam options come from Beam)."""
    parser = UsageParser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                          usage=f"{PROG} DIR [--runner RUNNER] [Beam options] [--report FILE] [--no_decode]",
                          add_help=False, allow_abbrev=False)
    parser.add_argument("dir", metavar="DIR", help="the dataset (local, gs://, s3://)")
    parser.add_argument("--report", metavar="FILE",
                        help="the JSON file the pipeline writes its findings to (default: a temporary file locally, "
                             "under --temp_location on remote runners)")
    parser.add_argument("--no_decode", action="store_true", help="skip the (slow) strict decode of every document")
    return parser


@cli.command(PROG)
def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    own = own_flags()
    if "-h" in argv or "--help" in argv:
        own.print_help()
        print("\nAny Beam pipeline option passes through (--runner, --direct_num_workers, --project, --region, "
              "--temp_location …; `python -m preprocess.run --help` lists them).")
        return 0
    options, positionals, flags = checked_pipeline_options(argv, own)
    if not positionals:
        raise cli.UsageError("DIR is required (the dataset folder to verify)")
    if len(positionals) > 1:
        raise cli.UsageError(f"one dataset at a time: {len(positionals)} given ({', '.join(positionals[:3])})")
    args = own.parse_args([*positionals, *flags])
    cli.existing_dir(args.dir, "dataset")
    if not runs_locally(options) and args.report is None and not options.view_as(GoogleCloudOptions).temp_location:
        raise cli.UsageError("with a remote --runner, pass --report (a gs:// or s3:// file the workers can write) "
                             "or --temp_location")
    dataset = Dataset.open(args.dir)
    problems = verify(dataset, decode=not args.no_decode, check_shards=lambda opened: verify_shards_on_beam(
        opened, decode=not args.no_decode, options=options, report=args.report))
    return print_report(dataset, problems, decode=not args.no_decode)


if __name__ == "__main__":
    sys.exit(main())
