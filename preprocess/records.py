"""What flows between the stages, and the hash-based choices made on it."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

REJECTED = "rejected"
DUPLICATE = "duplicate"


def rejection(source: str, reason: str, message: str) -> dict[str, str]:
    """One line of rejected.jsonl."""
    return {"source": source, "reason": reason, "message": message}


def rank(seed: int, purpose: str, digest: str) -> int:
    """A 64-bit pseudo-random number fixed by (seed, purpose, content): every choice of the job uses it,
    so the same inputs and flags choose the same way on any runner, in any order."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{purpose}:{digest}".encode()).digest()[:8], "big")


@dataclass(frozen=True)
class Encoded:
    source: str
    stream: bytes
    digest: str  # sha256 of the stream: the document's identity, for deduplication and every choice


@dataclass(frozen=True)
class Document:
    key: str  # document_key(digest)
    digest: str
    source: str
    stream_bytes: int
    tokens: np.ndarray  # BOS + stream tokens + EOS
    split: str


def document_key(digest: str) -> str:
    """A document's key: its stream digest's first 32 hex digits, unique per distinct stream."""
    return digest[:32]


def input_row(source: str, outcome: str, *, key: str | None = None, reason: str | None = None,
              message: str | None = None) -> dict[str, str | None]:
    """One row of inputs.parquet: where one input went (``OUTCOMES``)."""
    return {"source": source, "outcome": outcome, "key": key, "reason": reason, "message": message}


def rejected_row(rejected: dict[str, str]) -> dict[str, str | None]:
    return input_row(rejected["source"], "rejected", reason=rejected["reason"], message=rejected["message"])


def kept_row(encoded: Encoded) -> dict[str, str | None]:
    return input_row(encoded.source, "document", key=document_key(encoded.digest))
