"""The preprocessing pipeline, stage by stage, as one readable composition of named transforms.

read -> encode (profile) -> drop exact duplicates -> BPE sample -> learn BPE -> tokenize (side input)
-> split + shard by hash -> pack + write each shard -> documents.parquet, rejected.jsonl, manifest.json;
every input's outcome (document, duplicate, rejected) -> inputs.parquet
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import apache_beam as beam
from apache_beam.pvalue import AsDict, AsList, AsSingleton

from preprocess.bpe import LearnBpe
from preprocess.encode import EncodeFn, KeepOnePerStream
from preprocess.finalize import finalize
from preprocess.inputs import ReadInputs, SampleInputs
from preprocess.outcomes import RecordInputs
from preprocess.pack import TokenizeFn, WriteShardFn, assign_shard
from preprocess.records import DUPLICATE, REJECTED, kept_row, rejected_row
from shared.codec.registry import CODECS


@dataclass(frozen=True)
class JobConfig:
    output: str
    modality: str
    inputs: list[str]  # empty: the embedded sample dataset
    profile: dict[str, Any]  # the profile's JSON record
    vocab_size: int
    bpe_sample: int
    tokenizer_json: str | None  # given with --tokenizer, else learned
    seq_len: int
    val_fraction: float
    split_group: str | None  # regex over sources: documents of one group share a split
    seed: int
    tokens_per_shard: int
    dtype: str
    parquet_column: str
    sample_size: int
    max_pixels: int | None
    arguments: dict[str, Any]  # what the manifest records about how it was made
    progress_dir: str | None = None
    input_files: int = 0  # files --input matched (a .tar or .parquet file holds many inputs)


def build_pipeline(pipeline: beam.Pipeline, job: JobConfig) -> None:
    if job.inputs:
        read = pipeline | "ReadInputs" >> ReadInputs(job.inputs, job.modality, job.parquet_column)
        media, read_rejected = read.media, read[REJECTED]
    else:
        media = pipeline | "SampleInputs" >> SampleInputs(job.modality, job.sample_size)
        read_rejected = pipeline | "NothingRejectedOnRead" >> beam.Create([])

    encoded = media | "Encode" >> beam.ParDo(EncodeFn(job.profile, job.max_pixels, job.progress_dir)).with_outputs(
        REJECTED, main="encoded")
    rejected = (read_rejected, encoded[REJECTED]) | "AllRejected" >> beam.Flatten()
    unique = (
        encoded.encoded
        | "KeyByStream" >> beam.Map(lambda e: (e.digest, e))
        | "GroupByStream" >> beam.GroupByKey()
        | "DropDuplicates" >> beam.ParDo(KeepOnePerStream(job.progress_dir)).with_outputs(DUPLICATE, main="unique")
    )

    if job.tokenizer_json is not None:
        tokenizer = pipeline | "GivenTokenizer" >> beam.Create([job.tokenizer_json])
    else:
        tokenizer = unique.unique | "LearnBpe" >> LearnBpe(job.bpe_sample, job.seed, job.vocab_size,
                                                        CODECS[job.profile["kind"]].token_boundary)

    documents = unique.unique | "Tokenize" >> beam.ParDo(
        TokenizeFn(job.val_fraction, job.seed, job.progress_dir, job.split_group), AsSingleton(tokenizer))
    tokens_per_split = (
        documents
        | "TokensOf" >> beam.Map(lambda d: (d.split, len(d.tokens)))
        | "TokensPerSplit" >> beam.CombinePerKey(sum)
    )
    shards = (
        documents
        | "AssignShard" >> beam.Map(assign_shard, AsDict(tokens_per_split), job.tokens_per_shard, job.seed)
        | "GroupByShard" >> beam.GroupByKey()
        | "PackAndWrite" >> beam.ParDo(WriteShardFn(job.output, job.seq_len, job.dtype, job.progress_dir))
    )

    def count(collection: beam.PCollection, label: str) -> AsSingleton:
        return AsSingleton(collection | label >> beam.combiners.Count.Globally())

    # Counted apart and added, not counted after a Flatten: on the DirectRunner's multi-process mode a
    # Flatten fed by parallel bundles lost elements before a count (3000 inputs counted as 2002).
    inputs = AsSingleton(
        pipeline
        | "OnceForInputs" >> beam.Create([None])
        | "CountInputs" >> beam.Map(lambda _, read, unreadable: read + unreadable,
                                    count(media, "CountRead"), count(read_rejected, "CountUnreadable"))
    )
    input_records = (
        (unique.unique | "KeptRows" >> beam.Map(kept_row), unique[DUPLICATE],
         rejected | "RejectedRows" >> beam.Map(rejected_row))
        | "AllInputRows" >> beam.Flatten()
        | "RecordInputs" >> RecordInputs(job.output, inputs)
    )

    (
        pipeline
        | "Once" >> beam.Create([None])
        | "WriteManifest" >> beam.Map(
            finalize, output=job.output, config=job.arguments, profile_record=job.profile, shards=AsList(shards),
            rejected=AsList(rejected), input_records=AsList(input_records), inputs=inputs,
            encoded=count(encoded.encoded, "CountEncoded"), duplicates=count(unique[DUPLICATE], "CountDuplicates"),
            tokenizer_json=AsSingleton(tokenizer), seq_len=job.seq_len)
    )
