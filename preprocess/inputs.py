"""Reading inputs: file patterns, WebDataset tars, Parquet files, or the embedded sample dataset.

Every input becomes ``(source, bytes)``, where ``source`` names it for people (``path``,
``shard.tar#key.jpg``, ``file.parquet#row``, ``sample:astronaut-00000``). What cannot be read goes to
the ``rejected`` output with a reason, like a bad image does later.
"""

from __future__ import annotations

import os
import tarfile
from collections.abc import Iterator
from typing import Any

import apache_beam as beam
import pyarrow.parquet as pq
from apache_beam.io import fileio
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.metrics import Metrics

from preprocess.records import REJECTED, rejection

IMAGE_EXTENSIONS = {"jpg", "jpeg", "jpe", "jfif", "png", "webp", "gif", "bmp", "tif", "tiff", "ppm", "pgm", "pbm",
                    "tga", "ico", "jp2", "j2k", "avif", "heic", "heif"}
VIDEO_EXTENSIONS = {"mp4", "m4v", "mov", "mkv", "webm", "avi", "flv", "wmv", "mpg", "mpeg", "ts", "mts", "3gp",
                    "ogv", "gifv", "y4m"}
# Files that travel with media in datasets (captions, metadata): never inputs themselves.
SIDECAR_EXTENSIONS = {"json", "txt", "csv", "tsv", "cls", "xml", "md", "yaml", "yml", "html", "srt", "vtt",
                      "log", "sha256", "md5", "idx", "index"}
MEDIA_EXTENSIONS = {"image": IMAGE_EXTENSIONS, "video": VIDEO_EXTENSIONS}


def extension(path: str) -> str:
    name = path.rsplit("/", 1)[-1]
    return name.rsplit(".", 1)[-1].lower() if "." in name else ""


def canonical_path(path: str) -> str:
    """One spelling per local file (``dir/./a.png`` is ``dir/a.png``), so overlapping patterns read it once."""
    return path if "://" in path else os.path.normpath(path)


def is_candidate(path: str, modality: str) -> bool:
    """A plain file is an input unless its extension says it is the other medium or a sidecar.

    Files without a known extension are inputs too: whether they hold media is for the codec to say.
    """
    other = VIDEO_EXTENSIONS if modality == "image" else IMAGE_EXTENSIONS
    ext = extension(path)
    return ext not in other and ext not in SIDECAR_EXTENSIONS


class ExpandFile(beam.DoFn):
    """A matched file -> its inputs: itself, a tar's media members, or a Parquet file's rows."""

    def __init__(self, modality: str, parquet_column: str) -> None:
        self.modality = modality
        self.parquet_column = parquet_column
        self.skipped = Metrics.counter("codec-lm", "files_skipped")

    def process(self, readable: fileio.ReadableFile) -> Iterator[Any]:
        path = readable.metadata.path
        kind = extension(path)
        try:
            if kind == "tar" or path.lower().endswith((".tar.gz", ".tgz", ".tar.bz2", ".tar.xz")):
                yield from self.tar_members(readable, path)
            elif kind == "parquet":
                yield from self.parquet_rows(readable, path)
            elif is_candidate(path, self.modality):
                yield path, readable.read()
            else:
                self.skipped.inc()
        except Exception as error:  # noqa: BLE001 — whatever a broken file provokes, the job goes on
            # An unreadable container counts as one rejected input; members already yielded stay counted.
            reason = f"{type(error).__name__}: {error}"
            yield beam.pvalue.TaggedOutput(REJECTED, rejection(path, "unreadable-container", reason))

    def tar_members(self, readable: fileio.ReadableFile, path: str) -> Iterator[Any]:
        """Media members, chosen like plain files; links cannot be followed in a stream and are rejected."""
        with readable.open() as handle, tarfile.open(fileobj=handle, mode="r|*") as tar:
            for member in tar:  # streaming: members are read in order, a tar is never held whole
                if member.isdir() or not is_candidate(member.name, self.modality):
                    continue
                source = f"{path}#{member.name}"
                if member.isfile():
                    yield source, tar.extractfile(member).read()
                else:
                    yield beam.pvalue.TaggedOutput(REJECTED, rejection(
                        source, "unsupported-tar-member", "a link or special file inside a tar; store the file itself"))

    def parquet_rows(self, readable: fileio.ReadableFile, path: str) -> Iterator[Any]:
        with readable.open() as handle:
            table = pq.ParquetFile(handle)
            if self.parquet_column not in table.schema_arrow.names:
                raise ValueError(f"no column {self.parquet_column!r} (columns: {table.schema_arrow.names}); "
                                 "pass --parquet_column")
            row = 0
            for batch in table.iter_batches(columns=[self.parquet_column], batch_size=256):
                for value in batch.column(0).to_pylist():
                    source = f"{path}#{row}"
                    row += 1
                    data = value.get("bytes") if isinstance(value, dict) else value
                    if isinstance(data, (bytes, bytearray)):
                        yield source, bytes(data)
                    elif data is None:
                        yield beam.pvalue.TaggedOutput(REJECTED, rejection(source, "empty", "no bytes in this row"))
                    else:
                        yield beam.pvalue.TaggedOutput(REJECTED, rejection(
                            source, "unreadable", f"the row holds {type(data).__name__}, not bytes; "
                                                  "pass the binary column with --parquet_column"))


class ReadInputs(beam.PTransform):
    """File patterns -> ``(source, bytes)`` with a ``rejected`` side output."""

    def __init__(self, patterns: list[str], modality: str, parquet_column: str) -> None:
        super().__init__()
        self.patterns = patterns
        self.modality = modality
        self.parquet_column = parquet_column

    def expand(self, pipeline: beam.Pipeline) -> beam.pvalue.DoOutputsTuple:
        expand_file = beam.ParDo(ExpandFile(self.modality, self.parquet_column))
        return (
            pipeline
            | "Patterns" >> beam.Create(self.patterns)
            | "Match" >> fileio.MatchAll()
            | "Paths" >> beam.Map(lambda metadata: canonical_path(metadata.path))
            | "Unique" >> beam.Distinct()  # overlapping patterns must not read a file twice
            # bytes as stored: a ".gz" name must not make Beam decompress (tar reads .tar.gz itself)
            | "Read" >> fileio.ReadMatches(compression=CompressionTypes.UNCOMPRESSED)
            | "Expand" >> expand_file.with_outputs(REJECTED, main="media")
        )


def sample_item(index: int, modality: str, seed: int) -> tuple[str, bytes]:
    if modality == "image":
        from shared.samples.photos import sample_crop
        key, data = sample_crop(index, seed)
    else:
        from shared.samples.clips import sample_clip
        key, data = sample_clip(index, seed)
    return f"sample:{key}", data


class SampleInputs(beam.PTransform):
    """The embedded sample dataset, made on the workers: crop/clip ``i`` depends only on ``(seed, i)``."""

    def __init__(self, modality: str, count: int, seed: int = 0) -> None:
        super().__init__()
        self.modality, self.count, self.seed = modality, count, seed

    def expand(self, pipeline: beam.Pipeline) -> beam.PCollection:
        return (
            pipeline
            | "Indices" >> beam.Create(list(range(self.count)))
            | "Spread" >> beam.Reshuffle()
            | "Make" >> beam.Map(sample_item, self.modality, self.seed)
        )
