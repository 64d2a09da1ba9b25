"""Stage 4-5: a deterministic BPE sample (by content hash, seeded), and learning the BPE on it.

Beam's ``Sample.FixedSizeGlobally`` is unseeded, so two runs would learn different vocabularies; here
the sample is the ``n`` streams with the smallest seeded hash rank: the same on every run and runner.
"""

from __future__ import annotations

import apache_beam as beam

from preprocess.records import rank
from shared.format.tokenizer import Boundary, ByteTokenizer


class SampleForBpe(beam.PTransform):
    def __init__(self, size: int, seed: int) -> None:
        super().__init__()
        self.size, self.seed = size, seed

    def expand(self, documents: beam.PCollection) -> beam.PCollection:
        seed = self.seed
        return (
            documents
            | "Rank" >> beam.Map(lambda d: (rank(seed, "bpe", d.digest), d.stream))
            | "Smallest" >> beam.combiners.Top.Smallest(self.size)
        )


def learn_tokenizer(sample: list[tuple[int, bytes]], vocab_size: int, boundary: Boundary) -> str:
    """The tokenizer.json text learned on the sample (in rank order, so the input order is fixed too).

    Empty when nothing was encoded: the manifest step then reports the rejections and fails clearly.
    """
    if not sample:
        return ""
    streams = [stream for _, stream in sorted(sample)]
    return ByteTokenizer.train(streams, vocab_size, boundary=boundary).to_str()


class LearnBpe(beam.PTransform):
    def __init__(self, size: int, seed: int, vocab_size: int, boundary: Boundary) -> None:
        super().__init__()
        self.size, self.seed, self.vocab_size, self.boundary = size, seed, vocab_size, boundary

    def expand(self, documents: beam.PCollection) -> beam.PCollection:
        return (
            documents
            | "Sample" >> SampleForBpe(self.size, self.seed)
            | "Train" >> beam.Map(learn_tokenizer, self.vocab_size, self.boundary)
        )
