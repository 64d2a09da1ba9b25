"""`litgpt pretrain` with FSDP2 on several processes, activation checkpointing, self-contained sharded
checkpoints and elastic resume: the paper's 7B configs on any number of GPUs (or CPU processes).

    python -m train.pretrain --config train/jpeg7b.yaml --activation_checkpointing every-3 --devices 8 --num_nodes 4
    python -m train.pretrain --config train/jpeg-tiny.yaml --devices 2      # no GPU: 2 CPU processes, gloo
    python -m train.pretrain --config train/avc7b.yaml --activation_checkpointing full --print_config

The command line and YAML are exactly `litgpt pretrain`'s (every flag, ``--resume auto``, ``--data.path``,
``--print_config``) plus ``--activation_checkpointing none|full|every-N`` (which blocks keep only their input
and run their forward again in the backward pass; ``python -m train.estimate`` says which fits). Without
a GPU, ``--devices N`` starts N CPU processes. What it does beyond `litgpt pretrain`:

- **FSDP2 whenever devices x nodes > 1** (``train.parallel``): activation checkpointing, torch.compile and
  ``fully_shard`` per block, then the root; sharded within a node, replicated across nodes; mixed
  precision from ``--precision``. It runs on GPUs (NCCL) and CPU processes (gloo), so the test suite trains
  it. (`litgpt pretrain` builds FSDP1, which needs GPUs.) One process trains unsharded, as LitGPT does.
- **The same model on any number of processes**: initial weights are a function of ``(seed, parameter
  name)``, the data order a function of the global step (``train.data``), so 1, 2 or 256 processes at the
  same global batch train the same model, up to floating-point summation order.
- **Sharded checkpoints**: each rank writes its own shards (torch.distributed.checkpoint), nothing gathers
  the training state on one rank; ``final/`` also gets a consolidated ``lit_model.pth`` for LitGPT's tools.
  Every checkpoint folder carries the dataset's profile and tokenizer (``train.checkpoint``) and is marked
  complete last.
- **Elastic resume**: ``--resume auto`` takes the newest complete ``step-*`` checkpoint (it says which
  newer ones it skipped, and why), on the same or another number of processes at the same global batch:
  model and optimizer state reshard on load, and the data continues at the exact next sequence.
- **Checks before any work**: a missing ``--config`` file, dataset or checkpoint folder (named first), a world
  size or micro-batch that does not divide the global batch, more processes than the data has sequences, a
  dataset with more token ids than the model has embedding rows, a checkpoint of another model or another
  global batch. Errors are one line, ``python -m train.pretrain: error: …``, exit status 2 for the command
  line and 1 for the work (docs/cli.md); when one process of a run fails, the others are ended.

How: this runs LitGPT's own ``litgpt.pretrain.setup`` (Fabric, the training loop, evaluation, logging:
nothing is copied here) with names of the ``litgpt.pretrain`` module swapped while it runs. These are the
LitGPT 0.5.13 lines it depends on (``tests/test_pretrain.py`` checks they are still there, so an upgrade
that moves them fails loudly):

- ``FSDPStrategy(auto_wrap_policy={Block}, …)`` (built when devices x nodes > 1) -> ``train.parallel``'s
  FSDP2 strategy (a class, because ``initialize_weights`` asks ``isinstance(fabric.strategy, FSDPStrategy)``
  to defer initialisation until the model is sharded);
- ``GPT`` -> a builder that, on one device, wraps the chosen blocks in ``checkpoint_wrapper`` (models on
  the meta device, the FLOP count behind the reported MFU, stay unwrapped);
- ``initialize_weights`` -> LitGPT's, then ``train.parallel.init_weights`` on one device (several: after
  sharding, in the strategy);
- ``find_resume_path`` -> the newest complete checkpoint, checked against this run;
- ``fit`` -> LitGPT's, after converting a resumed iteration counter to this run's gradient accumulation;
- ``save_checkpoint`` -> LitGPT's (sharded into ``sharded/`` under FSDP2), then the dataset description,
  the consolidated weights in ``final/`` and the completion marker;
- ``setup`` (``save_hyperparameters(setup, …)`` re-reads the command line with the signature of ``setup``
  for each checkpoint's hyperparameters.yaml) -> this module's ``setup``, which has the extra flags.

``checkpoint_wrapper`` keeps parameter names in state dicts, so checkpoints are the same with and without
checkpointing, and a run may switch the option between restarts.
"""

from __future__ import annotations

import inspect
import re
import subprocess
import sys
import time
import warnings
from argparse import ArgumentError
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any

import litgpt.pretrain as litgpt_pretrain
import torch
import yaml
from jsonargparse import CLI, set_parsing_settings
from litgpt.model import GPT, Block, Config
from litgpt.utils import extend_checkpoint_dir, parse_devices
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import CheckpointWrapper

from shared.errors import CodecLmError
from shared.tools import cli
from train.checkpoint import (
    SHARDED,
    WEIGHTS,
    CheckpointError,
    consolidate,
    copy_dataset_description,
    mark_complete,
    newest_complete,
    read_hyperparameters,
    read_marker,
    single_process_state,
    state_path,
    unmark,
)
from train.data import CodecShards
from train.parallel import MIXED_PRECISION, FSDP2Strategy, init_weights
from train.parallel import apply_ac as checkpoint_blocks  # one device: the same wrappers FSDP2 applies

PROG = "python -m train.pretrain"
CHOICES = "none, full or every-N (N >= 1: every N-th block)"
LITGPT_SETUP = litgpt_pretrain.setup
SWAPPED = ("setup", "FSDPStrategy", "GPT", "initialize_weights", "find_resume_path", "fit", "save_checkpoint")


def blocks_to_checkpoint(choice: str | None, flag: str = "--activation_checkpointing"
                         ) -> Callable[[torch.nn.Module], bool] | None:
    """``--activation_checkpointing`` -> which modules are checkpointed (None: nothing); ``flag``: the
    spelling an error names (``train.estimate`` spells it ``--activation-checkpointing``)."""
    if choice in (None, "none"):  # YAML reads a bare `none` as null
        return None
    every = 1 if choice == "full" else int(match[1]) if (match := re.fullmatch(r"every-(\d+)", choice)) else 0
    if every < 1:
        raise ValueError(f"{flag} must be {CHOICES}, not {choice!r}")
    # a Block knows its index through its attention layer (LitGPT's Block(config, block_idx) passes it there)
    return lambda module: isinstance(module, Block) and module.attn.block_idx % every == 0


def describe(model: torch.nn.Module) -> str:
    """What a training log says about a model's checkpointing."""
    blocks = [m for m in model.modules() if isinstance(m, Block)]
    wrapped = [m for m in model.modules() if isinstance(m, CheckpointWrapper)]
    return f"activation checkpointing: {len(wrapped)} of {len(blocks)} transformer blocks"


# ---- what this run is, for the checks --------------------------------------------------------------
def run_layout(devices: int | str, num_nodes: int, train: Any) -> dict[str, int]:
    """World size, micro-batch and global batch of a run; refuses a layout that does not divide the batch."""
    world = parse_devices(devices) * num_nodes
    per_iteration = world * train.micro_batch_size
    if train.global_batch_size % per_iteration:
        raise ValueError(f"--train.global_batch_size {train.global_batch_size} is not a multiple of "
                         f"{world} processes x --train.micro_batch_size {train.micro_batch_size}: every "
                         "optimizer step must be whole iterations of every process (choose a micro-batch "
                         "or a number of devices that divides it)")
    return {"world_size": world, "micro_batch_size": train.micro_batch_size,
            "global_batch_size": train.global_batch_size}


def check_resumable(folder: Path, config: Config, layout: dict[str, int]) -> None:
    """A checkpoint of another model or another global batch cannot continue this run."""
    saved = read_hyperparameters(folder)
    theirs = saved.get("model_config") if isinstance(saved.get("model_config"), dict) else None
    if (folder / "model_config.yaml").is_file():
        theirs = yaml.safe_load((folder / "model_config.yaml").read_text())
    if theirs is not None:
        ours = asdict(config)
        differ = [k for k in sorted(set(theirs) & set(ours)) if theirs[k] != ours[k] and k != "hf_config"]
        if differ:
            raise CheckpointError(f"{folder} is a checkpoint of another model: "
                                  + ", ".join(f"{k} {theirs[k]!r} there, {ours[k]!r} here" for k in differ[:6])
                                  + "; resume with its config, or give this run another --out_dir")
    recorded = ((read_marker(folder) or {}).get("global_batch_size")
                or (saved.get("train") or {}).get("global_batch_size"))
    if recorded is not None and recorded != layout["global_batch_size"]:
        raise CheckpointError(f"{folder} was trained with --train.global_batch_size {recorded}, this run has "
                              f"{layout['global_batch_size']}: the data position and the learning-rate schedule "
                              "count optimizer steps of that size; resume with the same global batch (any number "
                              "of processes and micro-batch that divide it)")


def check_data(data: Any, world: int, micro_batch: int, config: Config) -> None:
    """More processes than the data has sequences, or more token ids than the model has embedding rows:
    refused before any process starts."""
    if not isinstance(data, CodecShards):
        return
    data.check_world(world, micro_batch)
    data.check_vocabulary(config.padded_vocab_size)
    if data.model_vocab_size is None:
        data.model_vocab_size = config.padded_vocab_size  # connect() checks it again in every rank


def check_paths(litgpt_arguments: dict[str, Any]) -> None:
    """What the run reads and is not there, named before any other complaint (also paths a --config gave)."""
    data = litgpt_arguments.get("data")
    if isinstance(data, CodecShards):
        cli.existing_dir(data.path, "--data.path")
    if isinstance(litgpt_arguments.get("resume"), Path):
        cli.existing(litgpt_arguments["resume"], "--resume")
    if litgpt_arguments.get("initial_checkpoint_dir") is not None:  # found as LitGPT finds it (under checkpoints/)
        cli.existing_dir(extend_checkpoint_dir(litgpt_arguments["initial_checkpoint_dir"]), "--initial_checkpoint_dir")


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


class RankError(CodecLmError):
    """Another process of a run failed (it printed why)."""


def stop_ranks(strategies: list[FSDP2Strategy], error: BaseException) -> BaseException | None:
    """This process failed: end the ranks it started, which would otherwise wait for it in their next
    collective until the process group's timeout. Returns the error to report instead of ``error`` when
    this process only failed because one of them had (a collective with a process that is gone)."""
    started = []
    for strategy in strategies:
        procs = getattr(strategy.launcher, "procs", [])  # empty where another tool started the ranks
        started += procs
        procs.clear()  # Lightning's observer thread watches this list: it would SIGKILL this process too
    consequence = not isinstance(error, (*cli.FAILURES, KeyboardInterrupt))
    if consequence:  # let ranks that failed first finish failing
        deadline = time.monotonic() + 10
        for process in started:
            try:
                process.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                break
    failed = [(rank, process.returncode) for rank, process in enumerate(started, 1)
              if process.poll() not in (None, 0)]
    for process in started:
        if process.poll() is None:
            process.kill()
        process.wait()
    if failed and consequence:
        rank, status = failed[0]
        return RankError(f"local rank {rank} failed first (exit status {status}; its error is above)")
    return None


# ---- the swaps -----------------------------------------------------------------------------------
@contextmanager
def swapped_into_litgpt(*, checkpointed: Callable[[torch.nn.Module], bool] | None, seed: int, precision: str,
                        config: Config, layout: dict[str, int], data: Any) -> Iterator[None]:
    """While open, ``litgpt.pretrain`` trains as this module's docstring says."""
    made: list[FSDP2Strategy] = []
    cleanup: list[Path] = []

    class Strategy(FSDP2Strategy):
        def __init__(self, **_fsdp1_arguments: Any) -> None:  # LitGPT's FSDP1 settings do not apply
            super().__init__(checkpointed=checkpointed, compile_blocks=True, precision=precision, seed=seed)
            made.append(self)

    def build_gpt(config: Config) -> GPT:
        model = GPT(config)
        on_meta = any(parameter.is_meta for parameter in model.parameters())
        if made or on_meta or checkpointed is None:
            return model
        checkpoint_blocks(model, checkpointed)
        print(describe(model))
        return model

    def initialize_weights(fabric: Any, model: GPT, n_layer: int, n_embd: int) -> None:
        ORIGINALS["initialize_weights"](fabric, model, n_layer, n_embd)
        if not made:  # one device: the model is here now (several: the strategy draws after sharding)
            init_weights(model, seed)

    def find_resume_path(resume: Any, out_dir: Path) -> Path | None:
        if not resume or isinstance(resume, Path):
            if isinstance(resume, Path):
                folder = resume if resume.is_dir() else resume.parent
                check_resumable(folder, config, layout)
                return loadable(state_path(folder) if resume.is_dir() else resume)
            return None
        folder, skipped = newest_complete(out_dir)
        for path, reason in skipped:
            if is_rank_zero():
                print(f"--resume {resume}: skipping {path} ({reason})")
        if folder is None:
            if resume is True:
                raise CheckpointError(f"--resume true, but {out_dir} holds no complete step-* checkpoint")
            return None
        check_resumable(folder, config, layout)
        return loadable(state_path(folder))

    def loadable(path: Path) -> Path:
        """One process cannot read shards with Fabric's single-device load: it gets them as one file."""
        if made or not path.is_dir():
            return path
        converted = single_process_state(path, path.parent.parent / f".resume-{path.parent.name}.pth")
        print(f"{path} converted for one process: {converted} (deleted once loaded)")
        cleanup.append(converted)
        return converted

    def fit(fabric: Any, devices: int, state: dict, *args: Any, train: Any, num_nodes: int = 1, **kwargs: Any) -> None:
        accumulation = train.gradient_accumulation_iters(devices, num_nodes)
        if state["iter_num"] != state["step_count"] * accumulation:  # resumed from another layout
            fabric.print(f"resumed at step {state['step_count']}: iteration {state['iter_num']} of the checkpoint's "
                         f"layout is iteration {state['step_count'] * accumulation} of this one")
            state["iter_num"] = state["step_count"] * accumulation
        for path in cleanup:
            path.unlink(missing_ok=True)
        ORIGINALS["fit"](fabric, devices, state, *args, train=train, num_nodes=num_nodes, **kwargs)

    def save_checkpoint(fabric: Any, state: dict, tokenizer_dir: Path | None, checkpoint_file: Path) -> None:
        folder = checkpoint_file.parent
        if fabric.global_rank == 0:
            unmark(folder, keep=SHARDED if made else WEIGHTS)  # an earlier run's final/, a torn step-*: incomplete now
        fabric.barrier()
        ORIGINALS["save_checkpoint"](fabric, state, tokenizer_dir, folder / SHARDED if made else checkpoint_file)
        if fabric.global_rank == 0:
            if isinstance(data, CodecShards) and hasattr(data, "dataset"):
                copy_dataset_description(data.dataset, folder)
            if made and folder.name == "final":
                consolidate(folder)
            mark_complete(folder, step=state["step_count"], iter_num=state["iter_num"], **layout,
                          state=SHARDED if made else WEIGHTS)
        fabric.barrier()

    ORIGINALS = {name: getattr(litgpt_pretrain, name) for name in SWAPPED}
    values = {"setup": setup, "FSDPStrategy": Strategy, "GPT": build_gpt, "initialize_weights": initialize_weights,
              "find_resume_path": find_resume_path, "fit": fit, "save_checkpoint": save_checkpoint}
    for name, value in values.items():
        setattr(litgpt_pretrain, name, value)
    try:
        yield
    except BaseException as error:
        if (instead := stop_ranks(made, error)) is not None:
            raise instead from None
        raise
    finally:
        for name, value in ORIGINALS.items():
            setattr(litgpt_pretrain, name, value)


def is_rank_zero() -> bool:
    return not torch.distributed.is_initialized() or torch.distributed.get_rank() == 0


def setup(activation_checkpointing: str | None = "none", **litgpt_arguments: Any) -> None:
    check_paths(litgpt_arguments)
    try:
        checkpointed = blocks_to_checkpoint(activation_checkpointing)
        train = litgpt_arguments["train"]
        layout = run_layout(litgpt_arguments.get("devices", "auto"), litgpt_arguments.get("num_nodes", 1), train)
        precision = litgpt_arguments.get("precision") or litgpt_pretrain.get_default_supported_precision(training=True)
        if layout["world_size"] > 1 and precision not in MIXED_PRECISION:
            raise ValueError(f"--precision {precision} is not supported sharded; choose {', '.join(MIXED_PRECISION)}")
        config = litgpt_arguments.get("model_config") or Config.from_name(litgpt_arguments["model_name"])
        check_data(litgpt_arguments.get("data"), layout["world_size"], train.micro_batch_size, config)
    except ValueError as error:  # flags that do not fit each other, the data or the model
        raise cli.UsageError(str(error)) from None
    with swapped_into_litgpt(checkpointed=checkpointed, seed=litgpt_arguments.get("seed", 42), precision=precision,
                             config=config, layout=layout, data=litgpt_arguments.get("data")):
        LITGPT_SETUP(**litgpt_arguments)


# The command line is litgpt pretrain's: its parameters (and their documentation), then ours.
_litgpt_signature = inspect.signature(LITGPT_SETUP)
setup.__signature__ = _litgpt_signature.replace(parameters=[
    *_litgpt_signature.parameters.values(),
    inspect.Parameter("activation_checkpointing", inspect.Parameter.KEYWORD_ONLY, default="none",
                      annotation=str | None),
])
setup.__doc__ = (LITGPT_SETUP.__doc__ or "").rstrip() + f"""
        activation_checkpointing: Which transformer blocks recompute their activations in the backward pass
            instead of keeping them: {CHOICES}. See ``python -m train.estimate``.
"""


@cli.command(PROG)
def main(argv: list[str] | None = None) -> int:
    """``argv``: the command line (default: ``sys.argv[1:]``, which the ranks a run starts and each checkpoint's
    hyperparameters.yaml read in any case)."""
    argv = sys.argv[1:] if argv is None else argv
    check_typed_paths(argv)
    # As `litgpt pretrain` (litgpt/__main__.py): docstrings as help, configs from files or URLs, TF32 matmuls.
    set_parsing_settings(docstring_parse_attribute_docstrings=True, config_read_mode_urls_enabled=True)
    warnings.filterwarnings("ignore", message=r"The epoch parameter in `scheduler.step\(\)` was not necessary.*",
                            category=UserWarning, module=r".*torch\.optim\.lr_scheduler.*")
    torch.set_float32_matmul_precision("high")
    try:
        CLI(setup, args=argv, prog=PROG, exit_on_error=False)  # usage errors raised, as one line, not printed
    except ArgumentError as error:
        raise cli.UsageError(" ".join(str(error).split())) from None
    return 0


if __name__ == "__main__":
    sys.exit(main())
