"""Reading a dataset written by `preprocess.run` (local, gs://, s3://): manifest, shards, documents."""

from __future__ import annotations

import json
import os
import re
import tarfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from shared.codec.profile import CodecProfile
from shared.codec.registry import profile_from_json
from shared.errors import CodecLmError
from shared.format.files import (
    ArrowSource,
    arrow_readable,
    arrow_source,
    exists,
    is_remote,
    join,
    matching,
    open_binary,
    read_bytes,
    read_parquet,
)
from shared.format.shards import FORMAT, INPUTS, MANIFEST, OUTCOMES, document_tokens, input_bucket, load_shard
from shared.format.tokenizer import ByteTokenizer

SAFE_PATH = re.compile(r"(?:[A-Za-z0-9_-]+/)?[A-Za-z0-9_-][A-Za-z0-9_.-]*")


class DatasetError(CodecLmError):
    """The folder is not a (readable) codec-LM dataset."""


@dataclass
class Dataset:
    root: str
    manifest: dict[str, Any]

    @classmethod
    def open(cls, root: str) -> Dataset:
        root = str(root).rstrip("/")
        path = join(root, MANIFEST)
        if not exists(path):
            hint = " (a run that has not finished, or crashed, has no manifest yet)" if exists(root) else ""
            raise DatasetError(f"{root} is not a codec-LM dataset: no {MANIFEST}{hint}")
        try:
            manifest = json.loads(read_bytes(path))
        except ValueError as error:
            raise DatasetError(f"{path} is not valid JSON ({error})") from None
        if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
            raise DatasetError(f"{path} is not a {FORMAT} manifest (format: {manifest.get('format')!r})"
                               if isinstance(manifest, dict) else f"{path} is not a manifest")
        # Every file a manifest names lies inside the dataset folder: copying the folder copies the dataset.
        named = [s.get("path", "") for s in manifest.get("shards", [])]
        named += [manifest.get("tokenizer", {}).get("path", ""), manifest.get("documents", ""),
                  manifest.get("rejected", "")]
        named += [manifest["inputs"]] if "inputs" in manifest else []
        outside = [p for p in named if not SAFE_PATH.fullmatch(str(p)) or ".." in str(p).split("/")]
        if outside:
            raise DatasetError(f"{path} names files outside the dataset folder or with odd names: {outside[:3]}")
        return cls(root, manifest)

    # ---- what the manifest points at ----------------------------------------------------------
    def path(self, relative: str) -> str:
        return join(self.root, relative)

    @cached_property
    def profile(self) -> CodecProfile:
        return profile_from_json(self.manifest["profile"])

    @cached_property
    def tokenizer(self) -> ByteTokenizer:
        return ByteTokenizer.from_str(read_bytes(self.path(self.manifest["tokenizer"]["path"])).decode())

    def rows(self, filters: list[tuple] | None = None, columns: list[str] | None = None,
             limit: int | None = None) -> list[dict[str, Any]]:
        """Rows of documents.parquet (key, source, split, stream_bytes, tokens, shard, sequence, offset,
        complete) that match ``filters`` (pyarrow's ``[("split", "=", "val"), …]``). Each shard's rows are
        one row group, so a filter on split and shard reads that shard's rows only: no need to hold tens
        of millions of rows in memory."""
        table = read_parquet(self.documents_source, filters=filters or None, columns=columns)
        return (table.slice(0, limit) if limit is not None else table).to_pylist()

    def documents_table(self, columns: list[str]) -> pa.Table:
        """Some columns of documents.parquet for all documents (cheap: columnar)."""
        return read_parquet(self.documents_source, columns=columns)

    @cached_property
    def documents_source(self) -> ArrowSource:
        """documents.parquet for pyarrow (``files.arrow_source``); on a filesystem Arrow cannot read by
        range itself, fetched once, not per read."""
        return arrow_source(self.path(self.manifest["documents"]))

    def column(self, name: str) -> np.ndarray:
        """One column of documents.parquet for all documents, as an array."""
        return self.documents_table([name]).column(name).to_numpy()

    @property
    def documents(self) -> list[dict[str, Any]]:
        """Every row of documents.parquet (for small datasets; large ones use ``rows`` with filters)."""
        return self.rows()

    # ---- inputs.parquet: where every input went ---------------------------------------------------
    @contextmanager
    def input_records(self) -> Iterator[pq.ParquetFile]:
        """inputs.parquet, open while the block runs (row group b holds the sources of bucket b)."""
        if "inputs" not in self.manifest:
            raise DatasetError(f"{self.root} was written before per-input records ({INPUTS}) existed; "
                               "rerun `python -m preprocess.run` to get them")
        path = self.path(self.manifest["inputs"])
        try:
            records = pq.ParquetFile(arrow_readable(path))
        except (OSError, pa.ArrowException) as error:
            raise DatasetError(f"{path} cannot be read ({error}); run `codec-shards verify`") from None
        with records:
            yield records

    def find_inputs(self, name: str, limit: int = 50) -> list[dict[str, Any]]:
        """Rows of inputs.parquet for an input: its exact source name (reads one row group), else every
        source that ends with ``/NAME`` or ``#NAME`` (a path given relative, a tar or Parquet member)."""
        # a local path as given, absolute, or relative to here: the job recorded it as its --input spelled it
        candidates = [name] if is_remote(name) else list(dict.fromkeys([name, os.path.abspath(name),
                                                                          os.path.relpath(name)]))
        with self.input_records() as records:
            for candidate in candidates:
                group = records.read_row_group(input_bucket(candidate, records.num_row_groups))
                found = group.filter(pc.equal(group["source"], candidate))
                if found.num_rows:
                    return found.to_pylist()
            tail = os.path.normpath(name).lstrip("/") if not is_remote(name) else name
            found_rows: list[dict[str, Any]] = []
            for index in range(records.num_row_groups):  # a scan, one row group in memory at a time
                group = records.read_row_group(index)
                hit = pc.or_(pc.ends_with(group["source"], "/" + tail), pc.ends_with(group["source"], "#" + tail))
                found_rows += group.filter(hit).to_pylist()
                if len(found_rows) >= limit:
                    break
            return found_rows[:limit]

    def outcome_counts(self) -> dict[str, Any]:
        """``{"document": n, "duplicate": n, "rejected": n, "reasons": {reason: n}}`` from inputs.parquet."""
        with self.input_records() as records:
            table = records.read(columns=["outcome", "reason"])
        counts = {outcome: 0 for outcome in OUTCOMES}
        for entry in pc.value_counts(table["outcome"]).to_pylist():
            counts[entry["values"]] = entry["counts"]
        reasons = pc.value_counts(pc.drop_null(table["reason"])).to_pylist() if table.num_rows else []
        return counts | {"reasons": dict(sorted((e["values"], e["counts"]) for e in reasons))}

    def shard_rows(self, split: str, shard: str, complete: bool | None = None) -> list[dict[str, Any]]:
        filters = [("split", "=", split), ("shard", "=", shard)]
        filters += [("complete", "=", complete)] if complete is not None else []
        return self.rows(filters)

    def shards(self, split: str | None = None) -> list[dict[str, Any]]:
        return [s for s in self.manifest["shards"] if split is None or s["split"] == split]

    def find_shard(self, name: str) -> dict[str, Any]:
        """A shard by its path (``train/shard-000000.tar``), without ``.tar``, or by bare name if unambiguous."""
        wanted = name.removesuffix(".tar")
        found = [s for s in self.manifest["shards"]
                 if s["path"].removesuffix(".tar") == wanted or s["path"].removesuffix(".tar").endswith("/" + wanted)]
        if len(found) != 1:
            known = ", ".join(s["path"] for s in self.manifest["shards"][:6])
            raise DatasetError(f"{'no' if not found else 'more than one'} shard named {name!r} "
                               f"(shards: {known}{' …' if len(self.manifest['shards']) > 6 else ''}); "
                               "name it as split/shard-NNNNNN")
        return found[0]

    def read_windows(self, shard: dict[str, Any]) -> np.ndarray:
        try:
            with open_binary(self.path(shard["path"])) as handle:
                return load_shard(handle)
        except (OSError, ValueError, EOFError, tarfile.TarError) as error:
            raise DatasetError(f"{self.path(shard['path'])} cannot be read as a shard ({error}); "
                               "run `codec-shards verify` on the dataset") from None

    def document_streams(self, rows: list[dict[str, Any]]) -> Iterator[tuple[dict[str, Any], np.ndarray, bytes]]:
        """``(row, tokens, stream)`` for complete documents, reading each needed shard once."""
        by_shard: dict[tuple[str, str], list[dict[str, Any]]] = {}
        for row in rows:
            if row["complete"]:  # grouped so that each shard is read once
                by_shard.setdefault((row["split"], row["shard"]), []).append(row)
        for (split, shard), shard_rows in by_shard.items():
            windows = self.read_windows(self.find_shard(f"{split}/{shard}"))
            for row in shard_rows:
                tokens = document_tokens(windows, row["sequence"], row["offset"], row["tokens"])
                yield row, tokens, self.tokenizer.decode(tokens)

    def files(self) -> list[str]:
        """Every file under the dataset folder (hidden ones too, for local folders), relative to it."""
        if not is_remote(self.root):
            return sorted(os.path.relpath(os.path.join(folder, name), self.root)
                          for folder, _, names in os.walk(self.root) for name in names)
        # fsspec spells some paths with a leading slash (memory:///copy/…) and some without (gs://bucket/…)
        inside = self.root.split("://", 1)[1].strip("/") + "/"
        found = matching(join(self.root, "**"))
        return sorted(path.split("://", 1)[1].lstrip("/").removeprefix(inside) for path in found)
