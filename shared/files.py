"""Files on any filesystem Beam knows (local, gs://, s3://), written atomically.

A reader never sees a half-written file: data goes to a temporary name in the same folder and is
renamed into place (a rename is atomic on local disks; on object stores the object appears whole).
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

RAW = CompressionTypes.UNCOMPRESSED  # never let a ".gz" suffix change what is written


def join(base: str | Path, *parts: str) -> str:
    return FileSystems.join(str(base), *parts)


def write_atomic(path: str | Path, data: bytes | str) -> str:
    path = str(path)
    folder, name = FileSystems.split(path)
    temporary = FileSystems.join(folder, f".{name}.tmp-{uuid.uuid4().hex}")
    with FileSystems.create(temporary, compression_type=RAW) as handle:
        handle.write(data.encode() if isinstance(data, str) else data)
    FileSystems.rename([temporary], [path])
    return path


def write_json_atomic(path: str | Path, value: Any) -> str:
    return write_atomic(path, json.dumps(value, indent=2, sort_keys=True) + "\n")


def read_bytes(path: str | Path) -> bytes:
    with FileSystems.open(str(path), compression_type=RAW) as handle:
        return handle.read()


def exists(path: str | Path) -> bool:
    return FileSystems.exists(str(path))


def matching(pattern: str) -> list[str]:
    """Paths matching a glob, sorted; an empty list when nothing matches."""
    return sorted(m.path for r in FileSystems.match([pattern]) for m in r.metadata_list)


def delete(paths: list[str]) -> None:
    present = [p for p in paths if FileSystems.exists(p)]
    if present:
        FileSystems.delete(present)
