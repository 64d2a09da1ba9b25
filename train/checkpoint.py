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

A folder may be local or on an object store (``gs://``, ``s3://``): every function here takes a path as a
string or ``Path`` and gives back paths of the same kind (a ``Path`` for a local folder, a string for a
remote one: a ``Path`` would fold ``gs://`` into ``gs:/``). On a store, DCP's files and the others are
uploaded straight to their final names (``StoreFileSystem``, ``shared.format.files.open_atomic``): an object
appears only when its upload completes, and a move there would copy every byte again. The marker is still
written last, after every rank's shards are in, so a torn checkpoint on a store is one without it.
"""

from __future__ import annotations

import io
import json
import os
import re
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import torch
import yaml
from fsspec.core import url_to_fs
from litgpt import GPT, Config
from litgpt.utils import lazy_load
from torch.distributed.checkpoint import FileSystemReader, FileSystemWriter
from torch.distributed.checkpoint.filesystem import FileSystemBase

from shared.codec.profile import CodecProfile
from shared.codec.token_constraint import TokenConstraint
from shared.errors import CodecLmError
from shared.format.dataset import Dataset, DatasetError
from shared.format.files import (
    delete,
    exists,
    is_remote,
    join,
    kind,
    matching,
    open_atomic,
    read_bytes,
    upload_file,
    write_json_atomic,
)
from shared.format.shards import MANIFEST, TOKENIZER
from shared.format.tokenizer import ByteTokenizer
from shared.tools import cli

MARKER = "checkpoint.json"
MARKER_FORMAT = "codec-lm-checkpoint/2"
MARKER_FORMATS = ("codec-lm-checkpoint/1", MARKER_FORMAT)  # /1: the trainer before 2026-12-07
SHARDED = "sharded"  # the torch.distributed.checkpoint folder inside a checkpoint folder
WEIGHTS = "lit_model.pth"
DATASET = "dataset"  # the training dataset's description inside a checkpoint folder
URL_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]+")  # RFC 3986, at least two letters
Where = Path | str  # a local folder (Path) or an object-store one (str)


class CheckpointError(CodecLmError):
    """A checkpoint folder that cannot be read, or does not fit the run that reads it."""


# ---- paths on any filesystem ---------------------------------------------------------------------
def place(path: str | os.PathLike[str]) -> Where:
    """A folder as the functions here keep it: a ``Path`` when local (``file://`` URLs too), the URL string
    when remote, its scheme in lower case. A ``Path`` made of a URL (``Path("gs://b/run")`` is ``gs:/b/run``)
    gets its ``//`` back; ``C:/run`` (a one-letter scheme) is a Windows drive."""
    text = os.fspath(path)
    scheme, separator, rest = text.partition(":/")
    if not separator or not URL_SCHEME.fullmatch(scheme):
        return Path(text)
    if scheme.lower() == "file":
        return Path("/" + rest.lstrip("/"))
    return f"{scheme.lower()}://{rest.lstrip('/')}"


def child(folder: str | os.PathLike[str], *names: str) -> Where:
    folder = place(folder)
    return join(folder, *names) if isinstance(folder, str) else folder.joinpath(*names)


def name_of(folder: Where) -> str:
    return str(folder).rstrip("/").rsplit("/", 1)[-1]


def is_file(path: Where) -> bool:
    return kind(path) == "file"


def is_dir(path: Where) -> bool:
    return kind(path) == "directory"


def read_text(path: Where) -> str:
    return read_bytes(str(path)).decode()


# ---- writing: the completion marker and the dataset description ------------------------------------
def listed_files(folder: Where) -> dict[str, int]:
    """Every file of a checkpoint folder (but the marker) with its size, by relative path: one listing, also
    on an object store."""
    filesystem, root = url_to_fs(str(folder))
    prefix = root.rstrip("/") + "/"
    try:
        found = filesystem.find(root, detail=True)
    except FileNotFoundError:
        return {}
    files = {name[len(prefix):]: int(info["size"]) for name, info in found.items()
             if info.get("type") == "file" and name.startswith(prefix)}
    return {name: files[name] for name in sorted(files) if name != MARKER and ".tmp-" not in name}


def mark_complete(folder: Where, **facts: Any) -> None:
    """Write checkpoint.json last: the folder is now a checkpoint ``--resume auto`` may pick."""
    write_json_atomic(child(folder, MARKER), {"format": MARKER_FORMAT, **facts, "files": listed_files(folder)})


def unmark(folder: Where) -> None:
    """Before a folder is written again (``final/`` of an earlier run, a torn ``step-*``): incomplete until
    marked anew (the marker goes first), and without the state written there before (shards of another
    world size would stay). A store that fails here fails the save: fsspec's ``exists`` would answer False
    for a failing store, and a marker left in place would vouch for the files written after it."""
    for name in (MARKER, WEIGHTS, SHARDED):
        filesystem, target = url_to_fs(str(child(folder, name)))
        try:
            filesystem.rm(target, recursive=True)
        except FileNotFoundError:
            pass


def read_marker(folder: Where) -> dict[str, Any] | None:
    try:  # only "not there" and "not JSON" mean no marker: a store that fails must not read as a torn checkpoint
        marker = json.loads(read_text(child(folder, MARKER)))
    except (FileNotFoundError, ValueError):
        return None
    return marker if isinstance(marker, dict) and marker.get("format") in MARKER_FORMATS else None


def incomplete_because(folder: Where) -> str | None:
    """Why a checkpoint folder is not a whole checkpoint (None: it is)."""
    marker = read_marker(folder)
    found = listed_files(folder)
    if marker is None:
        litgpt_wrote = WEIGHTS in found and "model_config.yaml" in found
        if litgpt_wrote and not any(name.startswith(f"{SHARDED}/") for name in found):
            return None  # written by plain `litgpt pretrain`, which writes model_config.yaml after the weights
        return f"no {MARKER}: its writing did not finish"
    for name, expected in marker.get("files", {}).items():
        if name not in found:
            return f"{name} is missing"
        if found[name] != expected:
            return f"{name} is {found[name]} bytes, {MARKER} says {expected}"
    return None


def newest_complete(out_dir: str | os.PathLike[str]) -> tuple[Where | None, list[tuple[Where, str]]]:
    """The newest whole ``step-*`` checkpoint folder under ``out_dir``, and the newer ones skipped, with why."""
    out_dir = place(out_dir)
    filesystem, root = url_to_fs(str(out_dir))
    try:
        names = [name_of(entry["name"]) for entry in filesystem.ls(root, detail=True) if entry["type"] == "directory"]
    except FileNotFoundError:
        names = []
    steps = sorted((name for name in names if name.startswith("step-") and name[5:].isdigit()),
                   key=lambda name: int(name[5:]), reverse=True)
    skipped = []
    for name in steps:
        folder = child(out_dir, name)
        reason = incomplete_because(folder)
        if reason is None:
            return folder, skipped
        skipped.append((folder, reason))
    return None, skipped


# ---- torch.distributed.checkpoint on an object store ---------------------------------------------
class StoreFileSystem(FileSystemBase):
    """DCP's file operations on an fsspec filesystem, writing each file straight to its final name.

    torch's own fsspec writer (``torch.distributed.checkpoint._fsspec_filesystem``, not public) writes
    ``.metadata.tmp`` and renames it: on GCS and S3 a rename is a server-side copy and a delete, and the GCS
    emulator has no move at all (gcsfs retries it before copying). Here every file is staged locally and
    uploaded once (``shared.format.files.upload_file``), so it appears whole or not at all. A ``*.tmp`` file
    stays staged until DCP renames it, and is then uploaded to its new name: DCP's coordinator writes
    ``.metadata`` that way, after every rank's data."""

    def __init__(self) -> None:
        super().__init__()
        self.staged: dict[str, str] = {}  # a *.tmp path DCP will rename -> its local file

    @contextmanager
    def create_stream(self, path: str | os.PathLike[str], mode: str) -> Iterator[IO[bytes]]:
        if "r" in mode:  # fetched whole into a local file: DCP seeks to each tensor, which a remote file
            filesystem, target = url_to_fs(str(path))  # would read ahead of and fetch again (170 requests for
            with tempfile.TemporaryDirectory(prefix="codec-lm-dcp-") as staging:  # a 6 MB shard, measured)
                staged = os.path.join(staging, "staged")
                filesystem.get_file(target, staged)
                with open(staged, "rb") as stream:
                    yield stream
        elif str(path).endswith(".tmp"):  # uploaded by rename(), to its final name
            handle, staged = tempfile.mkstemp(prefix="codec-lm-dcp-")
            with open(handle, "wb") as stream:
                yield stream
            self.staged[str(path)] = staged
        else:  # staged in a file of its own: DCP closes the stream it is given
            with tempfile.TemporaryDirectory(prefix="codec-lm-dcp-") as staging:
                staged = os.path.join(staging, "staged")
                with open(staged, "wb") as stream:
                    yield stream
                upload_file(staged, str(path))

    def rename(self, path: str | os.PathLike[str], new_path: str | os.PathLike[str]) -> None:
        staged = self.staged.pop(str(path))
        try:
            upload_file(staged, str(new_path))
        finally:
            os.remove(staged)

    def concat_path(self, path: str | os.PathLike[str], suffix: str) -> str:
        return join(str(path), suffix)

    def init_path(self, path: str | os.PathLike[str], **kwargs: Any) -> str:
        return str(place(path))

    def mkdir(self, path: str | os.PathLike[str]) -> None:
        pass  # an object store has no folders to make

    @classmethod
    def validate_checkpoint_id(cls, checkpoint_id: str | os.PathLike[str]) -> bool:
        return is_remote(checkpoint_id)

    def exists(self, path: str | os.PathLike[str]) -> bool:
        return exists(str(path))

    def rm_file(self, path: str | os.PathLike[str]) -> None:
        delete([str(path)])


class StoreWriter(FileSystemWriter):
    """DCP's file writer (one ``__R_0.distcp`` per rank, then ``.metadata``) on an object store."""

    def __init__(self, path: str) -> None:
        super().__init__(path, sync_files=False)  # no fsync for an upload (DCP would call os.sync() instead)
        self.fs, self.path = StoreFileSystem(), str(place(path))


class StoreReader(FileSystemReader):
    def __init__(self, path: str) -> None:
        super().__init__(path)
        self.fs, self.path = StoreFileSystem(), str(place(path))


def dcp_writer(folder: Where) -> FileSystemWriter:
    return StoreWriter(str(folder)) if is_remote(folder) else FileSystemWriter(str(folder))


def dcp_reader(folder: Where) -> FileSystemReader:
    return StoreReader(str(folder)) if is_remote(folder) else FileSystemReader(str(folder))


def copy_dataset_description(dataset: Dataset, folder: Where) -> None:
    """The dataset's manifest without its shard list, and its tokenizer, into ``folder/dataset/``."""
    target = child(folder, DATASET)
    manifest = {**dataset.manifest, "shards": [], "source": dataset.root}
    tokenizer = read_bytes(dataset.path(dataset.manifest["tokenizer"]["path"]))
    with open_atomic(child(target, TOKENIZER)) as handle:
        handle.write(tokenizer)
    manifest["tokenizer"] = {**manifest["tokenizer"], "path": TOKENIZER}
    write_json_atomic(child(target, MANIFEST), manifest)


def load_model_config(checkpoint: str | os.PathLike[str]) -> Config:
    """The model's LitGPT config: model_config.yaml, or the model_config section of hyperparameters.yaml."""
    path = child(checkpoint, "model_config.yaml")
    if is_file(path):
        values = yaml.safe_load(read_text(path))
        if not isinstance(values, dict):
            raise CheckpointError(f"{path} holds no model config")
        return Config(**values)
    hyperparameters = read_hyperparameters(checkpoint)
    if isinstance(hyperparameters.get("model_config"), dict):
        return Config(**hyperparameters["model_config"])
    raise CheckpointError(f"{checkpoint} has no model_config.yaml and its hyperparameters.yaml has no model_config: "
                          "pass a checkpoint folder written by `litgpt pretrain`")


def read_hyperparameters(checkpoint: str | os.PathLike[str]) -> dict[str, Any]:
    path = child(checkpoint, "hyperparameters.yaml")
    if not is_file(path):
        return {}
    return yaml.safe_load(read_text(path)) or {}


def weights_files(checkpoint: str | os.PathLike[str]) -> list[Where]:
    """The files that hold a checkpoint's weights: lit_model.pth, else the shards (empty: not a checkpoint)."""
    if is_file(child(checkpoint, WEIGHTS)):
        return [child(checkpoint, WEIGHTS)]
    if not is_file(child(checkpoint, SHARDED, ".metadata")):
        return []
    return [place(path) for path in matching(str(child(checkpoint, SHARDED, "*.distcp")))]


def load_lit_weights(checkpoint: str | os.PathLike[str]) -> dict[str, Any]:
    """The model's weights: from lit_model.pth (lazily; step checkpoints keep the whole training state, the
    model under "model"), else gathered from the sharded checkpoint's model shards (not the optimizer's).
    A remote lit_model.pth is read whole, once."""
    path = child(checkpoint, WEIGHTS)
    if not is_file(path) and is_dir(child(checkpoint, SHARDED)):
        return sharded_weights(child(checkpoint, SHARDED))
    if isinstance(path, str):
        state = torch.load(io.BytesIO(read_bytes(path)), map_location="cpu", weights_only=False)
    else:
        state = lazy_load(path)
    weights = state.get("model", state)
    if not isinstance(weights, dict) or "transformer.wte.weight" not in weights:
        raise CheckpointError(f"{path} holds no LitGPT model weights (keys: {', '.join(list(state)[:6])})")
    return weights


def sharded_weights(folder: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """The whole model from a torch.distributed.checkpoint folder, in one process (no process group)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    folder = place(folder)
    reader = dcp_reader(folder)
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


def consolidate(checkpoint: str | os.PathLike[str]) -> Where:
    """Write ``checkpoint/lit_model.pth`` (the model weights, as LitGPT's tools read them) from its shards."""
    if not is_dir(child(checkpoint, SHARDED)):
        raise CheckpointError(f"{checkpoint} has no {SHARDED}/ folder: nothing to consolidate")
    weights = sharded_weights(child(checkpoint, SHARDED))
    with open_atomic(child(checkpoint, WEIGHTS)) as handle:
        torch.save(weights, handle)
    return child(checkpoint, WEIGHTS)


def recorded_dataset(checkpoint: str | os.PathLike[str]) -> str | None:
    """The dataset path hyperparameters.yaml records, as seen from here.

    LitGPT records paths as they were typed. A relative dataset path is relative to the folder training ran
    in, which the checkpoint's own place tells when out_dir was relative too: ``out/jpeg-tiny/final`` lies
    two folders below it. So ``data/jpeg-tiny`` is found from any working directory. (A checkpoint on an
    object store: the path as recorded.)
    """
    hyperparameters = read_hyperparameters(checkpoint)
    dataset = ((hyperparameters.get("data") or {}).get("init_args") or {}).get("path")
    out_dir = hyperparameters.get("out_dir")
    checkpoint = place(checkpoint)
    if dataset is None or "://" in str(dataset) or Path(dataset).is_absolute() or not out_dir \
            or isinstance(checkpoint, str):
        return dataset
    depth, parents = len(Path(out_dir).parts), checkpoint.resolve().parents
    if Path(out_dir).is_absolute() or ".." in Path(out_dir).parts or depth >= len(parents):
        return dataset
    found = parents[depth] / dataset
    return str(found) if (found / MANIFEST).is_file() else dataset  # else as typed (the folder was moved)


def open_dataset(checkpoint: str | os.PathLike[str], dataset: str | None) -> Dataset:
    """The training dataset: --dataset; else the path hyperparameters.yaml recorded, if it is there and has the
    tokenizer the checkpoint carries; else the checkpoint's own description of it (profile and tokenizer:
    everything sampling needs, but no documents)."""
    own = child(checkpoint, DATASET)
    if dataset is not None:
        where = "given with --dataset"
    else:
        dataset = recorded_dataset(checkpoint)
        where = f"recorded in {child(checkpoint, 'hyperparameters.yaml')}"
        if is_file(child(own, MANIFEST)):
            carried = Dataset.open(str(own))
            try:
                found = Dataset.open(str(dataset)) if dataset is not None else None
            except DatasetError:
                found = None
            sha256 = carried.manifest["tokenizer"].get("sha256")
            return found if found is not None and found.manifest["tokenizer"].get("sha256") == sha256 else carried
        if dataset is None:
            raise CheckpointError(f"{child(checkpoint, 'hyperparameters.yaml')} records no dataset "
                                  "(data.init_args.path); pass --dataset DIR")
    try:
        return Dataset.open(str(dataset))
    except DatasetError as error:
        raise CheckpointError(f"cannot read the training dataset {dataset} ({where}): {error}; "
                              "the checkpoint needs its manifest.json and tokenizer.json (--dataset DIR)") from None


def load_model(checkpoint: str | os.PathLike[str], device: torch.device) -> GPT:
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


def load_for_sampling(checkpoint: str | os.PathLike[str], *, dataset: str | None = None, data: Dataset | None = None,
                      device: torch.device, constrained: bool = True) -> Sampler:
    """``data``: the checkpoint's dataset when the caller has opened it already (else ``open_dataset``)."""
    data = data or open_dataset(checkpoint, dataset)
    profile, tokenizer = data.profile, data.tokenizer
    model = load_model(checkpoint, device)
    if model.config.padded_vocab_size < tokenizer.vocab_size:
        raise CheckpointError(f"{checkpoint}: the model knows {model.config.padded_vocab_size} ids, "
                              f"its tokenizer {tokenizer.vocab_size}")
    constraint = TokenConstraint(profile.grammar(), tokenizer.token_bytes, tokenizer.eos_id) if constrained else None
    return Sampler(data, profile, tokenizer, model, constraint)


def existing_checkpoint(path: str | os.PathLike[str], flag: str = "--checkpoint") -> Where:
    """A checkpoint folder with weights in it, or a usage error: a missing folder is named as missing (on an
    object store, after its credentials and bucket are checked)."""
    folder = place(cli.existing_dir(str(place(path)), flag))
    if not weights_files(folder):
        raise cli.UsageError(f"{flag} {path}: not a checkpoint folder (no {WEIGHTS} or {SHARDED}/): give a "
                             "folder `python -m train.pretrain` wrote, e.g. out/jpeg-tiny/final")
    return folder
