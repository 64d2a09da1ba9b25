"""Pretrain a codec-LM (a LitGPT Llama) from scratch: one process, or FSDP2 over several GPUs or CPU processes.

    python -m train.pretrain --config train/jpeg7b.yaml --activation_checkpointing every-3 --devices 8 --num_nodes 4
    python -m train.pretrain --config train/jpeg-tiny.yaml --devices 2      # no GPU: 2 CPU processes, gloo
    python -m train.pretrain --config train/avc7b.yaml --activation_checkpointing full --print_config

The command line and YAML are `litgpt pretrain`'s (every flag and key, ``--resume auto``, ``--data.path``,
``--print_config``; the YAMLs run with both), plus ``--activation_checkpointing none|full|every-N`` and
``--accept_schedule_change``. The loop is this project's own (``train.trainer``): the learning rate is a
function of the optimizer step, the data position of the global step and the initial weights of parameter
names, so 1, 2 or 256 processes at the same global batch train the same model; checkpoints are sharded
(``train.training_state``), marked complete last, and resume on any number of processes.

Checked before any work, each in one line (docs/cli.md): a missing ``--config`` file, dataset or checkpoint
folder (named first), an unknown key, a layout that does not divide the global batch, more processes than
sequences, a vocabulary the model lacks, a checkpoint of another model or global batch, one whose
learning-rate schedule differs from this run's (unless ``--accept_schedule_change``), one that cannot be read.
"""

from __future__ import annotations

import inspect
import os
import sys
import warnings
from argparse import ArgumentError, RawDescriptionHelpFormatter
from dataclasses import asdict
from pathlib import Path
from typing import Any, Literal

import torch
import yaml
from jsonargparse import ActionConfigFile, ArgumentParser, DefaultHelpFormatter, set_parsing_settings
from litgpt.args import EvalArgs, LogArgs, TrainArgs
from litgpt.data import DataModule
from litgpt.model import Config
from litgpt.types import LoggerChoice
from litgpt.utils import extend_checkpoint_dir, get_default_supported_precision, parse_devices

from shared.errors import CodecLmError
from shared.format.files import is_remote
from shared.format.stores import StoreError, check_folder
from shared.tools import cli
from train import launch
from train.checkpoint import (
    CheckpointError,
    Where,
    child,
    is_dir,
    is_file,
    newest_complete,
    place,
    read_hyperparameters,
    read_marker,
    read_text,
)
from train.data import CodecShards
from train.parallel import PRECISIONS, blocks_to_checkpoint
from train.schedule import Schedule
from train.trainer import Settings, Trainer
from train.training_state import check_loadable

PROG = "python -m train.pretrain"


def setup(
    model_name: str,
    model_config: Config | None = None,
    out_dir: Path = Path("out/pretrain"),
    precision: Literal["bf16-true", "bf16-mixed", "32-true", None] = None,
    initial_checkpoint_dir: Path | None = None,
    resume: bool | Literal["auto"] | Path = False,
    data: DataModule | None = None,
    train: TrainArgs = TrainArgs(save_interval=1000, log_interval=1, global_batch_size=512, micro_batch_size=4,
                                 max_tokens=int(3e12), max_norm=1.0, min_lr=4e-5, lr_warmup_steps=2000,
                                 tie_embeddings=False),
    eval: EvalArgs = EvalArgs(interval=1000, max_iters=100),
    log: LogArgs = LogArgs(),
    optimizer: str | dict = "AdamW",
    devices: int | str = "auto",
    num_nodes: int = 1,
    tokenizer_dir: Path | None = None,
    logger_name: LoggerChoice = "tensorboard",
    seed: int = 42,
    activation_checkpointing: str | None = "none",
    accept_schedule_change: bool = False,
    _hyperparameters: dict[str, Any] | None = None,
) -> None:
    """Pretrain a model.

    Arguments:
        model_name: The name of the model to pretrain (a name in ``litgpt.config``; ``model_config`` overrides it).
        model_config: A ``litgpt.Config`` that defines the model architecture.
        out_dir: Directory for checkpoints (``step-*``, ``final``) and logs.
        precision: ``bf16-true``, ``bf16-mixed`` or ``32-true`` (default: bf16 where the device has it).
        initial_checkpoint_dir: A checkpoint folder whose weights start the run (continued pretraining).
            Mutually exclusive with ``resume``.
        resume: A checkpoint folder to resume from, ``true`` for the newest complete ``step-*`` in ``out_dir``
            (an error if there is none), or ``'auto'`` (the newest, if any).
        data: The data module (``train.data.CodecShards`` for codec-LM datasets).
        train: Training settings: batch sizes, tokens, learning-rate warmup and floor, clipping, intervals.
        eval: Evaluation settings: interval (optimizer steps), batches per evaluation, initial and final.
        log: Logger settings (project, run, group for wandb).
        optimizer: An optimizer name (such as "AdamW") or a ``class_path``/``init_args`` config.
        devices: Processes per node: GPUs, or CPU processes without a GPU ("auto": every GPU, or 1).
        num_nodes: Nodes the run spans (started by SLURM, torchrun, or by hand: docs/scale.md).
        tokenizer_dir: A folder whose tokenizer files are copied into each checkpoint (LitGPT data modules).
        logger_name: Where metrics go: csv, tensorboard, wandb, mlflow or litlogger.
        seed: Seeds the initial weights (a function of the seed and each parameter's name).
        activation_checkpointing: Which transformer blocks recompute their activations in the backward pass
            instead of keeping them: none, full or every-N (N >= 1: every N-th block). See ``python -m
            train.estimate``.
        accept_schedule_change: Resume although the checkpoint was trained with other learning-rate schedule
            settings (max tokens, warmup, learning rates): the rest of the run follows this run's schedule.
    """
    out_dir = place(out_dir)  # jsonargparse makes a Path of gs://bucket/run, which folds it into gs:/bucket/run
    resume = place(resume) if isinstance(resume, Path) else resume
    initial_checkpoint_dir = place(initial_checkpoint_dir) if initial_checkpoint_dir is not None else None
    check_paths(data=data, resume=resume, initial_checkpoint_dir=initial_checkpoint_dir, out_dir=out_dir)
    if _hyperparameters is not None:  # the paths as typed, not as a Path spells a URL
        _hyperparameters["out_dir"] = str(out_dir)
        if isinstance(resume, (Path, str)) and resume != "auto":
            _hyperparameters["resume"] = str(resume)
        if initial_checkpoint_dir is not None:
            _hyperparameters["initial_checkpoint_dir"] = str(initial_checkpoint_dir)
    try:
        settings = resolve(model_name=model_name, model_config=model_config, out_dir=out_dir, precision=precision,
                           initial_checkpoint_dir=initial_checkpoint_dir, data=data, train=train, eval=eval, log=log,
                           optimizer=optimizer, devices=devices, num_nodes=num_nodes, tokenizer_dir=tokenizer_dir,
                           logger_name=logger_name, seed=seed, activation_checkpointing=activation_checkpointing,
                           hyperparameters=_hyperparameters)
        check_data(settings.data, settings.world_size, train.micro_batch_size, settings.config)
    except ValueError as error:  # flags that do not fit each other, the data or the model
        raise cli.UsageError(str(error)) from None
    settings.resume_from = resume_folder(resume, settings, accept_schedule_change)
    run(settings)


def resolve(*, model_name: str, model_config: Config | None, out_dir: Where, precision: str | None,
            initial_checkpoint_dir: Where | None, data: DataModule | None, train: TrainArgs, eval: EvalArgs,
            log: LogArgs, optimizer: str | dict, devices: int | str, num_nodes: int, tokenizer_dir: Path | None,
            logger_name: str, seed: int, activation_checkpointing: str | None,
            hyperparameters: dict[str, Any] | None) -> Settings:
    """The command line as the trainer's settings; a ValueError for what cannot work together."""
    blocks_to_checkpoint(activation_checkpointing)  # a bad choice fails here
    if train.epochs is not None:
        raise ValueError("--train.epochs is not supported: give --train.max_tokens (or --train.max_steps)")
    if train.max_tokens is None or train.max_norm is None:
        raise ValueError("--train.max_tokens and --train.max_norm are required")
    if data is None:
        raise ValueError("--data is required: e.g. --data.path DIR with data: class_path: train.data.CodecShards")
    config = model_config or Config.from_name(model_name)
    precision = precision or get_default_supported_precision(training=True)
    if precision not in PRECISIONS:
        raise ValueError(f"--precision {precision} is not supported; choose {', '.join(PRECISIONS)}")
    devices = parse_devices(devices)
    world = devices * num_nodes
    if train.global_batch_size % (world * train.micro_batch_size):
        raise ValueError(f"--train.global_batch_size {train.global_batch_size} is not a multiple of "
                         f"{world} processes x --train.micro_batch_size {train.micro_batch_size}: every "
                         "optimizer step must be whole iterations of every process (choose a micro-batch "
                         "or a number of devices that divides it)")
    context = train.max_seq_length or config.block_size
    max_steps = train.max_tokens // (train.global_batch_size * context)
    if train.max_steps is not None:
        max_steps = min(max_steps, train.max_steps)
    if max_steps < 1:
        raise ValueError(f"--train.max_tokens {train.max_tokens} is less than one optimizer step "
                         f"({train.global_batch_size} sequences x {context} tokens)")
    lr = optimizer_lr(optimizer)
    schedule = Schedule.of(lr=lr, min_lr=train.min_lr, max_steps=max_steps, warmup_steps=train.lr_warmup_steps,
                           warmup_fraction=train.lr_warmup_fraction)
    if initial_checkpoint_dir is not None and not is_remote(initial_checkpoint_dir):
        initial_checkpoint_dir = extend_checkpoint_dir(initial_checkpoint_dir)
    return Settings(config=config, out_dir=place(out_dir), precision=precision, data=data, train=train, eval=eval,
                    log=log, optimizer=optimizer, devices=devices, num_nodes=num_nodes, seed=seed,
                    logger_name=logger_name, schedule=schedule, initial_checkpoint_dir=initial_checkpoint_dir,
                    tokenizer_dir=extend_checkpoint_dir(tokenizer_dir) if tokenizer_dir else None,
                    activation_checkpointing=activation_checkpointing, hyperparameters=hyperparameters)


def optimizer_lr(optimizer: str | dict) -> float:
    """The peak learning rate: the optimizer's ``lr`` (its class's default when the config gives none)."""
    if isinstance(optimizer, dict) and "lr" in (optimizer.get("init_args") or {}):
        return float(optimizer["init_args"]["lr"])
    path = optimizer["class_path"] if isinstance(optimizer, dict) else optimizer
    module, name = path.rsplit(".", 1) if "." in path else ("torch.optim", path)
    default = inspect.signature(getattr(__import__(module, fromlist=[name]), name)).parameters["lr"].default
    return float(default)


def check_data(data: Any, world: int, micro_batch: int, config: Config) -> None:
    """More processes than the data has sequences, or more token ids than the model has embedding rows:
    refused before any process starts."""
    if not isinstance(data, CodecShards):
        return
    data.check_world(world, micro_batch)
    data.check_vocabulary(config.padded_vocab_size)
    if data.model_vocab_size is None:
        data.model_vocab_size = config.padded_vocab_size  # connect() checks it again in every rank


def check_paths(*, data: Any, resume: Any, initial_checkpoint_dir: Where | None, out_dir: Where) -> None:
    """What the run reads and is not there, named before any other complaint (also paths a --config gave); on
    an object store also the credentials, the bucket, and the right to write ``out_dir`` (a probe object)."""
    if isinstance(data, CodecShards):
        data.path = str(place(data.path))
        cli.existing_dir(data.path, "--data.path")
    if isinstance(resume, (Path, str)) and resume != "auto":
        cli.existing(resume, "--resume")
    if initial_checkpoint_dir is not None:  # found as LitGPT finds it (under checkpoints/)
        found = initial_checkpoint_dir if is_remote(initial_checkpoint_dir) else \
            extend_checkpoint_dir(initial_checkpoint_dir)
        cli.existing_dir(found, "--initial_checkpoint_dir")
    if is_remote(out_dir):
        try:
            check_folder(str(out_dir), "--out_dir")
        except StoreError as error:
            raise cli.UsageError(str(error)) from None
        cli.store_ready(out_dir, "--out_dir", write=True)


# ---- which checkpoint continues this run ------------------------------------------------------------
def resume_folder(resume: Any, settings: Settings, accept_schedule_change: bool) -> Where | None:
    """The checkpoint folder to resume from (None: start afresh), checked against this run."""
    if resume is False or resume is None:
        return None
    if settings.initial_checkpoint_dir is not None:
        raise cli.UsageError("--resume and --initial_checkpoint_dir cannot be given together: choose one")
    if isinstance(resume, (Path, str)) and resume != "auto":
        folder = place(resume)
        if not is_dir(folder):  # a file in the folder
            folder = folder.parent if isinstance(folder, Path) else folder.rstrip("/").rsplit("/", 1)[0]
    else:
        folder, skipped = newest_complete(settings.out_dir)
        for path, reason in skipped:
            if first_process():
                print(f"--resume {resume}: skipping {path} ({reason})", flush=True)
        if folder is None:
            if resume is True:
                raise CheckpointError(f"--resume true, but {settings.out_dir} holds no complete step-* checkpoint")
            return None
    check_resumable(folder, settings, accept_schedule_change)
    check_loadable(folder)
    return folder


def check_resumable(folder: Where, settings: Settings, accept_schedule_change: bool) -> None:
    """A checkpoint of another model, another global batch or (unless accepted) another schedule is refused."""
    saved = read_hyperparameters(folder)
    theirs = saved.get("model_config") if isinstance(saved.get("model_config"), dict) else None
    if is_file(child(folder, "model_config.yaml")):
        theirs = yaml.safe_load(read_text(child(folder, "model_config.yaml")))
    if theirs is not None:
        ours = asdict(settings.config)
        differ = [k for k in sorted(set(theirs) & set(ours)) if theirs[k] != ours[k] and k != "hf_config"]
        if differ:
            raise CheckpointError(f"{folder} is a checkpoint of another model: "
                                  + ", ".join(f"{k} {theirs[k]!r} there, {ours[k]!r} here" for k in differ[:6])
                                  + "; resume with its config, or give this run another --out_dir")
    marker = read_marker(folder) or {}
    recorded = marker.get("global_batch_size") or (saved.get("train") or {}).get("global_batch_size")
    if recorded is not None and recorded != settings.train.global_batch_size:
        raise CheckpointError(f"{folder} was trained with --train.global_batch_size {recorded}, this run has "
                              f"{settings.train.global_batch_size}: the data position and the learning-rate schedule "
                              "count optimizer steps of that size; resume with the same global batch (any number "
                              "of processes and micro-batch that divide it)")
    theirs_schedule, ours_schedule = marker.get("schedule"), settings.schedule.describe()
    if theirs_schedule is not None and theirs_schedule != ours_schedule and not accept_schedule_change:
        differ = [f"{k} {theirs_schedule.get(k)} there, {v} here" for k, v in ours_schedule.items()
                  if theirs_schedule.get(k) != v]
        raise CheckpointError(f"{folder} was trained with another learning-rate schedule ({', '.join(differ)}); "
                              "resume with its settings, or pass --accept_schedule_change to continue on this one")


def first_process() -> bool:
    """Rank 0 of a run, before the process group exists (the ranks a run started carry LOCAL_RANK)."""
    return all(os.environ.get(name, "0") == "0" for name in ("LOCAL_RANK", "NODE_RANK", "RANK", "SLURM_PROCID"))


# ---- running it ---------------------------------------------------------------------------------------
class RankError(CodecLmError):
    """Another process of a run failed (it printed why)."""


def run(settings: Settings) -> None:
    """Start the run's processes (where nobody else does), train, and end every process this one started."""
    ranks = launch.start(settings.devices, settings.num_nodes)
    try:
        launch.init_process_group(ranks)
        Trainer(settings, ranks).train()
    except BaseException as error:
        failed_first = launch.first_failure(ranks, isinstance(error, (*cli.FAILURES, KeyboardInterrupt)))
        if failed_first is not None:
            raise RankError(failed_first) from None
        raise
    finally:
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
    if status := launch.wait_for_children(ranks):
        raise RankError(f"a local rank failed (exit status {status}; its error is above)")


# ---- the command line -------------------------------------------------------------------------------
# paths typed on the command line, checked before jsonargparse reads them (a --config file names the others)
TYPED_PATHS = {"--config": "file", "--data.path": "folder", "--data.init_args.path": "folder"}


def check_typed_paths(argv: list[str]) -> None:
    """A --config file or dataset folder typed on the command line that is not there: named before anything."""
    for index, argument in enumerate(argv):
        flag, equals, value = argument.partition("=")
        if flag not in TYPED_PATHS or (not equals and index + 1 == len(argv)):
            continue  # jsonargparse says that a value is missing
        value = value if equals else argv[index + 1]
        if value.lstrip().startswith("{") or "\n" in value:  # a config given inline
            continue
        if TYPED_PATHS[flag] == "folder":
            cli.existing_dir(value, flag)
        else:
            cli.existing(value, flag, "file")


class Help(RawDescriptionHelpFormatter, DefaultHelpFormatter):
    """jsonargparse's help, with the module docstring's examples as written (not reflowed)."""


def parser() -> ArgumentParser:
    """`litgpt pretrain`'s parser (the parameters of ``setup`` and their documentation) with this module's help."""
    # As `litgpt pretrain` (litgpt/__main__.py): docstrings as help, configs from files or URLs.
    set_parsing_settings(docstring_parse_attribute_docstrings=True, config_read_mode_urls_enabled=True)
    made = ArgumentParser(prog=PROG, description=__doc__, exit_on_error=False, formatter_class=Help)
    made.add_argument("--config", action=ActionConfigFile, help="A YAML file of settings (the keys are the flags).")
    made.add_function_arguments(setup, skip={"_hyperparameters"})
    return made


@cli.command(PROG)
def main(argv: list[str] | None = None) -> int:
    """``argv``: the command line (default: ``sys.argv[1:]``, which the ranks a run starts read in any case)."""
    argv = sys.argv[1:] if argv is None else argv
    check_typed_paths(argv)
    warnings.filterwarnings("ignore", message=r".*`train.max_steps` is intended for profiling.*")
    torch.set_float32_matmul_precision("high")  # TF32 matmuls on GPUs, as `litgpt pretrain`
    made = parser()
    try:
        parsed = made.parse_args(argv)
        arguments = made.instantiate_classes(parsed)
    except ArgumentError as error:  # usage errors raised, as one line, not printed
        raise cli.UsageError(" ".join(str(error).split())) from None
    except AttributeError:  # jsonargparse 4.41 fails so merging an --optimizer dict over a --config's dict
        if not any(argument.startswith("--optimizer") for argument in argv):
            raise
        raise cli.UsageError("--optimizer cannot replace a --config file's optimizer on the command line (a "
                             "jsonargparse limitation): change it in a copy of the YAML (docs/training.md)") from None
    hyperparameters = yaml.safe_load(made.dump(parsed, skip_none=False))
    hyperparameters.pop("config", None)
    setup(**{k: v for k, v in vars(arguments).items() if k != "config"}, _hyperparameters=hyperparameters)
    return 0


if __name__ == "__main__":
    sys.exit(main())
