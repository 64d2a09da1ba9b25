"""The training state in a checkpoint folder: written by every rank, read back by any number of ranks.

Model and optimizer state go through ``torch.distributed.checkpoint.state_dict`` (``get_state_dict`` /
``set_state_dict``): keyed by parameter name for a plain model and an FSDP2-sharded one alike, so a checkpoint
written by N processes loads on M (torch.distributed.checkpoint reshards on load) with nothing re-keyed by
hand. Each rank writes its own shards into ``sharded/`` (one process writes the same format); what the loop
needs besides (the step, the data position, the learning-rate schedule, the batch layout) is in the
completion marker, ``checkpoint.json``, which rank 0 writes last (``train.checkpoint``).

Checkpoints of the trainer before this one still load: a sharded one (``sharded/`` with Lightning's
``meta.pt``) has the same keys; a one-process one (the whole state in ``lit_model.pth``, the optimizer keyed
by position) is keyed by name on load, from this run's optimizer's own parameter order.

A checkpoint folder may be on an object store (``--out_dir gs://bucket/run``): DCP writes there through
``train.checkpoint.StoreWriter`` (each file uploaded once to its final name), and a store that fails past its
client's retries ends the save with one ``CheckpointError`` line and no marker.
"""

from __future__ import annotations

import io
import os
from typing import Any

import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict, set_state_dict

from shared.format.files import read_bytes
from train.checkpoint import (
    MARKER_FORMAT,
    SHARDED,
    WEIGHTS,
    CheckpointError,
    Where,
    child,
    consolidate,
    dcp_reader,
    dcp_writer,
    is_dir,
    is_file,
    mark_complete,
    name_of,
    one_process_quietly,
    place,
    read_marker,
    unmark,
)
from train.parallel import stable_name

OLD_FORMAT = "codec-lm-checkpoint/1"
CONVERT = "resume it with the trainer that wrote it (codec-lm before 2026-12-07), or start a new run from its " \
          "weights with --initial_checkpoint_dir (after `python -m train.consolidate --checkpoint DIR`)"


def is_rank_zero() -> bool:
    return not torch.distributed.is_initialized() or torch.distributed.get_rank() == 0


def barrier() -> None:
    if torch.distributed.is_initialized():
        torch.distributed.barrier()


def save(folder: str | os.PathLike[str], model: torch.nn.Module, optimizer: torch.optim.Optimizer,
         progress: dict[str, Any], write_description: Any = None) -> None:
    """Write a checkpoint folder: every rank its shards, then rank 0 the description (``write_description(folder)``:
    hyperparameters, model config, dataset), the consolidated weights in ``final/``, and the marker, last."""
    folder = place(folder)
    try:
        if is_rank_zero():
            if isinstance(folder, os.PathLike):
                folder.mkdir(parents=True, exist_ok=True)
            unmark(folder)  # an earlier run's final/, a torn step-*: incomplete until marked anew
        barrier()
        model_state, optimizer_state = get_state_dict(model, optimizer)
        with one_process_quietly():
            dcp.save({"model": model_state, "optimizer": optimizer_state},
                     storage_writer=dcp_writer(child(folder, SHARDED)), no_dist=not torch.distributed.is_initialized())
        barrier()  # every shard written
        if is_rank_zero():
            if write_description is not None:
                write_description(folder)
            if name_of(folder) == "final":
                consolidate(folder)
            mark_complete(folder, state=SHARDED, **progress)
    except (Exception, dcp.api.CheckpointException) as error:  # noqa: BLE001 — a store's client raises its own kinds
        raise CheckpointError(f"writing the checkpoint {folder} failed, it is not marked complete: "
                              f"{failure_line(error)}") from None
    barrier()


def failure_line(error: BaseException) -> str:
    """One line for a failed write: the first rank's own error of a CheckpointException (which carries every
    rank's traceback), else the error itself."""
    if isinstance(error, dcp.api.CheckpointException) and error.failures:
        error = next(iter(error.failures.values()))[0]
    if isinstance(error, CheckpointError):
        return str(error)
    return f"{type(error).__name__}: {' '.join(str(error).split())[:300]}"


def load(folder: str | os.PathLike[str], model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """Restore model and optimizer in place from a checkpoint folder; returns the loop's progress: ``step``,
    ``data`` (the loader's state) and what the marker recorded besides (``schedule`` for checkpoints of this
    trainer)."""
    folder = place(folder)
    check_loadable(folder)
    marker = read_marker(folder) or {}
    if is_dir(child(folder, SHARDED)):
        model_state, optimizer_state = get_state_dict(model, optimizer)
        state = {"model": model_state, "optimizer": optimizer_state}
        try:
            with one_process_quietly():
                dcp.load(state, storage_reader=dcp_reader(child(folder, SHARDED)),
                         no_dist=not torch.distributed.is_initialized())
        except (Exception, dcp.api.CheckpointException) as error:  # noqa: BLE001 — DCP wraps each rank's error
            raise CheckpointError(f"{child(folder, SHARDED)} does not fit this run's model and optimizer, or cannot "
                                  f"be read ({failure_line(error)})") from None
        set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"])
        if marker.get("format") == MARKER_FORMAT:
            return marker
        return old_sharded_progress(folder)
    return load_one_file(child(folder, WEIGHTS), model, optimizer)


def torch_load(path: Where, **options: Any) -> Any:
    """``torch.load`` of a local file (memory-mapped where asked) or of an object, read whole."""
    if isinstance(path, str):
        options.pop("mmap", None)
        return torch.load(io.BytesIO(read_bytes(path)), map_location="cpu", weights_only=False, **options)
    return torch.load(path, map_location="cpu", weights_only=False, **options)


def check_loadable(folder: str | os.PathLike[str]) -> None:
    """A checkpoint folder ``load`` can resume from, or a CheckpointError saying how to go on: before any work."""
    folder = place(folder)
    if is_dir(child(folder, SHARDED)):
        marked = (read_marker(folder) or {}).get("format") == MARKER_FORMAT
        if not marked and not is_file(child(folder, SHARDED, "meta.pt")):
            raise CheckpointError(f"{folder} has neither a {MARKER_FORMAT} marker nor {SHARDED}/meta.pt: {CONVERT}")
    elif is_file(child(folder, WEIGHTS)):
        saved = torch_load(child(folder, WEIGHTS), mmap=True)
        if not isinstance(saved, dict) or "optimizer" not in saved or "step_count" not in saved:
            raise CheckpointError(f"{child(folder, WEIGHTS)} holds model weights but no training state (optimizer, "
                                  f"step): {CONVERT}")
    else:
        raise CheckpointError(f"{folder} holds no training state (no {SHARDED}/ or {WEIGHTS})")


def old_sharded_progress(folder: Where) -> dict[str, Any]:
    """The step and data position of a sharded checkpoint of the earlier trainer (Lightning's meta.pt)."""
    saved = torch_load(child(folder, SHARDED, "meta.pt"))
    return {"step": saved["step_count"], "data": saved.get("train_dataloader"), "format": OLD_FORMAT}


def load_one_file(path: Where, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """A one-process training state of the earlier trainer (``litgpt pretrain``'s layout): whole tensors, the
    optimizer state keyed by position in its groups, which are this run's optimizer's positions (the same class
    on the same model groups its parameters the same way)."""
    saved = torch_load(path)
    names = {id(parameter): stable_name(name) for name, parameter in model.named_parameters()}
    order = [names[id(p)] for group in optimizer.param_groups for p in group["params"]]
    positions = [i for group in saved["optimizer"].get("param_groups", []) for i in group["params"]]
    if sorted(positions) != list(range(len(order))):
        raise CheckpointError(f"{path}: its optimizer state has {len(positions)} parameters, this run's optimizer "
                              f"{len(order)}: it was written with another optimizer or model; {CONVERT}")
    optimizer_state = {
        "state": {order[index]: value for index, value in saved["optimizer"]["state"].items()},
        "param_groups": [{**group, "params": [order[i] for i in group["params"]]}
                         for group in saved["optimizer"]["param_groups"]],
    }
    set_state_dict(model, optimizer, model_state_dict=saved["model"], optim_state_dict=optimizer_state,
                   options=StateDictOptions(full_state_dict=True))
    return {"step": saved["step_count"], "data": saved.get("train_dataloader"), "format": OLD_FORMAT}
