"""Files on any filesystem fsspec knows (local, gs://, s3://, …), written atomically.

A reader never sees a half-written file: on a local disk data goes to a temporary name in the same folder
and is renamed into place (atomic); on an object store it is uploaded once to its final name, where the
object appears only when the upload completes (``open_atomic``).
fsspec is the filesystem layer of the PyTorch data ecosystem (PyTorch Lightning, Hugging Face datasets,
LitData, torchdata), so the trainer reads gs:// and s3:// data without Apache Beam; the Beam job writes
through the same functions. Remote filesystems need their backend installed: the ``cloud`` extra
(gcsfs, s3fs).
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import re
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import fsspec
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from fsspec.core import url_to_fs

UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")


def is_remote(path: str | Path) -> bool:
    return "://" in str(path)


def join(base: str | Path, *parts: str) -> str:
    """``base/part/…`` with ``/`` on every filesystem (parts are relative: no leading ``/``; empty ones are
    left out)."""
    return "/".join([str(base).rstrip("/"), *(part.strip("/") for part in parts if part.strip("/"))])


def safe_file_name(text: str, suffix: str = "", *, limit: int = 120, fallback: str = "item") -> str:
    """``text`` as a plain file name: no separators, no leading dot or underscore, at most ``limit``
    characters before ``suffix``."""
    return (UNSAFE.sub("_", text).strip("._")[:limit] or fallback) + suffix


@contextmanager
def open_atomic(path: str | Path) -> Iterator[IO[bytes]]:
    """A binary file handle whose data appears at ``path`` only when the block ends without an error.

    Local disks: a temporary name in the same folder, renamed into place. Object stores: the data is staged
    in a local temporary file and uploaded once, straight to its final name, when the block ends. An object
    appears only when its upload completes, so no reader sees part of it; a temporary name would cost a
    server-side copy of every byte and a delete (a "move" on GCS and S3), and a failed block uploads nothing.
    """
    if is_remote(path):
        with tempfile.NamedTemporaryFile(prefix="codec-lm-upload-") as staged:
            yield staged
            staged.flush()
            upload_file(staged.name, str(path))
        return
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    temporary = os.path.join(folder, f".{os.path.basename(path)}.tmp-{uuid.uuid4().hex}")
    try:
        with open(temporary, "wb") as handle:
            yield handle
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(temporary)
        raise


def upload_file(local: str, target: str) -> None:
    """One upload of the local file ``local`` to the object ``target``: the backend sends a small file in one
    request and a large one as a resumable (GCS) or multipart (S3) upload, which publishes the object only
    when its last part is in."""
    filesystem, remote = url_to_fs(target)
    filesystem.put_file(local, remote)


def kind(path: str | Path) -> str | None:
    """"file", "directory" or None when nothing is there. Unlike fsspec's ``exists``/``isfile``/``isdir``,
    which answer False for any error, a store that fails (a timeout, a refusal) raises: "not there" must
    not be read into a failure, or a resume would pass over a whole checkpoint."""
    filesystem, target = url_to_fs(str(path))
    try:
        found = filesystem.info(target)
    except FileNotFoundError:
        return None
    return "directory" if found.get("type") == "directory" else "file"


def write_atomic(path: str | Path, data: bytes | str) -> str:
    with open_atomic(path) as handle:
        handle.write(data.encode() if isinstance(data, str) else data)
    return str(path)


def write_json_atomic(path: str | Path, value: Any) -> str:
    return write_atomic(path, json.dumps(value, indent=2, sort_keys=True) + "\n")


def open_binary(path: str | Path) -> IO[bytes]:
    """A binary file handle for reading (a context manager)."""
    return fsspec.open(str(path), "rb").open()


def read_bytes(path: str | Path) -> bytes:
    with open_binary(path) as handle:
        return handle.read()


# Object stores that Arrow reads with its own C++ client, by byte range: a filtered read of a remote
# documents.parquet fetches its footer and the row groups it needs, not the whole file. Not s3:// (yet):
# Arrow's S3 filesystem can hang at interpreter exit while one is alive (apache/arrow#50188).
ARROW_NATIVE = ("gs", "gcs")
ArrowSource = str | pa.Buffer | tuple[pafs.FileSystem, str]


def arrow_source(path: str | Path) -> ArrowSource:
    """``path`` as pyarrow's readers should get it: a local path as it is (Arrow opens the file itself),
    gs:// as ``(Arrow filesystem, path)``, on any other fsspec filesystem (s3:// too) the file's bytes
    copied into Arrow's own memory. Never a Python file object: Arrow's dataset scanner drops its
    reference to its source on one of its worker threads, at times after ``pq.read_table`` has returned
    (apache/arrow#33975, #34314). Releasing a Python object takes the GIL, and a thread that asks for it
    while the interpreter is finalizing is ended by pthread_exit, which unwinds through a noexcept C++
    destructor: std::terminate, SIGABRT after the work is done (python/cpython#87135)."""
    if not is_remote(path):
        return str(path)
    if str(path).split("://", 1)[0] in ARROW_NATIVE:
        return pafs.FileSystem.from_uri(str(path))
    with open_binary(path) as handle:
        buffer = pa.allocate_buffer(handle.seek(0, 2))
        handle.seek(0)
        view, done = memoryview(buffer), 0
        while done < buffer.size:
            count = handle.readinto(view[done:])
            if not count:
                raise EOFError(f"{path}: {buffer.size - done} bytes fewer than its size")
            done += count
    return buffer


def arrow_readable(source: str | Path | ArrowSource) -> str | pa.NativeFile:
    """A path of any filesystem or an ``arrow_source``, as a source for ``pq.read_table``/``pq.ParquetFile``."""
    source = source if isinstance(source, (pa.Buffer, tuple)) else arrow_source(source)
    if isinstance(source, tuple):
        filesystem, target = source
        return filesystem.open_input_file(target)
    return pa.BufferReader(source) if isinstance(source, pa.Buffer) else source


def read_parquet(source: str | Path | ArrowSource, **options: Any) -> pa.Table:
    """``pq.read_table(**options)`` on a path of any filesystem or on an ``arrow_source``."""
    return pq.read_table(arrow_readable(source), **options)


def exists(path: str | Path) -> bool:
    """A file or folder is at ``path``; a store that fails raises (``kind``)."""
    return kind(path) is not None


def size(path: str | Path) -> int:
    filesystem, target = url_to_fs(str(path))
    return int(filesystem.size(target))


def matching(pattern: str) -> list[str]:
    """Files matching a glob, sorted; an empty list when nothing matches. Python's glob rules: ``*`` stays
    in a folder, ``**`` as a whole path part spans folders (none included), names starting with a dot
    match only a pattern that starts with one. Paths keep the pattern's spelling (a relative local
    pattern gives relative paths, ``gcs://`` stays ``gcs://``), so they compare with paths joined by hand."""
    if not is_remote(pattern):
        return sorted(p for p in glob.glob(pattern, recursive=True) if Path(p).is_file())
    protocol = pattern.split("://", 1)[0]
    filesystem, target = url_to_fs(pattern)
    found = filesystem.glob(target, detail=True)
    return sorted(f"{protocol}://{path}" for path, info in found.items() if info["type"] == "file")


def delete(paths: list[str]) -> None:
    """Delete files and folders (with what is in them); paths that do not exist are skipped."""
    for path in paths:
        filesystem, target = url_to_fs(str(path))
        if filesystem.exists(target):
            filesystem.rm(target, recursive=True)
