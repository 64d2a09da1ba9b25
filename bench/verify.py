"""Benchmark: `codec-shards verify` in documents/s on one core and on every core, against bare strict decoding.

The baseline is the least any verify must do per document: the strict decode of its stream, with every
stream already in memory (no reading, no tar, no checksum, no detokenizing), on one core. verify adds
reading and hashing each shard, checking the tar, ids and document boundaries, and detokenizing.
Rates count the documents that are decoded (those whole in their shard). Prints documents/s and ratios:
verify's per-document cost against the bare decode (1 core), and all cores against one at steady state
(the marginal rate from timing every shard once and four times over, as a 23M-document run sees it;
the pool's start-up is printed apart). With --beam, also verify's Beam pipeline on the DirectRunner (all cores).

    python -m bench.verify [--num-images 400] [--profile jpeg-256-q25] [--repeats 2] [--beam]
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

from bench import job_flags
from bench.codec import best_rate, best_rates
from preprocess.run import run
from preprocess.verify import verify_shards_on_beam
from shared.codec.registry import get_profile
from shared.format.dataset import Dataset
from shared.tools import cli
from shared.tools.verify import verify_shards


@cli.command("python -m bench.verify")
def main(argv: list[str] | None = None) -> int:
    parser = cli.parser("python -m bench.verify", __doc__)
    parser.add_argument("--num-images", type=int, default=400, help="embedded sample crops in the dataset")
    parser.add_argument("--profile", default="jpeg-256-q25")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--beam", action="store_true", help="also time the Beam pipeline (DirectRunner, all cores)")
    cli.deprecated(parser, "--images", "--num-images", type=int)
    args = parser.parse_args(argv)
    for flag, value in (("--num-images", args.num_images), ("--repeats", args.repeats)):
        if value < 1:
            raise cli.UsageError(f"{flag} must be positive, not {value}")
    try:
        get_profile(args.profile)
    except ValueError as error:
        raise cli.UsageError(f"--profile: {error}") from None
    cores = len(os.sched_getaffinity(0))

    with tempfile.TemporaryDirectory(prefix="codec-lm-bench-") as scratch:
        root = str(Path(scratch) / "dataset")
        # many shards (a large dataset has thousands), each holding several whole documents
        run(job_flags(output=root, sample_size=args.num_images, profile=args.profile, seq_len=1023, shard_sequences=48,
                      val_fraction=0))
        dataset = Dataset.open(root)
        shards = dataset.manifest["shards"]
        streams = [stream for _, _, stream in dataset.document_streams(dataset.rows([("complete", "=", True)]))]

        def bare_decode() -> None:
            for stream in streams:
                dataset.profile.decode(stream, strict=True)

        def verify_on(workers: int, which: list[dict]) -> None:
            reports = verify_shards(dataset, decode=True, workers=workers, shards=which)
            assert not [problem for report in reports for problem in report.problems]

        def seconds(work) -> float:
            return 1 / best_rate(work, 1, args.repeats)

        # the runs take turns, round after round: a burst of load from other jobs slows them alike
        rates = best_rates({"floor": bare_decode, "one": lambda: verify_on(1, shards),
                            "once": lambda: verify_on(cores, shards), "four": lambda: verify_on(cores, shards * 4)},
                           1, args.repeats)
        floor, one = len(streams) * rates["floor"], len(streams) * rates["one"]
        once, four_times = 1 / rates["once"], 1 / rates["four"]
        marginal = 3 * len(streams) / (four_times - once)
        start_up = once - len(streams) / marginal
        beam = len(streams) / seconds(lambda: verify_shards_on_beam(
            dataset, decode=True, argv=["--runner", "DirectRunner"], report=None)) if args.beam else None

    print(f"\nverify, {len(streams)} whole documents ({dataset.profile.name}) in {len(shards)} shards:")
    print(f"  bare strict decode, 1 core    {floor:8.1f} doc/s  ({1000 / floor:.2f} ms per document)")
    print(f"  verify, 1 core                {one:8.1f} doc/s  ratio to bare decode {one / floor:.2f}x")
    print(f"  verify, {cores} cores, steady      {marginal:8.1f} doc/s  ratio to 1 core {marginal / one:.2f}x "
          f"(pool start-up {start_up:.1f} s, once per run)")
    if beam:
        print(f"  verify --runner DirectRunner  {beam:8.1f} doc/s  (start-up included)"
              f" ratio to 1 core {beam / one:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
