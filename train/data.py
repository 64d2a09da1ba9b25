"""A LitGPT data module over codec-LM shards: seeded epochs, one global order on any number of ranks, exact
elastic resume.

    data:
      class_path: train.data.CodecShards
      init_args:
        path: data/jpeg            # what `python -m preprocess.run` wrote (local, gs://, s3://)

**Examples.** Each stored sequence holds ``seq_len + 1`` tokens. A model with a shorter context
``L`` gets ``seq_len // L`` consecutive windows of ``L + 1`` tokens from it (windows share their edge
token, so every stored target is predicted once); the last ``seq_len % L`` tokens are not used. A
longer context than the shards' is an error.

**One epoch.** The shard order is a permutation seeded by ``(seed, epoch)``; within each shard the
examples are permuted by ``(seed, epoch, shard)``. The epochs, one after another, make one global
stream of examples, and training reads it front to back whatever the number of ranks: iteration ``i``
of the training loop takes positions ``[i * W * m, (i + 1) * W * m)`` of the stream (``W`` ranks,
micro-batch ``m``), rank ``r`` the ``r``-th ``m`` of them. An optimizer step of ``G`` sequences
(LitGPT's ``global_batch_size``: ``G / (W * m)`` iterations of gradient accumulation) therefore
trains on positions ``[s * G, (s + 1) * G)`` on 1 GPU or 256: the same sequences, so the same
gradient. Every example is seen exactly once per epoch; a step may straddle two epochs; nothing is
dropped. Batch ``i`` of a rank is fetched by dataloader worker ``i % num_workers`` (each worker keeps
the shard it is reading in memory), and the DataLoader returns batches in index order, whatever the
number of workers. A rank reads whole shards (sha256-checked) and uses its ``1 / W`` of each: every
rank reads the whole dataset once per epoch (at the paper's scale ~230 GB per rank per epoch, a few
MB/s over a week of training).

Validation: rank ``r`` reads a contiguous ``1 / W`` of the val split in order (the last ``val % W``
sequences are left out when ``W`` does not divide it), so every rank runs the same number of batches:
sharded models gather their weights in every forward, all ranks together.

**Exact, elastic resume.** The train loader is stateful: ``state_dict()`` holds how many sequences of
the global stream the training loop has consumed (counted where batches leave the loader, not where
workers prefetch them). ``--resume auto`` saves it with each checkpoint (the loader is in LitGPT's
checkpoint state); after a restart, on the same or another number of ranks and micro-batch size, the
loader starts exactly at the next position, also when LitGPT's ``CycleIterator`` wraps a fresh
iterator around it, and across epoch boundaries, with any number of dataloader workers. (LitGPT takes
one more batch before it stops, so ``final/`` is one batch ahead; ``--resume auto`` uses the
``step-*`` checkpoints, which are exact.)
"""

from __future__ import annotations

import io
import warnings
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


# ---- the order of an epoch: a function of (manifest, seed, epoch) alone ---------------------------
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


class EpochOrder:
    """One epoch's order: the shards permuted by ``(seed, epoch)``, each shard's examples by
    ``(seed, epoch, shard)``; made once per epoch, each shard's permutation when first needed."""

    def __init__(self, layout: Layout, *, seed: int, epoch: int, shuffle: bool) -> None:
        self.seed, self.epoch, self.shuffle = seed, epoch, shuffle
        self.shards = (np.random.default_rng([seed, epoch]).permutation(len(layout.shard_paths)) if shuffle
                       else np.arange(len(layout.shard_paths)))
        self.counts = np.array(layout.examples_per_shard, dtype=np.int64)[self.shards]
        self.ends = np.cumsum(self.counts)
        self._examples: dict[int, np.ndarray] = {}  # the permutations of the last shards read

    def examples(self, shard: int, count: int) -> np.ndarray:
        if shard not in self._examples:
            if len(self._examples) >= 4:
                self._examples.pop(next(iter(self._examples)))
            self._examples[shard] = (np.random.default_rng([self.seed, self.epoch, shard]).permutation(count)
                                     if self.shuffle else np.arange(count))
        return self._examples[shard]

    def rows(self, start: int, stop: int) -> np.ndarray:
        """``(shard, example)`` rows at positions ``start:stop`` of the epoch (an int64 array)."""
        parts = [np.zeros((0, 2), np.int64)]
        position = int(np.searchsorted(self.ends, start, side="right"))
        while position < len(self.shards) and self.ends[position] - self.counts[position] < stop:
            first, last = int(self.ends[position] - self.counts[position]), int(self.ends[position])
            shard = int(self.shards[position])
            examples = self.examples(shard, last - first)[max(start, first) - first:min(stop, last) - first]
            parts.append(np.stack([np.full(len(examples), shard, np.int64), examples.astype(np.int64)], axis=1))
            position += 1
        return np.concatenate(parts)


# ---- what the DataLoader reads ---------------------------------------------------------------------
class ShardReader:
    """Rows of the epoch order as token arrays, keeping the shard being read (examples come grouped by shard)."""

    def __init__(self, root: str, layout: Layout, *, seed: int, shuffle: bool, verify_checksums: bool) -> None:
        self.root, self.layout, self.seed, self.shuffle = root, layout, seed, shuffle
        self.verify_checksums = verify_checksums
        self._orders: dict[int, EpochOrder] = {}  # the last two epochs (a batch may straddle them)
        self._loaded: tuple[int, np.ndarray] | None = None

    def rows(self, epoch: int, start: int, stop: int) -> list[np.ndarray]:
        """Token windows at positions ``start:stop`` of epoch ``epoch``'s order."""
        if epoch not in self._orders:
            if len(self._orders) >= 2:
                self._orders.pop(min(self._orders))
            self._orders[epoch] = EpochOrder(self.layout, seed=self.seed, epoch=epoch, shuffle=self.shuffle)
        return self.window_rows(self._orders[epoch].rows(start, stop))

    def window_rows(self, plan: np.ndarray) -> list[np.ndarray]:
        rows = []
        for shard, example in plan.tolist():
            if self._loaded is None or self._loaded[0] != shard:
                self._loaded = (shard, self.read_shard(shard))
            sequence, window = divmod(example, self.layout.windows_per_sequence)
            begin = window * self.layout.context
            rows.append(self._loaded[1][sequence, begin:begin + self.layout.context + 1])
        return rows

    def read_shard(self, shard: int) -> np.ndarray:
        path = f"{self.root}/{self.layout.shard_paths[shard]}"
        data = read_bytes(path)
        if self.verify_checksums and sha256_hex(data) != self.layout.shard_sha256[shard]:
            raise DatasetError(f"{path}: sha256 differs from the manifest: the shard is corrupt or was replaced "
                               "(run `codec-shards verify` on the dataset)")
        return load_shard(io.BytesIO(data))


class StreamBatches(TorchDataset):
    """Micro-batch ``i`` of one rank in the global training stream (map-style, so any worker can fetch any
    batch): positions ``[i * world * m + rank * m, … + m)``, epochs following each other."""

    def __init__(self, reader: ShardReader, *, batch_size: int, rank: int, world: int) -> None:
        self.reader, self.batch_size, self.rank, self.world = reader, batch_size, rank, world

    @property
    def examples(self) -> int:
        return self.reader.layout.total

    @property
    def sequences_per_iteration(self) -> int:
        """Sequences all ranks together take in one iteration of the training loop."""
        return self.world * self.batch_size

    def __len__(self) -> int:
        """Iterations per epoch (rounded up: an iteration may straddle two epochs)."""
        return -(-self.examples // self.sequences_per_iteration)

    def __getitem__(self, index: int) -> torch.Tensor:
        first = index * self.sequences_per_iteration + self.rank * self.batch_size
        rows: list[np.ndarray] = []
        position = first
        while position < first + self.batch_size:
            epoch, start = divmod(position, self.examples)
            stop = min(self.examples, start + first + self.batch_size - position)
            rows += self.reader.rows(epoch, start, stop)
            position += stop - start
        return as_batch(rows)


class SliceBatches(TorchDataset):
    """Batches of positions ``start:stop`` of one epoch's order, in order (validation)."""

    def __init__(self, reader: ShardReader, *, batch_size: int, start: int, stop: int) -> None:
        self.reader, self.batch_size, self.start, self.stop = reader, batch_size, start, stop

    def __len__(self) -> int:
        return -(-(self.stop - self.start) // self.batch_size)

    def __getitem__(self, index: int) -> torch.Tensor:
        start = self.start + index * self.batch_size
        return as_batch(self.reader.rows(0, start, min(self.stop, start + self.batch_size)))


def as_batch(rows: list[np.ndarray]) -> torch.Tensor:
    """Token windows as the LongTensor batch LitGPT's loop slices into inputs and targets."""
    return torch.from_numpy(np.stack(rows).astype(np.int64))


class FromBatch(DistributedSampler):
    """Batch indices ``start``, ``start + 1``, … ``start + len(dataset) - 1``: where a (resumed) pass begins.

    It is a DistributedSampler only so that Fabric's ``setup_dataloaders`` keeps it: the rank's share is
    already chosen by the dataset, and Fabric must neither wrap it nor rebuild the loader.
    """

    # No super().__init__(): the parent's would split the data by rank again.
    def __init__(self, dataset: TorchDataset) -> None:
        self.dataset = dataset
        self.start = 0

    def set_epoch(self, epoch: int) -> None:
        """Ignored: the loader keeps its own position (Fabric may call this)."""

    def __iter__(self):
        return iter(range(self.start, self.start + len(self.dataset)))

    def __len__(self) -> int:
        return len(self.dataset)


class ResumableLoader(DataLoader):
    """The training loader: it knows its position in the global stream, saved and restored with checkpoints.

    The position is ``consumed``: sequences of the global stream that the training loop has taken, all
    ranks together (``taken`` iterations x ranks x micro-batch). It is the same on every rank, so rank 0's
    copy (what a sharded checkpoint keeps) restores every rank, and it means the same on any number of
    ranks: a run resumed on another world size or micro-batch continues at the same position.
    """

    def __init__(self, dataset: StreamBatches, num_workers: int) -> None:
        super().__init__(dataset, batch_size=None, sampler=FromBatch(dataset), num_workers=num_workers,
                         persistent_workers=num_workers > 0, pin_memory=torch.cuda.is_available())
        self.taken = 0

    def __len__(self) -> int:
        return len(self.dataset)

    @property
    def consumed(self) -> int:
        return self.taken * self.dataset.sequences_per_iteration

    @property
    def epoch(self) -> int:
        return self.consumed // self.dataset.examples

    def __iter__(self):
        self.sampler.start = self.taken
        for batch in super().__iter__():
            self.taken += 1
            yield batch

    def state_dict(self) -> dict[str, Any]:
        return {"consumed": self.consumed, "seed": self.dataset.reader.seed, "examples": self.dataset.examples,
                "world": self.dataset.world, "batch_size": self.dataset.batch_size}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        expected = self.state_dict()
        if "consumed" not in state:
            raise ValueError("the checkpoint's data position was saved by an older trainer (per-rank order); "
                             "it cannot be continued exactly: start a new run")
        changed = [k for k in ("seed", "examples") if state.get(k) != expected[k]]
        if changed:
            raise ValueError("cannot resume the data exactly: "
                             + ", ".join(f"{k} {state.get(k)} -> {expected[k]}" for k in changed)
                             + " changed since the checkpoint was written; resume with the same dataset and seed")
        taken, left = divmod(state["consumed"], self.dataset.sequences_per_iteration)
        if left:
            raise ValueError(f"the checkpoint stopped after {state['consumed']} sequences, which is no whole number "
                             f"of iterations of {self.dataset.world} ranks x micro-batch {self.dataset.batch_size}: "
                             "resume with a world size and micro-batch whose product divides the global batch")
        self.taken = taken


# ---- the LitGPT data module --------------------------------------------------------------------------
@dataclass
class CodecShards(DataModule):
    """Codec-LM shards as LitGPT pretraining data.

    Args:
        path: the dataset directory written by ``python -m preprocess.run`` (local, gs://, s3://).
        seed: seeds the shuffling of shards and examples; each epoch differs, the same seed repeats.
        num_workers: dataloader worker processes per rank (a resumed run may use another number).
        verify_checksums: check each shard's sha256 against the manifest when it is read.
        model_vocab_size: the model's ``padded_vocab_size``: ``connect()`` refuses a dataset whose tokenizer has
            more ids. LitGPT does not tell a data module its model; ``python -m train.pretrain`` checks the
            vocabulary before any work and sets this. Unset under plain ``litgpt pretrain``, the check is skipped
            with a warning.
    """

    path: str = "data/jpeg"
    seed: int = 42
    num_workers: int = 2
    verify_checksums: bool = True
    model_vocab_size: int | None = None
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
                             f"sequences ({seq_len}); preprocess with --seq_len {self.max_seq_length} or more")
        if self.model_vocab_size is not None:
            self.check_vocabulary(self.model_vocab_size)
        else:  # LitGPT's connect() is not told the model: say so, rather than fail later without a reason
            warnings.warn(f"{self.path}: the model's vocabulary is not checked against the dataset's "
                          f"{dataset.manifest['vocab_size']} ids (set data.init_args.model_vocab_size to "
                          "model_config.padded_vocab_size; `python -m train.pretrain` checks it by itself): a smaller "
                          "model fails at its first step, an index out of range in its embedding", stacklevel=2)
        self.check_world(rank_and_world()[1], batch_size)
        for shard in dataset.shards():
            path = dataset.path(shard["path"])
            try:
                found = size(path)
            except Exception:  # noqa: BLE001 — each filesystem raises its own "not found"
                raise DatasetError(f"{path} is missing (listed in the manifest)") from None
            if found != shard["bytes"]:
                raise DatasetError(f"{path} is {found} bytes, the manifest says {shard['bytes']}: "
                                   "the shard is truncated or was replaced (run `codec-shards verify`)")

    def opened(self) -> Dataset:
        """The dataset, opened once: by ``connect()``, or by the checks ``train.pretrain`` runs before it."""
        if getattr(self, "dataset", None) is None:
            self.dataset = Dataset.open(str(self.path))
        return self.dataset

    def check_vocabulary(self, model_vocab_size: int) -> None:
        """The model has an embedding row for every id of the dataset's tokenizer."""
        dataset = self.opened()
        if model_vocab_size < dataset.manifest["vocab_size"]:
            raise ValueError(f"the dataset's vocabulary ({dataset.manifest['vocab_size']} ids) is larger than the "
                             f"model's ({model_vocab_size}); set model_config.padded_vocab_size and vocab_size")

    def check_world(self, world: int, micro_batch: int) -> None:
        """Every rank needs a micro-batch of training sequences and a validation sequence."""
        dataset = self.opened()
        seq_len = dataset.manifest["seq_len"]
        windows = seq_len // (self.max_seq_length if self.max_seq_length > 0 else seq_len)
        for split, needed in (("train", world * micro_batch), ("val", world)):
            examples = windows * sum(s["sequences"] for s in dataset.shards(split))
            if examples < needed:  # a rank without data would stop early or fail while the others wait
                raise ValueError(f"{self.path} has {examples} {split} sequences for {world} processes x micro-batch "
                                 f"{micro_batch}: {split} needs {needed}; preprocess with more data, a larger "
                                 "--val_fraction or a shorter --seq_len, or train on fewer processes")

    def layout(self, split: str) -> Layout:
        shards = self.dataset.shards(split)
        windows = self.dataset.manifest["seq_len"] // self.max_seq_length
        return Layout(tuple(s["path"] for s in shards), tuple(s["sha256"] for s in shards),
                      tuple(s["sequences"] * windows for s in shards), windows, self.max_seq_length)

    def reader(self, split: str, shuffle: bool) -> ShardReader:
        return ShardReader(self.dataset.root, self.layout(split), seed=self.seed, shuffle=shuffle,
                           verify_checksums=self.verify_checksums)

    def train_dataloader(self) -> ResumableLoader:
        rank, world = rank_and_world()
        batches = StreamBatches(self.reader("train", shuffle=True), batch_size=self.batch_size, rank=rank, world=world)
        return ResumableLoader(batches, self.num_workers)

    def val_dataloader(self) -> DataLoader:
        rank, world = rank_and_world()
        share = self.layout("val").total // world  # the same on every rank: see the module's docstring
        batches = SliceBatches(self.reader("val", shuffle=False), batch_size=self.batch_size, start=rank * share,
                               stop=(rank + 1) * share)
        return DataLoader(batches, batch_size=None, sampler=FromBatch(batches), num_workers=self.num_workers,
                          persistent_workers=self.num_workers > 0)


def rank_and_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1

