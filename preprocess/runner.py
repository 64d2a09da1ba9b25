"""The Beam runner a job runs on, chosen the same way for every pipeline of ours (the job, verify)."""

from __future__ import annotations

import logging
import os
from contextlib import nullcontext

import apache_beam as beam
from apache_beam.options.pipeline_options import DirectOptions, PipelineOptions, StandardOptions
from apache_beam.runners.portability.fn_api_runner import FnApiRunner

from preprocess.progress import ProgressWatcher

DIRECT_RUNNERS = (None, "DirectRunner", "direct")
LOCAL_RUNNERS = DIRECT_RUNNERS + ("PrismRunner", "prism")


def runs_locally(options: PipelineOptions) -> bool:
    return options.view_as(StandardOptions).runner in LOCAL_RUNNERS


def pipeline_options(argv: list[str]) -> PipelineOptions:
    """The Beam options in ``argv``; a local run uses every core unless the flags say otherwise (the
    DirectRunner's own default is one worker)."""
    options = PipelineOptions(argv)
    given = {arg.split("=", 1)[0] for arg in argv}  # not get_all_options(drop_default=True): it drops flags
    direct = options.view_as(DirectOptions)            # given with their default value, like --direct_num_workers 1
    if runs_locally(options) and "--direct_num_workers" not in given:
        direct.direct_num_workers = len(os.sched_getaffinity(0))  # the cores this process may use
        if "--direct_running_mode" not in given and direct.direct_num_workers > 1:
            direct.direct_running_mode = "multi_processing"
    return options


def new_pipeline(options: PipelineOptions) -> beam.Pipeline:
    """A pipeline on the runner ``--runner`` names (options from ``pipeline_options``)."""
    # Local worker processes relay each harmless start-up warning of theirs; errors still show.
    logging.getLogger("apache_beam.runners.portability.local_job_service").setLevel(logging.ERROR)
    # Beam's DirectRunner first tries to download the Prism runner binary, and so behaves differently
    # with and without internet; its own in-process engine (FnApiRunner) runs the same everywhere.
    runner = options.view_as(StandardOptions).runner
    return beam.Pipeline(runner=FnApiRunner() if runner in DIRECT_RUNNERS else None, options=options)


def run_to_end(pipeline: beam.Pipeline, progress_dir: str | None, **progress_line: object) -> None:
    """Run and wait; a local run shows the progress files' counts while it goes (see preprocess.progress)."""
    with ProgressWatcher(progress_dir, **progress_line) if progress_dir else nullcontext():
        pipeline.run().wait_until_finish()
