"""Stage 6-9: tokenize, assign each document a split and a shard, pack each shard and write it.

Every choice is a seeded hash of the document's content, and a shard's documents are packed in digest
order, so shards are byte-identical whatever the runner, its parallelism or the input order.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Iterator
from typing import Any

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from preprocess.progress import Progress
from preprocess.records import Document, Encoded, document_key, rank
from shared.format.files import join, write_atomic
from shared.format.shards import (
    DOCUMENT_SCHEMA,
    pack_documents,
    sha256_hex,
    shard_name,
    shard_path,
    shard_tar_bytes,
    staged_documents_path,
)
from shared.format.tokenizer import ByteTokenizer


class TokenizeFn(beam.DoFn):
    """Encoded -> Document (BOS + tokens + EOS, split chosen by hash). The tokenizer is a side input.

    The split hashes the document's content, or with ``split_group`` the group its source belongs to, so
    that near-copies (crops of one photo, frames of one film) land in one split and validation measures
    what the model never saw.
    """

    def __init__(self, val_fraction: float, seed: int, progress_dir: str | None,
                 split_group: str | None = None) -> None:
        self.val_threshold = int(val_fraction * 2**64)
        self.seed = seed
        self.split_group = split_group
        self.progress_dir = progress_dir
        self.tokenizer_json: str | None = None

    def setup(self) -> None:
        self.progress = Progress(self.progress_dir)
        self.group_pattern = re.compile(self.split_group) if self.split_group else None

    def split_key(self, encoded: Encoded) -> str:
        match = self.group_pattern.search(encoded.source) if self.group_pattern else None
        if match is None:
            return encoded.digest
        return "group:" + (match.group(1) if match.re.groups else match.group(0))

    def process(self, encoded: Encoded, tokenizer_json: str) -> Iterator[Document]:
        if tokenizer_json is not self.tokenizer_json and tokenizer_json != self.tokenizer_json:  # parse once
            self.tokenizer = ByteTokenizer.from_str(tokenizer_json)
            self.tokenizer_json = tokenizer_json
        tokens = self.tokenizer.encode(encoded.stream, bos=True, eos=True)
        split = "val" if rank(self.seed, "split", self.split_key(encoded)) < self.val_threshold else "train"
        self.progress.add("tokenized")
        self.progress.add("tokens", len(tokens))
        yield Document(document_key(encoded.digest), encoded.digest, encoded.source, len(encoded.stream), tokens, split)

    def finish_bundle(self) -> None:
        self.progress.flush()


def assign_shard(document: Document, tokens_per_split: dict[str, int], tokens_per_shard: int,
                 seed: int) -> tuple[tuple[str, int], Document]:
    """``((split, shard index), document)``: a split's shard count follows from its total tokens."""
    shards = max(1, math.ceil(tokens_per_split[document.split] / tokens_per_shard))
    return (document.split, rank(seed, "shard", document.digest) % shards), document


class WriteShardFn(beam.DoFn):
    """``((split, index), documents)`` -> a packed shard tar (atomically) and its documents' rows.

    Holds one shard's documents in memory, never more. Yields the shard's manifest record.
    """

    def __init__(self, output: str, seq_len: int, dtype: str, progress_dir: str | None) -> None:
        self.output, self.seq_len, self.dtype, self.progress_dir = output, seq_len, dtype, progress_dir

    def setup(self) -> None:
        self.progress = Progress(self.progress_dir)

    def process(self, group: tuple[tuple[str, int], Iterable[Document]]) -> Iterator[dict[str, Any]]:
        (split, index), documents = group
        documents = sorted(documents, key=lambda d: d.digest)
        # the tokenizer's own dtype (the learned vocabulary may be smaller than the one asked for)
        dtype = documents[0].tokens.dtype if documents else np.dtype(self.dtype)
        packed = pack_documents([d.tokens for d in documents], self.seq_len, dtype)
        name = shard_name(index)
        tar = shard_tar_bytes(name, packed.windows)
        path = shard_path(split, index)
        write_atomic(join(self.output, path), tar)
        width = self.seq_len + 1
        rows = {
            "key": [d.key for d in documents], "source": [d.source for d in documents],
            "split": [split] * len(documents), "stream_bytes": [d.stream_bytes for d in documents],
            "tokens": [len(d.tokens) for d in documents], "shard": [name] * len(documents),
            "sequence": [s for s, _ in packed.placements], "offset": [o for _, o in packed.placements],
            "complete": [
                s * width + o + len(d.tokens) <= packed.tokens for d, (s, o) in zip(documents, packed.placements)
            ],
        }
        buffer = pa.BufferOutputStream()
        pq.write_table(pa.table(rows, schema=DOCUMENT_SCHEMA), buffer)
        write_atomic(join(self.output, staged_documents_path(split, name)), buffer.getvalue().to_pybytes())
        self.progress.add("shards")
        yield {"split": split, "path": path, "sha256": sha256_hex(tar), "bytes": len(tar),
               "sequences": int(len(packed.windows)), "tokens": packed.tokens, "dropped_tokens": packed.dropped,
               "documents": len(documents)}

    def finish_bundle(self) -> None:
        self.progress.flush()
