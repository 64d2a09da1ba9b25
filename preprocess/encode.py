"""Stage 2-3: normalise + encode each input with the profile, then keep one document per distinct stream."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator
from typing import Any

import apache_beam as beam

from preprocess.progress import Progress
from preprocess.records import DUPLICATE, REJECTED, Encoded, document_key, input_row, rejection
from shared.codec.errors import InvalidMediaError
from shared.codec.registry import profile_from_json


class EncodeFn(beam.DoFn):
    """``(source, bytes)`` -> Encoded, or a rejection with its reason. One bad input never fails the job."""

    def __init__(self, profile_record: dict, max_pixels: int | None, progress_dir: str | None) -> None:
        self.profile_record = profile_record
        self.max_pixels = max_pixels
        self.progress_dir = progress_dir

    def setup(self) -> None:
        self.profile = profile_from_json(self.profile_record)
        self.progress = Progress(self.progress_dir)

    def process(self, item: tuple[str, bytes]) -> Iterator[Any]:
        source, data = item
        self.progress.add("read")
        try:
            stream = self.profile.encode(data, max_pixels=self.max_pixels)
        except InvalidMediaError as error:
            self.progress.add("rejected")
            yield beam.pvalue.TaggedOutput(REJECTED, rejection(source, error.reason, error.message))
            return
        except Exception as error:  # noqa: BLE001 — a codec bug or an exotic file: counted and kept, never fatal
            self.progress.add("rejected")
            yield beam.pvalue.TaggedOutput(REJECTED, rejection(source, "internal-error",
                                                               f"{type(error).__name__}: {error}"))
            return
        self.progress.add("encoded")
        yield Encoded(source, stream, hashlib.sha256(stream).hexdigest())

    def finish_bundle(self) -> None:
        self.progress.flush()


class KeepOnePerStream(beam.DoFn):
    """``(digest, [Encoded …])`` -> the copy with the smallest source name; the others go to the ``duplicate``
    output as inputs.parquet rows naming the document that kept their stream."""

    def __init__(self, progress_dir: str | None) -> None:
        self.progress_dir = progress_dir

    def setup(self) -> None:
        self.progress = Progress(self.progress_dir)

    def process(self, group: tuple[str, Iterable[Encoded]]) -> Iterator[Any]:
        copies = sorted(group[1], key=lambda encoded: encoded.source)
        yield copies[0]
        for duplicate in copies[1:]:
            self.progress.add("duplicates")
            yield beam.pvalue.TaggedOutput(DUPLICATE, input_row(duplicate.source, "duplicate",
                                                                key=document_key(copies[0].digest)))

    def finish_bundle(self) -> None:
        self.progress.flush()
