"""`codec-shards verify DIR --runner …`: the per-shard checks as a Beam pipeline, on the engine that wrote the data.

One element per shard; each worker opens the dataset once and runs the same ``verify_shard`` as a local
verify, so the report and the exit status are the same. The reports travel back through one JSON file
(``--report``), which the workers and this machine can both reach: under ``--temp_location`` on Dataflow.
"""

from __future__ import annotations

import json
import tempfile
import uuid
from collections.abc import Iterator
from typing import Any

import apache_beam as beam
from apache_beam.options.pipeline_options import GoogleCloudOptions

from preprocess.progress import Progress
from preprocess.runner import new_pipeline, pipeline_options, run_to_end, runs_locally
from shared.format.dataset import Dataset, DatasetError
from shared.format.files import delete, join, read_bytes, write_json_atomic
from shared.tools.verify import ShardReport, checked_shard


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


def verify_shards_on_beam(dataset: Dataset, *, decode: bool, argv: list[str], report: str | None) -> list[ShardReport]:
    """Each shard's report, in manifest order, from a Beam pipeline run with the Beam options in ``argv``."""
    options = pipeline_options(argv)
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
