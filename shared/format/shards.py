"""The dataset format: what `preprocess.run` writes and the trainer and `codec-shards` read.

    DIR/manifest.json        profile (with header), tokenizer file + sha256, vocab, BOS/EOS ids, seq_len,
                             every shard (split, path, sha256, bytes, sequences, tokens), totals,
                             the arguments and library versions. Written last: no manifest, no dataset.
    DIR/tokenizer.json       the byte-level BPE (a standard HF tokenizers file)
    DIR/{train,val}/shard-000000.tar …
                             WebDataset tars; each sample is one packed sequence of seq_len + 1 token ids,
                             member "{shard}-{index:06d}.npy" (uint16, or uint32 for vocabularies > 65536)
    DIR/documents.parquet    one row per document (DOCUMENT_SCHEMA): where its tokens are (shard, sequence,
                             offset); a shard's rows are one row group
    DIR/rejected.jsonl       one line per rejected input: source, reason, message
    DIR/inputs.parquet       one row per input (INPUT_SCHEMA), saying where it went: a document (its key),
                             a duplicate (key of the document that kept its stream) or rejected (reason,
                             message). Row group b holds the inputs whose source hashes to bucket b
                             (``input_bucket``), sorted by source, so a lookup by name reads one row group.

Packing: a document is BOS + stream tokens + EOS; a shard's documents are concatenated and cut into
windows of seq_len + 1; the last partial window is dropped (counted as dropped tokens). Documents
may span windows, never shards. While the job runs, each shard's rows wait in DIR/.staging/ (gone
when the manifest is written).
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import tarfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, BinaryIO

import numpy as np
import pyarrow as pa

FORMAT = "codec-lm-shards/1"
MANIFEST = "manifest.json"
TOKENIZER = "tokenizer.json"
DOCUMENTS = "documents.parquet"
REJECTED = "rejected.jsonl"
INPUTS = "inputs.parquet"
SPLITS = ("train", "val")
STAGING = ".staging"
DOCUMENT_SCHEMA = pa.schema([
    ("key", pa.string()), ("source", pa.string()), ("split", pa.string()), ("stream_bytes", pa.int64()),
    ("tokens", pa.int64()), ("shard", pa.string()), ("sequence", pa.int64()), ("offset", pa.int64()),
    ("complete", pa.bool_()),
])
OUTCOMES = ("document", "duplicate", "rejected")
INPUT_SCHEMA = pa.schema([
    ("source", pa.string()), ("outcome", pa.string()), ("key", pa.string()), ("reason", pa.string()),
    ("message", pa.string()),
])
# One row group of inputs.parquet: ~0.5 KB per row in a writing worker's memory (Python rows, then
# Arrow), ~125 MB at this size; 23M inputs make 92 buckets written in parallel.
INPUTS_PER_BUCKET = 250_000


def shard_name(index: int) -> str:
    return f"shard-{index:06d}"


def shard_name_of(record: dict[str, Any]) -> str:
    """The shard name (``shard-000000``) of a manifest's shard record: what documents.parquet's ``shard`` holds."""
    return record["path"].rsplit("/", 1)[-1].removesuffix(".tar")


def staged_documents_path(split: str, shard: str) -> str:
    """Where a shard's document rows wait, relative to the dataset folder, until the manifest step merges them."""
    return f"{STAGING}/documents/{split}-{shard}.parquet"


def input_buckets(inputs: int) -> int:
    """How many row groups inputs.parquet has for a job with ``inputs`` inputs."""
    return max(1, math.ceil(inputs / INPUTS_PER_BUCKET))


def input_bucket(source: str, buckets: int) -> int:
    """The row group of inputs.parquet that holds ``source`` (the same on every machine and run)."""
    return int.from_bytes(hashlib.sha256(source.encode()).digest()[:8], "big") % buckets


def staged_inputs_path(bucket: int) -> str:
    """Where one bucket of input rows waits, relative to the dataset folder, until the manifest step merges them."""
    return f"{STAGING}/inputs/bucket-{bucket:06d}.parquet"


def shard_path(split: str, index: int) -> str:
    """Path of a shard relative to the dataset directory."""
    return f"{split}/{shard_name(index)}.tar"


def sample_key(shard: str, index: int) -> str:
    return f"{shard}-{index:06d}"


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class PackedShard:
    windows: np.ndarray  # (sequences, seq_len + 1)
    placements: list[tuple[int, int]]  # per document: (sequence, offset) of its BOS in the windows
    tokens: int  # tokens kept in windows
    dropped: int  # tokens of the last partial window


def pack_documents(documents: Sequence[np.ndarray], seq_len: int, dtype: np.dtype) -> PackedShard:
    """Concatenate documents (each already BOS … EOS) and cut windows of ``seq_len + 1`` tokens."""
    width = seq_len + 1
    lengths = np.array([len(d) for d in documents], dtype=np.int64)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]) if len(documents) else np.zeros(0, np.int64)
    total = int(lengths.sum())
    sequences = total // width
    flat = np.concatenate(documents).astype(dtype, copy=False) if len(documents) else np.zeros(0, dtype)
    windows = flat[: sequences * width].reshape(sequences, width)
    placements = [(int(s // width), int(s % width)) for s in starts]
    return PackedShard(windows, placements, sequences * width, total - sequences * width)


def npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(array), allow_pickle=False)
    return buffer.getvalue()


def shard_tar_bytes(shard: str, windows: np.ndarray) -> bytes:
    """A deterministic tar: sorted members, fixed mtime/owner/mode, plain ustar headers."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for index, window in enumerate(windows):
            payload = npy_bytes(window)
            info = tarfile.TarInfo(f"{sample_key(shard, index)}.npy")
            info.size, info.mtime, info.mode = len(payload), 0, 0o644
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            tar.addfile(info, io.BytesIO(payload))
    return buffer.getvalue()


TAR_BLOCK = 512  # a ustar header, and the unit members are padded to
TAR_RECORD = 20 * TAR_BLOCK  # Python's tarfile pads the whole archive to a multiple of this


@dataclass(frozen=True)
class MemberLayout:
    """Where sequence ``i`` lies in a shard tar, without reading it: ``shard_tar_bytes`` writes one member per
    sequence, all of one size, back to back (a 512-byte ustar header, then the npy padded to 512 bytes), so
    member ``i``'s header starts at byte ``i * stride`` and its npy ``TAR_BLOCK`` bytes later."""

    width: int  # tokens per stored sequence (seq_len + 1)
    dtype: np.dtype
    npy_header: bytes  # what np.save writes before the tokens of one such sequence

    @property
    def npy_bytes(self) -> int:
        """Bytes of one member's npy (its tar header's size field)."""
        return len(self.npy_header) + self.width * self.dtype.itemsize

    @property
    def stride(self) -> int:
        return TAR_BLOCK + -(-self.npy_bytes // TAR_BLOCK) * TAR_BLOCK

    def shard_bytes(self, sequences: int) -> int:
        """The size of a shard of ``sequences`` members: theirs, two zero blocks, padding to a whole record."""
        return -(-(sequences * self.stride + 2 * TAR_BLOCK) // TAR_RECORD) * TAR_RECORD


def member_layout(seq_len: int, dtype: str | np.dtype) -> MemberLayout:
    """The layout of a shard's members for sequences of ``seq_len + 1`` tokens of ``dtype``."""
    dtype = np.dtype(dtype)
    header = npy_bytes(np.zeros(seq_len + 1, dtype))[:-(seq_len + 1) * dtype.itemsize]
    return MemberLayout(seq_len + 1, dtype, header)


def read_shard_tar(fileobj: BinaryIO) -> Iterator[tuple[str, np.ndarray]]:
    """``(key, ids)`` for each sample of a shard tar, in order (streaming: no random access needed)."""
    with tarfile.open(fileobj=fileobj, mode="r|") as tar:
        for member in tar:
            if not member.isfile() or not member.name.endswith(".npy"):
                raise ValueError(f"unexpected member {member.name!r} in a codec-LM shard")
            data = tar.extractfile(member).read()
            yield member.name[: -len(".npy")], np.load(io.BytesIO(data), allow_pickle=False)


def load_shard(fileobj: BinaryIO) -> np.ndarray:
    """All sequences of a shard as one (sequences, seq_len + 1) array."""
    windows = [ids for _, ids in read_shard_tar(fileobj)]
    return np.stack(windows) if windows else np.zeros((0, 0), np.uint16)


def document_tokens(windows: np.ndarray, sequence: int, offset: int, length: int) -> np.ndarray:
    """A document's tokens (BOS … EOS) from its shard's windows, across window boundaries."""
    start = sequence * windows.shape[1] + offset
    return windows.reshape(-1)[start:start + length]


def manifest_json(manifest: dict[str, Any]) -> str:
    """The manifest as written: sorted keys, so equal manifests are equal bytes."""
    return json.dumps(manifest, indent=2, sort_keys=True) + "\n"
