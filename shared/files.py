"""Atomic file writes: a reader never sees a half-written file (temp file in the same folder + rename)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def write_atomic(path: str | Path, data: bytes | str) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(temporary, "wb") as handle:
        handle.write(data.encode() if isinstance(data, str) else data)
        handle.flush()
        os.fsync(handle.fileno())
    temporary.replace(path)
    return path


def write_json_atomic(path: str | Path, value: Any) -> Path:
    return write_atomic(path, json.dumps(value, indent=2, sort_keys=True) + "\n")
