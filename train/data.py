"""A LitGPT data module over codec-LM shards: seeded, distributed, exactly resumable epochs.

    data:
      class_path: train.data.CodecShards
      init_args:
        path: data/jpeg            # what `python -m preprocess.run` wrote (local, gs://, s3://)

**Examples.** Each stored sequence holds ``seq_len + 1`` tokens. A model with a shorter context
``L`` gets ``seq_len // L`` consecutive windows of ``L + 1`` tokens from it (windows share their edge
token, so every stored target is predicted once); the last ``seq_len % L`` tokens are not used. A
longer context than the shards' is an error.

**One epoch.** The shard order is a permutation seeded by ``(seed, epoch)``; within each shard the
examples are permuted by ``(seed, epoch, shard)``. That global order is cut into contiguous,
balanced ranges, one per rank (sizes differ by at most one example), so every example is seen exactly
once per epoch across all nodes and ranks, and a rank reads only the shards its range overlaps. A rank
cuts its range into batches of ``batch_size``; the last one may be smaller (nothing is dropped). Batch
``i`` of a rank is fetched by dataloader worker ``i % num_workers`` (each worker keeps the shard it
is reading in memory), and the DataLoader returns batches in index order, whatever the number of
workers. Ranks may differ by one batch per epoch; LitGPT's loop counts iterations, not epochs, so no
rank waits for another.

**Exact resume.** The train loader is stateful: ``state_dict()`` holds the epoch and the number of
batches the training loop has taken (counted where batches leave the loader, not where workers
prefetch them). ``litgpt pretrain --resume auto`` saves it with each checkpoint (the loader is in
LitGPT's checkpoint state); after a restart the loader starts exactly at the next batch, also when
LitGPT's ``CycleIterator`` wraps a fresh iterator around it, and across epoch boundaries, with any
number of dataloader workers.
"""

from __future__ import annotations

import inspect
import io
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from litgpt.data import DataModule
from torch.utils.data import DataLoader, DistributedSampler
from torch.utils.data import Dataset as TorchDataset

from shared.format.dataset import Dataset, DatasetError
from shared.format.files import read_bytes, size
from shared.format.shards import load_shard, sha256_hex


# ---- the plan of an epoch: pure functions of (manifest, seed, epoch, rank, world) ------------------
@dataclass(frozen=True)
class Layout:
    """What the plan needs about the data: examples per shard and how examples map to sequences."""

    shard_paths: tuple[str, ...]
    shard_sha256: tuple[str, ...]
    examples_per_shard: tuple[int, ...]
    windows_per_sequence: int
    context: int  # model tokens per example (the window is context + 1)

    @property
    def total(self) -> int:
        return sum(self.examples_per_shard)


def slot_range(total: int, slot: int, slots: int) -> tuple[int, int]:
    """Contiguous, balanced share ``slot`` of ``total`` (sizes differ by at most one)."""
    return total * slot // slots, total * (slot + 1) // slots


def epoch_order(layout: Layout, *, seed: int, epoch: int, shuffle: bool, start: int, stop: int) -> np.ndarray:
    """``(shard, example)`` rows at global positions ``start:stop`` of the epoch's order (an int64 array)."""
    shard_order = (np.random.default_rng([seed, epoch]).permutation(len(layout.shard_paths)) if shuffle
                   else np.arange(len(layout.shard_paths)))
    counts = np.array(layout.examples_per_shard, dtype=np.int64)[shard_order]
    ends = np.cumsum(counts)
    parts = [np.zeros((0, 2), np.int64)]
    for position, shard in enumerate(shard_order):
        first, last = int(ends[position] - counts[position]), int(ends[position])
        if last <= start or first >= stop:
            continue
        examples = (np.random.default_rng([seed, epoch, int(shard)]).permutation(last - first) if shuffle
                    else np.arange(last - first))[max(start, first) - first:min(stop, last) - first]
        parts.append(np.stack([np.full(len(examples), shard, np.int64), examples.astype(np.int64)], axis=1))
    return np.concatenate(parts)


# ---- what the DataLoader reads ---------------------------------------------------------------------
class RankBatches(TorchDataset):
    """Batch ``(epoch, i)`` of one rank's range (map-style, so any worker can fetch any batch of any epoch;
    the epoch travels with the index, so workers can live across epochs)."""

    def __init__(self, root: str, layout: Layout, *, batch_size: int, seed: int, shuffle: bool, rank: int, world: int,
                 verify_checksums: bool) -> None:
        self.root, self.layout, self.batch_size, self.seed, self.shuffle = root, layout, batch_size, seed, shuffle
        self.rank, self.world, self.verify_checksums = rank, world, verify_checksums
        self.start, self.stop = slot_range(layout.total, rank, world)
        self._plan: tuple[int, np.ndarray] | None = None  # (epoch, order), made once per epoch per worker
        self._loaded: tuple[int, np.ndarray] | None = None  # the shard this worker is reading

    def __len__(self) -> int:
        return -(-(self.stop - self.start) // self.batch_size)

    def __getitem__(self, key: tuple[int, int]) -> torch.Tensor:
        epoch, index = key
        if self._plan is None or self._plan[0] != epoch:
            self._plan = (epoch, epoch_order(self.layout, seed=self.seed, epoch=epoch, shuffle=self.shuffle,
                                                start=self.start, stop=self.stop))
        rows = []
        for shard, example in self._plan[1][index * self.batch_size:(index + 1) * self.batch_size].tolist():
            if self._loaded is None or self._loaded[0] != shard:
                self._loaded = (shard, self.read_shard(shard))  # examples come grouped by shard: keep one
            sequence, window = divmod(example, self.layout.windows_per_sequence)
            begin = window * self.layout.context
            rows.append(self._loaded[1][sequence, begin:begin + self.layout.context + 1])
        return torch.from_numpy(np.stack(rows).astype(np.int64))

    def read_shard(self, shard: int) -> np.ndarray:
        path = f"{self.root}/{self.layout.shard_paths[shard]}"
        data = read_bytes(path)
        if self.verify_checksums and sha256_hex(data) != self.layout.shard_sha256[shard]:
            raise DatasetError(f"{path}: sha256 differs from the manifest: the shard is corrupt or was replaced "
                               "(run `codec-shards verify` on the dataset)")
        return load_shard(io.BytesIO(data))


class FromBatch(DistributedSampler):
    """Batches ``(epoch, start)``, ``(epoch, start + 1)``, … of an epoch: where a resumed run picks up.

    It is a DistributedSampler only so that Fabric's ``setup_dataloaders`` keeps it: the rank's share is
    already chosen by ``RankBatches``, and Fabric must neither wrap it nor rebuild the loader.
    """

    def __init__(self, dataset: RankBatches) -> None:  # noqa: the parent's init would split by rank again
        self.dataset = dataset
        self.epoch = 0
        self.start = 0

    def set_epoch(self, epoch: int) -> None:
        """Ignored: the loader keeps its own epoch (Fabric may call this)."""

    def __iter__(self):
        return ((self.epoch, index) for index in range(self.start, len(self.dataset)))

    def __len__(self) -> int:
        return len(self.dataset) - self.start


class ResumableLoader(DataLoader):
    """A DataLoader that knows its position, saved and restored with checkpoints.

    The position is ``taken``: batches handed to the training loop since the start. LitGPT's loop takes
    one batch per iteration on every rank, so ``taken`` is the same on all ranks even when their epochs
    differ in length by a batch; that matters because FSDP checkpoints hold rank 0's copy of this state
    and every rank loads it. Each rank derives its own epoch and batch from it. (LitGPT takes one more
    batch before it stops, so ``final/`` is one batch ahead; ``--resume auto`` uses the ``step-*``
    checkpoints, which are exact.)
    """

    def __init__(self, dataset: RankBatches, num_workers: int) -> None:
        super().__init__(dataset, batch_size=None, sampler=FromBatch(dataset), num_workers=num_workers,
                         persistent_workers=num_workers > 0, pin_memory=torch.cuda.is_available())
        self.taken = 0

    def __len__(self) -> int:
        return len(self.dataset)

    @property
    def epoch(self) -> int:
        return self.taken // len(self.dataset)

    def __iter__(self):
        self.sampler.epoch, self.sampler.start = divmod(self.taken, len(self.dataset))
        for batch in super().__iter__():
            self.taken += 1
            yield batch

    def state_dict(self) -> dict[str, Any]:
        return {"taken": self.taken, "seed": self.dataset.seed, "world": self.dataset.world,
                "batch_size": self.dataset.batch_size, "examples": self.dataset.layout.total}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        expected = self.state_dict()
        changed = [k for k in ("seed", "world", "batch_size", "examples") if state.get(k) != expected[k]]
        if changed:
            raise ValueError("cannot resume the data exactly: "
                             + ", ".join(f"{k} {state.get(k)} -> {expected[k]}" for k in changed)
                             + " changed since the checkpoint was written; resume with the same settings")
        self.taken = state["taken"]


# ---- the LitGPT data module --------------------------------------------------------------------------
@dataclass
class CodecShards(DataModule):
    """Codec-LM shards as LitGPT pretraining data.

    Args:
        path: the dataset directory written by ``python -m preprocess.run`` (local, gs://, s3://).
        seed: seeds the shuffling of shards and examples; each epoch differs, the same seed repeats.
        num_workers: dataloader worker processes per rank (a resumed run may use another number).
        verify_checksums: check each shard's sha256 against the manifest when it is read.
    """

    path: str = "data/jpeg"
    seed: int = 42
    num_workers: int = 2
    verify_checksums: bool = True
    batch_size: int = field(default=1, init=False, repr=False)
    max_seq_length: int = field(default=-1, init=False, repr=False)

    def __post_init__(self) -> None:
        super().__init__()

    def connect(self, tokenizer: Any = None, batch_size: int = 1, max_seq_length: int | None = None) -> None:
        """Cheap checks, before the first step: a readable manifest, the context, the vocabulary, the shards."""
        self.dataset = dataset = Dataset.open(str(self.path))
        seq_len = dataset.manifest["seq_len"]
        self.batch_size = batch_size
        self.max_seq_length = seq_len if max_seq_length is None else max_seq_length
        if self.max_seq_length > seq_len:
            raise ValueError(f"the model's context ({self.max_seq_length} tokens) is longer than the dataset's "
                             f"sequences ({seq_len}); preprocess with --seq-len {self.max_seq_length} or more")
        config = _model_config_of_caller()
        if config is not None and config.padded_vocab_size < dataset.manifest["vocab_size"]:
            raise ValueError(f"the dataset's vocabulary ({dataset.manifest['vocab_size']} ids) is larger than the "
                             f"model's ({config.padded_vocab_size}); set model_config.padded_vocab_size and vocab_size")
        world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
        windows = seq_len // self.max_seq_length
        for split in ("train", "val"):
            examples = windows * sum(s["sequences"] for s in dataset.shards(split))
            if examples < world:  # a rank without data would stop early or fail while the others wait
                raise ValueError(f"{self.path} has {examples} {split} sequences for {world} ranks; every rank needs "
                                 "one: preprocess with more data, a larger --val-fraction or a shorter --seq-len")
        for shard in dataset.shards():
            path = dataset.path(shard["path"])
            try:
                found = size(path)
            except Exception:  # noqa: BLE001 — each filesystem raises its own "not found"
                raise DatasetError(f"{path} is missing (listed in the manifest)") from None
            if found != shard["bytes"]:
                raise DatasetError(f"{path} is {found} bytes, the manifest says {shard['bytes']}: "
                                   "the shard is truncated or was replaced (run `codec-shards verify`)")

    def layout(self, split: str) -> Layout:
        shards = self.dataset.shards(split)
        windows = self.dataset.manifest["seq_len"] // self.max_seq_length
        return Layout(tuple(s["path"] for s in shards), tuple(s["sha256"] for s in shards),
                      tuple(s["sequences"] * windows for s in shards), windows, self.max_seq_length)

    def batches(self, split: str, shuffle: bool) -> RankBatches:
        rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_available() and dist.is_initialized() else (0, 1)
        return RankBatches(self.dataset.root, self.layout(split), batch_size=self.batch_size, seed=self.seed,
                           shuffle=shuffle, rank=rank, world=world, verify_checksums=self.verify_checksums)

    def train_dataloader(self) -> ResumableLoader:
        return ResumableLoader(self.batches("train", shuffle=True), self.num_workers)

    def val_dataloader(self) -> DataLoader:
        batches = self.batches("val", shuffle=False)
        return DataLoader(batches, batch_size=None, sampler=FromBatch(batches), num_workers=self.num_workers,
                          persistent_workers=self.num_workers > 0)


def _model_config_of_caller() -> Any:
    """The litgpt Config of the ``litgpt pretrain`` run that is connecting this module, if any.

    LitGPT's ``connect()`` is not told the model, but its ``main()`` holds the config two frames up;
    without it (another caller) the vocabulary check is skipped.
    """
    from litgpt import Config

    frame = inspect.currentframe()
    while frame is not None:
        for value in frame.f_locals.values():
            if isinstance(value, Config):
                return value
        frame = frame.f_back
    return None
