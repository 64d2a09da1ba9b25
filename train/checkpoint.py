"""Checkpoint folders: what `python -m train.pretrain` (and `litgpt pretrain`) write, and reading them back:
the model config, its weights, its training dataset, and everything sampling from it needs
(``load_for_sampling``).

A folder (``out_dir/step-NNNNNNNN/``, ``out_dir/final/``) holds:

    sharded/               the training state (model and optimizer) as torch.distributed.checkpoint shards,
                           one ``__R_0.distcp`` per rank that wrote it, and ``.metadata`` (``train.training_state``;
                           the trainer before 2026-12-07 also wrote Lightning's ``meta.pt``)
    lit_model.pth          the model weights, consolidated (``final/``; ``python -m train.consolidate`` for any
                           other folder). `litgpt pretrain` keeps its whole one-process training state here.
    model_config.yaml, hyperparameters.yaml     as LitGPT writes them
    dataset/               the training dataset's manifest (without its shard list) and tokenizer.json:
                           the codec profile with its header and the tokenizer, so the folder samples,
                           evaluates and exports wherever it is moved (``train.pretrain`` only)
    checkpoint.json        written last, atomically: the files above with their sizes, the step, the data
                           position, the learning-rate schedule and the batch layout. Without it (or with a
                           file missing or of another size) the checkpoint's writing was interrupted, and
                           ``--resume auto`` skips it.
"""

from __future__ import annotations

import json
import os
import shutil
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from litgpt import GPT, Config
from litgpt.utils import lazy_load

from shared.codec.profile import CodecProfile
from shared.codec.token_constraint import TokenConstraint
from shared.errors import CodecLmError
from shared.format.dataset import Dataset, DatasetError
from shared.format.files import open_atomic, read_bytes, write_json_atomic
from shared.format.shards import MANIFEST, TOKENIZER
from shared.format.tokenizer import ByteTokenizer
from shared.tools import cli

MARKER = "checkpoint.json"
MARKER_FORMAT = "codec-lm-checkpoint/2"
MARKER_FORMATS = ("codec-lm-checkpoint/1", MARKER_FORMAT)  # /1: the trainer before 2026-12-07
SHARDED = "sharded"  # the torch.distributed.checkpoint folder inside a checkpoint folder
WEIGHTS = "lit_model.pth"
DATASET = "dataset"  # the training dataset's description inside a checkpoint folder


class CheckpointError(CodecLmError):
    """A checkpoint folder that cannot be read, or does not fit the run that reads it."""


# ---- writing: the completion marker and the dataset description ------------------------------------
def listed_files(folder: Path) -> dict[str, int]:
    """Every file of a checkpoint folder (but the marker) with its size, by relative path."""
    return {str(path.relative_to(folder)): path.stat().st_size for path in sorted(folder.rglob("*"))
            if path.is_file() and path.name != MARKER and ".tmp-" not in path.name}


def mark_complete(folder: Path, **facts: Any) -> None:
    """Write checkpoint.json last: the folder is now a checkpoint ``--resume auto`` may pick."""
    write_json_atomic(folder / MARKER, {"format": MARKER_FORMAT, **facts, "files": listed_files(folder)})


def unmark(folder: Path) -> None:
    """Before a folder is written again (``final/`` of an earlier run, a torn ``step-*``): incomplete until
    marked anew, and without the state written there before (shards of another world size would stay)."""
    (folder / MARKER).unlink(missing_ok=True)
    (folder / WEIGHTS).unlink(missing_ok=True)
    shutil.rmtree(folder / SHARDED, ignore_errors=True)


def read_marker(folder: Path) -> dict[str, Any] | None:
    try:
        marker = json.loads((folder / MARKER).read_text())
    except (OSError, ValueError):
        return None
    return marker if isinstance(marker, dict) and marker.get("format") in MARKER_FORMATS else None


def incomplete_because(folder: Path) -> str | None:
    """Why a checkpoint folder is not a whole checkpoint (None: it is)."""
    marker = read_marker(folder)
    if marker is None:
        litgpt_wrote = (folder / WEIGHTS).is_file() and (folder / "model_config.yaml").is_file()
        if litgpt_wrote and not (folder / SHARDED).exists():
            return None  # written by plain `litgpt pretrain`, which writes model_config.yaml after the weights
        return f"no {MARKER}: its writing did not finish"
    for name, expected in marker.get("files", {}).items():
        path = folder / name
        if not path.is_file():
            return f"{name} is missing"
        if path.stat().st_size != expected:
            return f"{name} is {path.stat().st_size} bytes, {MARKER} says {expected}"
    return None


def newest_complete(out_dir: Path) -> tuple[Path | None, list[tuple[Path, str]]]:
    """The newest whole ``step-*`` checkpoint folder under ``out_dir``, and the newer ones skipped, with why."""
    folders = sorted((p for p in out_dir.glob("step-*") if p.is_dir() and p.name[5:].isdigit()),
                     key=lambda p: int(p.name[5:]), reverse=True)
    skipped = []
    for folder in folders:
        reason = incomplete_because(folder)
        if reason is None:
            return folder, skipped
        skipped.append((folder, reason))
    return None, skipped


def copy_dataset_description(dataset: Dataset, folder: Path) -> None:
    """The dataset's manifest without its shard list, and its tokenizer, into ``folder/dataset/``."""
    target = folder / DATASET
    target.mkdir(parents=True, exist_ok=True)
    manifest = {**dataset.manifest, "shards": [], "source": dataset.root}
    tokenizer = read_bytes(dataset.path(dataset.manifest["tokenizer"]["path"]))
    with open_atomic(target / TOKENIZER) as handle:
        handle.write(tokenizer)
    manifest["tokenizer"] = {**manifest["tokenizer"], "path": TOKENIZER}
    write_json_atomic(target / MANIFEST, manifest)


def load_model_config(checkpoint: Path) -> Config:
    """The model's LitGPT config: model_config.yaml, or the model_config section of hyperparameters.yaml."""
    if (checkpoint / "model_config.yaml").is_file():
        return Config.from_file(checkpoint / "model_config.yaml")
    hyperparameters = read_hyperparameters(checkpoint)
    if isinstance(hyperparameters.get("model_config"), dict):
        return Config(**hyperparameters["model_config"])
    raise CheckpointError(f"{checkpoint} has no model_config.yaml and its hyperparameters.yaml has no model_config: "
                          "pass a checkpoint folder written by `litgpt pretrain`")


def read_hyperparameters(checkpoint: Path) -> dict[str, Any]:
    path = checkpoint / "hyperparameters.yaml"
    if not path.is_file():
        return {}
    return yaml.safe_load(path.read_text()) or {}


def weights_files(checkpoint: Path) -> list[Path]:
    """The files that hold a checkpoint's weights: lit_model.pth, else the shards (empty: not a checkpoint)."""
    if (checkpoint / WEIGHTS).is_file():
        return [checkpoint / WEIGHTS]
    return sorted((checkpoint / SHARDED).glob("*.distcp")) if (checkpoint / SHARDED / ".metadata").is_file() else []


def load_lit_weights(checkpoint: Path) -> dict[str, Any]:
    """The model's weights: from lit_model.pth (lazily; step checkpoints keep the whole training state, the
    model under "model"), else gathered from the sharded checkpoint's model shards (not the optimizer's)."""
    if not (checkpoint / WEIGHTS).is_file() and (checkpoint / SHARDED).is_dir():
        return sharded_weights(checkpoint / SHARDED)
    state = lazy_load(checkpoint / WEIGHTS)
    weights = state.get("model", state)
    if not isinstance(weights, dict) or "transformer.wte.weight" not in weights:
        raise CheckpointError(f"{checkpoint / WEIGHTS} holds no LitGPT model weights "
                              f"(keys: {', '.join(list(state)[:6])})")
    return weights


def sharded_weights(folder: Path) -> dict[str, torch.Tensor]:
    """The whole model from a torch.distributed.checkpoint folder, in one process (no process group)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    reader = dcp.FileSystemReader(str(folder))
    try:
        entries = reader.read_metadata().state_dict_metadata
    except (OSError, ValueError, EOFError) as error:
        raise CheckpointError(f"{folder} is not a readable sharded checkpoint ({error})") from None
    weights = {name: torch.empty(entry.size, dtype=entry.properties.dtype) for name, entry in entries.items()
               if name.startswith("model.") and isinstance(entry, TensorStorageMetadata)}
    if "model.transformer.wte.weight" not in weights:
        raise CheckpointError(f"{folder} holds no LitGPT model weights")
    with one_process_quietly():
        dcp.load(weights, storage_reader=reader, no_dist=True)  # this process alone, also inside a process group
    return {name.removeprefix("model."): tensor for name, tensor in weights.items()}


@contextmanager
def one_process_quietly() -> Iterator[None]:
    """torch.distributed.checkpoint warns on every call without a process group that it assumes one process:
    that is meant here (one process writes and reads the same format as several)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled, unavailable or uninitialized")
        yield


def consolidate(checkpoint: Path) -> Path:
    """Write ``checkpoint/lit_model.pth`` (the model weights, as LitGPT's tools read them) from its shards."""
    if not (checkpoint / SHARDED).is_dir():
        raise CheckpointError(f"{checkpoint} has no {SHARDED}/ folder: nothing to consolidate")
    weights = sharded_weights(checkpoint / SHARDED)
    with open_atomic(checkpoint / WEIGHTS) as handle:
        torch.save(weights, handle)
    return checkpoint / WEIGHTS


def recorded_dataset(checkpoint: Path) -> str | None:
    """The dataset path hyperparameters.yaml records, as seen from here.

    LitGPT records paths as they were typed. A relative dataset path is relative to the folder training ran
    in, which the checkpoint's own place tells when out_dir was relative too: ``out/jpeg-tiny/final`` lies
    two folders below it. So ``data/jpeg-tiny`` is found from any working directory.
    """
    hyperparameters = read_hyperparameters(checkpoint)
    dataset = ((hyperparameters.get("data") or {}).get("init_args") or {}).get("path")
    out_dir = hyperparameters.get("out_dir")
    if dataset is None or "://" in str(dataset) or Path(dataset).is_absolute() or not out_dir:
        return dataset
    depth, parents = len(Path(out_dir).parts), checkpoint.resolve().parents
    if Path(out_dir).is_absolute() or ".." in Path(out_dir).parts or depth >= len(parents):
        return dataset
    found = parents[depth] / dataset
    return str(found) if (found / MANIFEST).is_file() else dataset  # else as typed (the folder was moved)


def open_dataset(checkpoint: Path, dataset: str | None) -> Dataset:
    """The training dataset: --dataset; else the path hyperparameters.yaml recorded, if it is there and has the
    tokenizer the checkpoint carries; else the checkpoint's own description of it (profile and tokenizer:
    everything sampling needs, but no documents)."""
    own = checkpoint / DATASET
    if dataset is not None:
        where = "given with --dataset"
    else:
        dataset = recorded_dataset(checkpoint)
        where = f"recorded in {checkpoint / 'hyperparameters.yaml'}"
        if (own / MANIFEST).is_file():
            carried = Dataset.open(str(own))
            try:
                found = Dataset.open(str(dataset)) if dataset is not None else None
            except DatasetError:
                found = None
            sha256 = carried.manifest["tokenizer"].get("sha256")
            return found if found is not None and found.manifest["tokenizer"].get("sha256") == sha256 else carried
        if dataset is None:
            raise CheckpointError(f"{checkpoint / 'hyperparameters.yaml'} records no dataset (data.init_args.path); "
                                  "pass --dataset DIR")
    try:
        return Dataset.open(str(dataset))
    except DatasetError as error:
        raise CheckpointError(f"cannot read the training dataset {dataset} ({where}): {error}; "
                              "the checkpoint needs its manifest.json and tokenizer.json (--dataset DIR)") from None


def load_model(checkpoint: Path, device: torch.device) -> GPT:
    """The checkpoint's model in eval mode on ``device``: bf16 on GPUs that have it, else fp32."""
    model = GPT(load_model_config(checkpoint))
    model.load_state_dict(load_lit_weights(checkpoint))
    dtype = torch.bfloat16 if device.type == "cuda" and torch.cuda.is_bf16_supported() else torch.float32
    return model.to(device=device, dtype=dtype).eval()


@dataclass
class Sampler:
    """What sampling from a checkpoint needs: its training dataset's codec profile and tokenizer, the
    model, and (for constrained decoding) the profile's grammar lifted to tokens."""

    dataset: Dataset
    profile: CodecProfile
    tokenizer: ByteTokenizer
    model: GPT
    constraint: TokenConstraint | None


def load_for_sampling(checkpoint: Path, *, dataset: str | None = None, data: Dataset | None = None,
                      device: torch.device, constrained: bool = True) -> Sampler:
    """``data``: the checkpoint's dataset when the caller has opened it already (else ``open_dataset``)."""
    data = data or open_dataset(Path(checkpoint), dataset)
    profile, tokenizer = data.profile, data.tokenizer
    model = load_model(Path(checkpoint), device)
    if model.config.padded_vocab_size < tokenizer.vocab_size:
        raise CheckpointError(f"{checkpoint}: the model knows {model.config.padded_vocab_size} ids, "
                              f"its tokenizer {tokenizer.vocab_size}")
    constraint = TokenConstraint(profile.grammar(), tokenizer.token_bytes, tokenizer.eos_id) if constrained else None
    return Sampler(data, profile, tokenizer, model, constraint)


def existing_checkpoint(path: str | os.PathLike[str], flag: str = "--checkpoint") -> Path:
    """A checkpoint folder with weights in it, or a usage error: a missing folder is named as missing."""
    folder = cli.existing_dir(path, flag)
    if not weights_files(folder):
        raise cli.UsageError(f"{flag} {path}: not a checkpoint folder (no {WEIGHTS} or {SHARDED}/): give a "
                             "folder `python -m train.pretrain` wrote, e.g. out/jpeg-tiny/final")
    return folder
