"""The Beam runner a job runs on, chosen the same way for every pipeline of ours (the job, verify)."""

from __future__ import annotations

import argparse
import copy
import difflib
import logging
import os
from contextlib import nullcontext
from typing import Any

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import (
    DirectOptions,
    PipelineOptions,
    StandardOptions,
    TestOptions,
    _BeamArgumentParser,
)
from apache_beam.options.pipeline_options_validator import PipelineOptionsValidator
from apache_beam.runners.portability.fn_api_runner import FnApiRunner
from apache_beam.runners.runner import create_runner

from preprocess.progress import ProgressWatcher
from shared.tools.cli import UsageError

DIRECT_RUNNERS = (None, "DirectRunner", "direct")
LOCAL_RUNNERS = DIRECT_RUNNERS + ("PrismRunner", "prism")


def runs_locally(options: PipelineOptions) -> bool:
    return options.view_as(StandardOptions).runner in LOCAL_RUNNERS


def is_dry_run(options: PipelineOptions) -> bool:
    """Beam's ``--dry_run`` (a string option: any value given counts, as the DataflowRunner reads it)."""
    return bool(options.view_as(TestOptions).dry_run)


class UsageParser(_BeamArgumentParser):
    """Beam's parser, where a wrong value is a usage error rather than argparse's exit."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(message)


def every_beam_option(runner: str | None) -> UsageParser:
    """A parser that knows every pipeline option, as Beam's own ``get_all_options`` builds it, once the
    runner's module (which may define options of its own) is imported."""
    if runner is not None and runner not in DIRECT_RUNNERS:
        try:
            create_runner(runner)
        except (ValueError, ImportError) as error:
            raise UsageError(f"--runner {runner}: {error}") from None
    parser = UsageParser(allow_abbrev=False, add_help=False)
    classes: dict[str, type[PipelineOptions]] = {}
    for cls in PipelineOptions.__subclasses__():
        classes.setdefault(str(cls), cls)
    for cls in classes.values():
        cls._add_argparse_args(parser)  # as Beam itself gathers every option
    return parser


def split_arguments(parser: argparse.ArgumentParser, argv: list[str]
                    ) -> tuple[list[list[str]], list[str], list[str]]:
    """``argv`` as ``parser`` reads it: (each flag with its values, the arguments no flag takes, the names
    of flags it does not know)."""
    takes = {name: action for action in parser._actions for name in action.option_strings}
    flags: list[list[str]] = []
    positionals: list[str] = []
    unknown: list[str] = []
    index = 0
    while index < len(argv):
        token = argv[index]
        if token == "--":
            positionals += argv[index + 1:]
            break
        if not token.startswith("-") or token == "-":
            positionals.append(token)
            index += 1
            continue
        name, has_value = token.split("=", 1)[0], "=" in token
        action = takes.get(name)
        following = argv[index + 1:]
        width = 1
        if action is None:
            unknown.append(name)
            width += int(not has_value and bool(following) and not following[0].startswith("-"))
        elif not has_value and action.nargs != 0:
            if action.nargs is None or action.nargs == 1:
                width = 2
            elif action.nargs == "?":
                width += int(bool(following) and not following[0].startswith("-"))
            else:  # "*", "+" or a count: values up to the next flag
                while index + width < len(argv) and not argv[index + width].startswith("-"):
                    width += 1
        flags.append(argv[index:index + width])
        index += width
    return flags, positionals, unknown


def checked_pipeline_options(argv: list[str], own: argparse.ArgumentParser | None = None
                             ) -> tuple[PipelineOptions, list[str], list[str]]:
    """``pipeline_options`` of ``argv``'s Beam flags, once every flag is known and has a valid value and the
    options pass the runner's own validation. Returns them with the arguments no flag takes and the
    command's own flags (those of ``own``, which are not pipeline options), for the command to parse.

    Beam itself only logs "Unparseable argument" and goes on without what it did not understand (an
    unquoted glob's other files, a misspelt flag); here that is a usage error, before any work.
    """
    standard = UsageParser(allow_abbrev=False, add_help=False)
    StandardOptions._add_argparse_args(standard)
    runner = standard.parse_known_args(argv)[0].runner
    parser = every_beam_option(runner)
    own_names = {name for action in (own._actions if own else []) for name in action.option_strings}
    for action in (own._actions if own else []):
        if action.option_strings:
            parser._add_action(action)  # one parser that knows both, to split argv
    flags, positionals, unknown = split_arguments(parser, argv)
    if unknown:
        known = [name for action in parser._actions for name in action.option_strings if name.startswith("--")]
        hints = [f"{name} (did you mean {close[0]}?)" if (close := difflib.get_close_matches(name, known, n=1))
                 else name for name in unknown]
        raise UsageError(f"unrecognized arguments: {', '.join(hints)}")
    own_flags = [token for group in flags if group[0].split("=", 1)[0] in own_names for token in group]
    beam_flags = [token for group in flags if group[0].split("=", 1)[0] not in own_names for token in group]
    parser.parse_known_args(beam_flags)  # every value valid (types, choices), or a usage error
    options = pipeline_options(beam_flags)
    validate(options, runner)
    FileSystems.set_options(options)  # Beam's S3 filesystem, matched before the pipeline, needs its options
    return options, positionals, own_flags


def validate(options: PipelineOptions, runner: str | None) -> None:
    """The runner's checks of its options (Dataflow: project, region, temp_location …), which Beam would
    otherwise make when the pipeline is built, after the inputs are listed, as a many-line ValueError."""
    runner_object: Any = FnApiRunner() if runner in DIRECT_RUNNERS else create_runner(runner)
    errors = PipelineOptionsValidator(copy.deepcopy(options), runner_object).validate()
    if errors:
        raise UsageError("; ".join(" ".join(error.split()) for error in errors))


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
