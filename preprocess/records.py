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
    key: str  # the digest's first 32 hex digits: unique per distinct stream
    digest: str
    source: str
    stream_bytes: int
    tokens: np.ndarray  # BOS + stream tokens + EOS
    split: str
