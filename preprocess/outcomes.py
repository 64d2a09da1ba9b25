"""Stage 9b: where every input went, one row each, for inputs.parquet (img2dataset gives every sample a status).

Rows are grouped into buckets by a hash of their source, so no worker holds more than one bucket
(``INPUTS_PER_BUCKET`` rows) and a lookup by name later reads one row group; a bucket's rows are
sorted, so the file is byte-identical whatever the runner or its parallelism.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import apache_beam as beam
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from apache_beam.pvalue import AsSingleton

from shared.format.files import join, write_atomic
from shared.format.shards import INPUT_SCHEMA, input_bucket, input_buckets, staged_inputs_path


def bucket_of(row: dict[str, Any], inputs: int) -> tuple[int, dict[str, Any]]:
    return input_bucket(row["source"], input_buckets(inputs)), row


class WriteInputBucketFn(beam.DoFn):
    """``(bucket, rows)`` -> the bucket's rows, sorted, in the staging folder; yields its outcome counts."""

    def __init__(self, output: str) -> None:
        self.output = output

    def process(self, group: tuple[int, Iterable[dict[str, Any]]]) -> Iterator[dict[str, Any]]:
        bucket, rows = group
        table = pa.Table.from_pylist(list(rows), schema=INPUT_SCHEMA)
        table = table.sort_by([(name, "ascending") for name in INPUT_SCHEMA.names])  # in Arrow: no Python sort keys
        buffer = pa.BufferOutputStream()
        pq.write_table(table, buffer)
        write_atomic(join(self.output, staged_inputs_path(bucket)), buffer.getvalue().to_pybytes())
        counts = pc.value_counts(table["outcome"]).to_pylist()
        yield {"bucket": bucket, "outcomes": {entry["values"]: entry["counts"] for entry in counts}}


class RecordInputs(beam.PTransform):
    """inputs.parquet rows -> one staged Parquet file per bucket; outputs each bucket's outcome counts."""

    def __init__(self, output: str, inputs: AsSingleton) -> None:
        super().__init__()
        self.output, self.inputs = output, inputs

    def expand(self, rows: beam.PCollection) -> beam.PCollection:
        return (
            rows
            | "Bucket" >> beam.Map(bucket_of, self.inputs)
            | "GroupByBucket" >> beam.GroupByKey()
            | "WriteBucket" >> beam.ParDo(WriteInputBucketFn(self.output))
        )
