"""A LitGPT data module over codec-LM shards: seeded epochs, one global order on any number of ranks, exact
elastic resume, and each rank reading only the bytes of its own sequences.

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
(``G / (W * m)`` iterations of gradient accumulation) therefore trains on positions ``[s * G, (s + 1) * G)``
on 1 GPU or 256: the same sequences, so the same gradient. Every example is seen exactly once per epoch;
a step may straddle two epochs; nothing is dropped.

**The loader.** ``train_dataloader()`` is a plain ``DataLoader`` over ``TrainStream``, an
``IterableDataset`` whose one piece of state is the global position it starts at; no sampler (and an
iterable dataset is what Lightning Fabric's ``setup_dataloaders`` leaves as it is). The stream is
infinite, epochs following each other. With ``N`` dataloader workers, worker ``k`` makes this rank's
micro-batches ``k, k + N, k + 2N, …``, so the DataLoader's in-order round robin returns them in index
order whatever ``N``.

**Reading.** A shard is a tar of members of one size (``shared.format.shards.MemberLayout``), so where
sequence ``j`` lies is arithmetic. When a worker first needs a shard in an epoch, it works out every
sequence of that shard its own micro-batches will take in that epoch and fetches just those members
with one batched byte-range read (fsspec's ``cat_ranges``: concurrent requests on gs:// and s3://).
Members are coalesced into one request when at most ``MAX_GAP`` bytes (4 KiB) of other members lie
between them, which skips over at most one member of the tiny configs' 3 KB and never one at the 7B
configs' contexts (25 and 66 KB). A rank therefore reads about ``1 / W`` of the data per epoch, not all
of it: 0.88 to 1.2 x the train bytes / W on the tiny dataset at W = 2 to 8, the excess being what
coalescing reads past (``tests/test_train.py`` and ``python -m bench.loader`` measure it). A worker of
``N`` reads and holds in memory its ``1 / (W * N)`` of the shard it is in. A worker that needs every
member of a shard (one rank, at most one worker) reads the file whole, in one request.

**What is checked as it is read.** Each member's ustar header (its checksum, and that it is the file
``{shard}-{index:06d}.npy`` of the expected size) and its npy header (shape ``(seq_len + 1,)``, the
manifest's dtype): a mismatch is a ``DatasetError`` naming the shard and member. A shard read whole
(above) is also checked against the manifest's sha256 when ``verify_checksums`` is set. The tokens of a
partly read shard are not checksummed (the manifest has one sha256 per whole file): ``codec-shards
verify`` checks every byte. ``connect()`` checks, before any work, that every shard exists and has the
size the manifest lists, and that this size is that of its number of members.

Validation: rank ``r`` reads a contiguous ``1 / W`` of the val split in order, through the same reader
(the last ``val % W`` sequences are left out when ``W`` does not divide it), so every rank runs the same
number of batches: sharded models gather their weights in every forward, all ranks together.

**Exact, elastic resume.** The train loader is stateful: ``state_dict()`` holds how many sequences of
the global stream the training loop has consumed (counted where batches leave the loader in the main
process, not where workers prefetch them). Checkpoints save it; ``load_state_dict()`` sets the position
the stream starts at, on the same or another number of ranks and micro-batch size, across epoch
boundaries, with any number of dataloader workers. (Under plain ``litgpt pretrain``, LitGPT takes one
more batch before it stops, so its ``final/`` is one batch ahead; ``--resume auto`` uses the ``step-*``
checkpoints, which are exact.)
"""

from __future__ import annotations

import io
import itertools
import warnings
from abc import abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from fsspec.core import url_to_fs
from litgpt.data import DataModule
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from shared.format.dataset import Dataset, DatasetError
from shared.format.files import size
from shared.format.shards import TAR_BLOCK, MemberLayout, member_layout, sample_key, sha256_hex, shard_name_of

# Two members a worker needs are fetched in one request when at most this many bytes of members it does not
# need lie between them: skipping 4 KiB costs less than a request on any filesystem (a page of a local disk;
# ~40 us of transfer against tens of ms per GET on an object store), and it is small enough that a rank's
# bytes stay about 1 / W (on the tiny configs' 3 KB members it skips at most one member per request gap).
MAX_GAP = 4096


# ---- the order of an epoch: a function of (manifest, seed, epoch) alone ---------------------------
@dataclass(frozen=True)
class Layout:
    """What the plan and the reader need about a split: its shards, and how examples map to sequences."""

    shard_paths: tuple[str, ...]
    shard_sha256: tuple[str, ...]
    sequences_per_shard: tuple[int, ...]
    windows_per_sequence: int
    context: int  # model tokens per example (the window is context + 1)
    members: MemberLayout

    @property
    def examples_per_shard(self) -> tuple[int, ...]:
        return tuple(s * self.windows_per_sequence for s in self.sequences_per_shard)

    @property
    def total(self) -> int:
        return sum(self.examples_per_shard)


class EpochOrder:
    """One epoch's order: the shards permuted by ``(seed, epoch)``, each shard's examples by
    ``(seed, epoch, shard)``; made once per epoch, each shard's permutation when first needed."""

    def __init__(self, layout: Layout, *, seed: int, epoch: int, shuffle: bool) -> None:
        self.seed, self.epoch, self.shuffle = seed, epoch, shuffle
        self.examples_per_shard = layout.examples_per_shard
        self.shards = (np.random.default_rng([seed, epoch]).permutation(len(layout.shard_paths)) if shuffle
                       else np.arange(len(layout.shard_paths)))
        self.counts = np.array(self.examples_per_shard, dtype=np.int64)[self.shards]
        self.ends = np.cumsum(self.counts)
        self._examples: dict[int, np.ndarray] = {}  # the permutations of the last shards read

    def examples(self, shard: int) -> np.ndarray:
        """The shard's examples in this epoch's order."""
        if shard not in self._examples:
            if len(self._examples) >= 4:
                self._examples.pop(next(iter(self._examples)))
            count = self.examples_per_shard[shard]
            self._examples[shard] = (np.random.default_rng([self.seed, self.epoch, shard]).permutation(count)
                                     if self.shuffle else np.arange(count))
        return self._examples[shard]

    def segments(self, start: int, stop: int) -> list[tuple[int, int, int, int]]:
        """``(shard, first, start, stop)`` for each shard that positions ``start:stop`` of the epoch reach, in
        order: the shard's examples are at positions ``[first, first + its examples)``."""
        found = []
        position = int(np.searchsorted(self.ends, start, side="right"))
        while position < len(self.shards) and self.ends[position] - self.counts[position] < stop:
            first, last = int(self.ends[position] - self.counts[position]), int(self.ends[position])
            found.append((int(self.shards[position]), first, max(start, first), min(stop, last)))
            position += 1
        return found


# ---- reading members by byte range -----------------------------------------------------------------
@dataclass
class ReadCounts:
    """What one reader fetched, for measurements: a visit is one batched read of one shard."""

    bytes: int = 0
    requests: int = 0  # byte ranges (a whole-file read is one)
    visits: int = 0
    whole: int = 0  # visits that read a whole shard file
    largest: int = 0  # bytes of the largest visit


class ShardReader:
    """Sequences of a split's shards, fetched by byte range and checked member by member (see the module's
    docstring for what is checked)."""

    def __init__(self, root: str, layout: Layout, *, verify_checksums: bool) -> None:
        self.root, self.layout, self.verify_checksums = root, layout, verify_checksums
        self.names = tuple(shard_name_of({"path": p}) for p in layout.shard_paths)
        self.counts = ReadCounts()

    def path(self, shard: int) -> str:
        return f"{self.root}/{self.layout.shard_paths[shard]}"

    def read(self, shard: int, sequences: np.ndarray) -> np.ndarray:
        """The tokens of ``sequences`` (sorted, unique, not empty) of a shard, ``(len(sequences), seq_len + 1)``,
        fetched with one batched read."""
        members, path = self.layout.members, self.path(shard)
        # Looked up per read, not kept: fsspec's cache gives each process its own instance, and an async one
        # (gcsfs, s3fs) made before a DataLoader worker forks refuses to run in it.
        filesystem, target = url_to_fs(path)
        whole = len(sequences) == self.layout.sequences_per_shard[shard]
        ranges = [(0, len(sequences) - 1)] if whole else coalesce(sequences, members.stride)
        try:
            if whole:  # one range anyway: read as the file, so that its sha256 can be checked
                blobs = [filesystem.cat_file(target)]
            else:
                blobs = filesystem.cat_ranges([target] * len(ranges), [first * members.stride for first, _ in ranges],
                                              [last * members.stride + TAR_BLOCK + members.npy_bytes
                                               for _, last in ranges], on_error="raise")
        except FileNotFoundError:
            raise DatasetError(f"{path} is missing (listed in the manifest)") from None
        except Exception as error:  # noqa: BLE001 — a store failing past its client's retries, in its own kinds
            raise DatasetError(f"{path}: reading it failed ({store_failure(error)})") from None
        if whole and self.verify_checksums and sha256_hex(blobs[0]) != self.layout.shard_sha256[shard]:
            raise DatasetError(f"{path}: sha256 differs from the manifest: the shard is corrupt or was replaced "
                               "(run `codec-shards verify` on the dataset)")
        read = sum(len(b) for b in blobs)
        self.counts.bytes += read
        self.counts.requests += len(ranges)
        self.counts.visits += 1
        self.counts.whole += whole
        self.counts.largest = max(self.counts.largest, read)
        tokens = np.empty((len(sequences), members.width), members.dtype)
        ranged = iter(zip(ranges, blobs))
        (first, last), blob = (0, -1), b""
        for row, sequence in enumerate(sequences.tolist()):
            while sequence > last:  # ranges and sequences are both in shard order
                (first, last), blob = next(ranged)
            tokens[row] = self.member(blob, (sequence - first) * members.stride, shard, sequence)
        return tokens

    def member(self, blob: bytes, offset: int, shard: int, sequence: int) -> np.ndarray:
        """One member's tokens, after checking its tar and npy headers."""
        members = self.layout.members
        name = f"{sample_key(self.names[shard], sequence)}.npy"
        tokens_at = offset + TAR_BLOCK + len(members.npy_header)
        end = tokens_at + members.width * members.dtype.itemsize
        if len(blob) < end:  # the file is shorter than the manifest said when connect() checked it
            problem = f"the shard ends {end - len(blob)} bytes early"
        else:
            problem = member_problem(blob[offset:offset + TAR_BLOCK], blob[offset + TAR_BLOCK:tokens_at], name, members)
        if problem:
            raise DatasetError(f"{self.path(shard)}: member {sequence} ({name}): {problem}; the shard is corrupt or "
                               "was replaced (run `codec-shards verify` on the dataset)")
        return np.frombuffer(blob, members.dtype, members.width, tokens_at)


def store_failure(error: BaseException) -> str:
    """A store client's error in one line (gcsfs, s3fs and aiohttp raise their own kinds, some multi-line)."""
    return f"{type(error).__name__}: {' '.join(str(error).split())[:200]}"


def coalesce(sequences: np.ndarray, stride: int, max_gap: int = MAX_GAP) -> list[tuple[int, int]]:
    """``(first, last)`` member indices of each request: ``sequences`` (sorted) split wherever more than
    ``max_gap`` bytes of other members lie between two of them."""
    if not len(sequences):
        return []
    skippable = max_gap // stride  # whole members one request may read past
    breaks = np.flatnonzero(np.diff(sequences) > skippable + 1) + 1
    firsts, lasts = np.concatenate([[0], breaks]), np.concatenate([breaks - 1, [len(sequences) - 1]])
    return [(int(sequences[a]), int(sequences[b])) for a, b in zip(firsts, lasts)]


def member_problem(header: bytes, npy: bytes, name: str, members: MemberLayout) -> str | None:
    """What is wrong with a member's ustar header and npy header, or None."""
    problem = tar_header_problem(header, name, members.npy_bytes)
    if problem is None and npy != members.npy_header and not same_array(npy, members):
        problem = f"its npy header is not that of {members.width} {members.dtype} tokens"
    return problem


def tar_header_problem(header: bytes, name: str, size: int) -> str | None:
    """What is wrong with a 512-byte ustar header that should be the regular file ``name`` of ``size`` bytes.
    The fields are read at their POSIX offsets: tarfile's full parse costs six times as much, per member."""
    name_field, size_field, checksum_field = header[:100], header[124:136], header[148:156]
    typeflag, magic, prefix_field = header[156:157], header[257:262], header[345:500]
    try:
        checksum, found_size = (int(field.strip(b"\0 ") or b"-1", 8) for field in (checksum_field, size_field))
    except ValueError:
        return "its tar header is invalid (not octal)"
    if checksum != int(np.frombuffer(header, np.uint8).sum()) - sum(checksum_field) + 8 * ord(" "):  # the checksum
        return "its tar header is invalid (bad checksum)"  # counts its own field as spaces
    prefix = prefix_field.split(b"\0", 1)[0]
    found = (prefix + b"/" if prefix else b"") + name_field.split(b"\0", 1)[0]
    if magic != b"ustar" or typeflag not in (b"0", b"\0") or found != name.encode() or found_size != size:
        return (f"its tar header is for {found.decode(errors='replace')!r} ({found_size} bytes), expected the file "
                f"{name!r} ({size} bytes)")
    return None


def same_array(npy: bytes, members: MemberLayout) -> bool:
    """Whether ``npy`` is another NumPy's spelling of the expected header: the same array at the same length."""
    stream = io.BytesIO(npy)
    try:
        version = np.lib.format.read_magic(stream)
        read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran, dtype = read(stream)
    except (ValueError, EOFError):
        return False
    return (shape, fortran, dtype) == ((members.width,), False, members.dtype) and stream.tell() == len(npy)


# ---- what the DataLoader iterates ------------------------------------------------------------------
@dataclass
class Visit:
    """The sequences of one shard that one worker takes in one epoch, read at once."""

    sequences: np.ndarray  # sorted shard indices
    tokens: np.ndarray  # (len(sequences), seq_len + 1)


class ShardStream(IterableDataset):
    """Batches of a split's stream of examples: batch ``i`` holds the positions ``span(i)``, epochs following each
    other. Worker ``k`` of ``N`` makes batches ``k, k + N, …`` of ``indices()``, reading a shard's members once
    per epoch (all those its batches take) when its first batch reaches the shard."""

    def __init__(self, root: str, layout: Layout, *, seed: int, shuffle: bool, batch_size: int,
                 verify_checksums: bool) -> None:
        self.layout, self.seed, self.shuffle, self.batch_size = layout, seed, shuffle, batch_size
        self.reader = ShardReader(root, layout, verify_checksums=verify_checksums)
        self._orders: dict[int, EpochOrder] = {}  # the last two epochs (a batch may straddle them)
        self._visits: dict[tuple[int, int], Visit] = {}  # (epoch, shard): what the last batch read

    @property
    def examples(self) -> int:
        """Examples per epoch."""
        return self.layout.total

    @abstractmethod
    def span(self, index: int) -> tuple[int, int]:
        """Stream positions ``[start, stop)`` of batch ``index`` (empty past the last batch)."""

    @abstractmethod
    def indices(self, worker: int, workers: int) -> Iterator[int]:
        """The batch indices worker ``worker`` of ``workers`` makes, in order."""

    def __iter__(self) -> Iterator[torch.Tensor]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        self._visits = {}  # read for a pass that began elsewhere (a persistent worker's, a rewound loader's)
        for index in self.indices(worker, workers):
            yield self.batch(index, workers)

    def order(self, epoch: int) -> EpochOrder:
        if epoch not in self._orders:
            if len(self._orders) >= 2:
                self._orders.pop(min(self._orders))
            self._orders[epoch] = EpochOrder(self.layout, seed=self.seed, epoch=epoch, shuffle=self.shuffle)
        return self._orders[epoch]

    def batch(self, index: int, step: int) -> torch.Tensor:
        """Batch ``index``; this worker's next batch is ``index + step``."""
        lo, hi = self.span(index)
        parts, visits = [], {}
        for epoch in range(lo // self.examples, (hi - 1) // self.examples + 1):
            offset, order = epoch * self.examples, self.order(epoch)
            for shard, first, start, stop in order.segments(max(lo, offset) - offset,
                                                            min(hi, offset + self.examples) - offset):
                visit = self._visits.get((epoch, shard))
                if visit is None:
                    visit = self.visit(epoch, shard, offset + first, index, step)
                visits[epoch, shard] = visit
                parts.append(self.rows(visit, order.examples(shard)[start - first:stop - first]))
        # A shard's positions are contiguous and batches move forward: one this batch did not reach is done.
        self._visits = visits
        return as_batch(parts)

    def visit(self, epoch: int, shard: int, begin: int, index: int, step: int) -> Visit:
        """Read every sequence of ``shard`` that batches ``index, index + step, …`` take in ``epoch`` (the shard's
        examples are at stream positions ``[begin, begin + its examples)``)."""
        end = begin + self.layout.examples_per_shard[shard]
        positions = []
        lo, hi = self.span(index)
        while lo < min(hi, end):
            positions.append(np.arange(max(lo, begin), min(hi, end)))
            index += step
            lo, hi = self.span(index)
        examples = self.order(epoch).examples(shard)[np.concatenate(positions) - begin]
        sequences = np.unique(examples // self.layout.windows_per_sequence)
        return Visit(sequences, self.reader.read(shard, sequences))

    def rows(self, visit: Visit, examples: np.ndarray) -> np.ndarray:
        """The token windows of ``examples`` (of the visit's shard), ``(len(examples), context + 1)``."""
        context, windows = self.layout.context, self.layout.windows_per_sequence
        if windows == 1:  # the whole stored sequence (the usual case): no column index to build
            return visit.tokens[np.searchsorted(visit.sequences, examples), :context + 1]
        sequence, window = np.divmod(examples, windows)
        columns = (window * context)[:, None] + np.arange(context + 1)
        return visit.tokens[np.searchsorted(visit.sequences, sequence)[:, None], columns]


class TrainStream(ShardStream):
    """This rank's micro-batches of the global training stream, infinite: micro-batch ``i`` holds positions
    ``[i * world * m + rank * m, … + m)``, and iteration starts at global position ``start`` (sequences consumed
    by all ranks together; set by ``ResumableLoader`` before its workers start)."""

    def __init__(self, root: str, layout: Layout, *, seed: int, batch_size: int, rank: int, world: int,
                 verify_checksums: bool) -> None:
        super().__init__(root, layout, seed=seed, shuffle=True, batch_size=batch_size,
                         verify_checksums=verify_checksums)
        self.rank, self.world = rank, world
        self.start = 0

    @property
    def sequences_per_iteration(self) -> int:
        """Sequences all ranks together take in one iteration of the training loop."""
        return self.world * self.batch_size

    @property
    def iterations_per_epoch(self) -> int:
        """Rounded up: an iteration may straddle two epochs."""
        return -(-self.examples // self.sequences_per_iteration)

    def span(self, index: int) -> tuple[int, int]:
        start = index * self.sequences_per_iteration + self.rank * self.batch_size
        return start, start + self.batch_size

    def indices(self, worker: int, workers: int) -> Iterator[int]:
        return itertools.count(self.start // self.sequences_per_iteration + worker, workers)


class ValStream(ShardStream):
    """Batches of positions ``first:stop`` of the split in stored order (one rank's share of validation)."""

    def __init__(self, root: str, layout: Layout, *, batch_size: int, first: int, stop: int,
                 verify_checksums: bool) -> None:
        super().__init__(root, layout, seed=0, shuffle=False, batch_size=batch_size,
                         verify_checksums=verify_checksums)
        self.first, self.stop = first, stop

    def __len__(self) -> int:
        return -(-(self.stop - self.first) // self.batch_size)

    def span(self, index: int) -> tuple[int, int]:
        start = self.first + index * self.batch_size
        return start, min(self.stop, start + self.batch_size)

    def indices(self, worker: int, workers: int) -> Iterator[int]:
        return iter(range(worker, len(self), workers))


def as_batch(parts: list[np.ndarray]) -> torch.Tensor:
    """Token windows as the LongTensor batch a training loop slices into inputs and targets."""
    return torch.from_numpy(np.concatenate(parts).astype(np.int64))


class ResumableLoader(DataLoader):
    """The training loader: a plain DataLoader over a ``TrainStream`` that counts the batches it hands out, so it
    knows its position in the global stream, saved and restored with checkpoints.

    The position is ``consumed``: sequences of the global stream that the training loop has taken, all
    ranks together (``taken`` iterations x ranks x micro-batch). It is the same on every rank, so rank 0's
    copy (what a sharded checkpoint keeps) restores every rank, and it means the same on any number of
    ranks: a run resumed on another world size or micro-batch continues at the same position. Workers are
    not persistent: each ``iter()`` starts them from the stream at the current position.
    """

    def __init__(self, dataset: TrainStream, num_workers: int) -> None:
        super().__init__(dataset, batch_size=None, num_workers=num_workers, pin_memory=torch.cuda.is_available())
        self.taken = 0

    def __len__(self) -> int:
        """Iterations per epoch (LitGPT's warmup fraction counts them). Not DataLoader's length: that would warn
        once an infinite stream passes it."""
        return self.dataset.iterations_per_epoch

    @property
    def consumed(self) -> int:
        return self.taken * self.dataset.sequences_per_iteration

    @property
    def epoch(self) -> int:
        return self.consumed // self.dataset.examples

    def __iter__(self) -> Iterator[torch.Tensor]:
        self.dataset.start = self.consumed  # before DataLoader copies the dataset into its workers
        try:
            for batch in super().__iter__():
                self.taken += 1
                yield batch
        except DatasetError as error:
            raise own_line(error) from None

    def state_dict(self) -> dict[str, Any]:
        return {"consumed": self.consumed, "seed": self.dataset.seed, "examples": self.dataset.examples,
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
        self.dataset.start = self.consumed


def own_line(error: DatasetError) -> DatasetError:
    """A DatasetError raised in a DataLoader worker arrives with the worker's traceback in its message (PyTorch
    re-raises it so): its own one line again, as the commands print errors."""
    lines = str(error).strip().splitlines()
    if len(lines) > 1 and lines[0].startswith("Caught DatasetError"):
        return DatasetError(lines[-1].split("DatasetError: ", 1)[-1])
    return error


# ---- the LitGPT data module --------------------------------------------------------------------------
@dataclass
class CodecShards(DataModule):
    """Codec-LM shards as LitGPT pretraining data.

    Args:
        path: the dataset directory written by ``python -m preprocess.run`` (local, gs://, s3://).
        seed: seeds the shuffling of shards and examples; each epoch differs, the same seed repeats.
        num_workers: dataloader worker processes per rank (a resumed run may use another number).
        verify_checksums: check a shard's sha256 against the manifest where a worker reads the shard whole (one
            rank with at most one worker; a partial read cannot be hashed, and its members' headers are checked
            either way: see the module's docstring).
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
        members = self.members()
        for shard in dataset.shards():
            path = dataset.path(shard["path"])
            # the reader finds members by arithmetic: a shard of another layout would be read at wrong offsets
            if shard["bytes"] != members.shard_bytes(shard["sequences"]):
                raise DatasetError(f"{path}: the manifest lists {shard['bytes']} bytes for {shard['sequences']} "
                                   f"sequences, not the {members.shard_bytes(shard['sequences'])} of a shard of "
                                   f"{members.width}-token {members.dtype} members (run `codec-shards verify`)")
            try:
                found = size(path)
            except FileNotFoundError:
                raise DatasetError(f"{path} is missing (listed in the manifest)") from None
            except Exception as error:  # noqa: BLE001 — a store failing past its client's retries
                raise DatasetError(f"{path}: cannot be read ({store_failure(error)})") from None
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

    def members(self) -> MemberLayout:
        """Where each sequence lies in a shard (the manifest's dtype; older manifests imply it by vocabulary)."""
        manifest = self.opened().manifest
        dtype = manifest.get("dtype") or ("uint16" if manifest["vocab_size"] <= 1 << 16 else "uint32")
        return member_layout(manifest["seq_len"], dtype)

    def layout(self, split: str) -> Layout:
        dataset = self.opened()
        shards = dataset.shards(split)
        windows = dataset.manifest["seq_len"] // self.max_seq_length
        return Layout(tuple(s["path"] for s in shards), tuple(s["sha256"] for s in shards),
                      tuple(s["sequences"] for s in shards), windows, self.max_seq_length, self.members())

    def train_stream(self, rank: int, world: int) -> TrainStream:
        """Rank ``rank`` of ``world``'s share of the training stream (what ``train_dataloader()`` iterates)."""
        return TrainStream(self.opened().root, self.layout("train"), seed=self.seed, batch_size=self.batch_size,
                           rank=rank, world=world, verify_checksums=self.verify_checksums)

    def val_stream(self, rank: int, world: int) -> ValStream:
        """Rank ``rank`` of ``world``'s contiguous share of the val split (the same size on every rank)."""
        layout = self.layout("val")
        share = layout.total // world  # the same on every rank: see the module's docstring
        return ValStream(self.opened().root, layout, batch_size=self.batch_size, first=rank * share,
                         stop=(rank + 1) * share, verify_checksums=self.verify_checksums)

    def train_dataloader(self) -> ResumableLoader:
        return ResumableLoader(self.train_stream(*rank_and_world()), self.num_workers)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_stream(*rank_and_world()), batch_size=None, num_workers=self.num_workers,
                          persistent_workers=self.num_workers > 0)


def rank_and_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1
