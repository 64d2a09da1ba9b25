"""Benchmark: the whole Beam job per core against the Pillow codec floor, in the same run.

The job (read files -> encode -> dedup -> BPE sample + training -> tokenize -> pack -> write shards
and manifest) runs on the DirectRunner with one in-process worker; the floor is bare Pillow on the
same files, the same codec work done the fastest plain way (draft decode as the job does, center crop,
one Lanczos resize, encode with the same settings: ``bench.codec.pillow_floor``, which writes the JPEG
the job writes). Sources: ``bench.codec.image_inputs``, crops of the embedded sample photos at
``--source-side`` px (default 768), JPEG q90. Prints ratios (job throughput / floor throughput): for
the whole run, start-up included, and at steady state — the marginal cost per image, from timing the
job on half and on all of the inputs — which is what a 23M-image run sees. The runs take turns, round
after round. Then the dataset's figures.

    python -m bench.pipeline [--num-images 600] [--source-side 768] [--repeats 2] [--all-cores]
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

import pyarrow.parquet as pq

from bench import job_flags
from bench.codec import best_rate, best_rates, image_inputs, pillow_floor
from preprocess.run import run
from shared.codec.jpeg.profile import JpegProfile
from shared.tools import cli


@cli.command("python -m bench.pipeline")
def main(argv: list[str] | None = None) -> int:
    parser = cli.parser("python -m bench.pipeline", __doc__)
    parser.add_argument("--num-images", type=int, default=600)
    parser.add_argument("--source-side", type=int, nargs="+", default=[768], metavar="PX",
                        help="the sources' short side in px; several: taken in turn (default 768)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--all-cores", action="store_true", help="also time the job with one worker per core")
    cli.deprecated(parser, "--images", "--num-images", type=int)
    args = parser.parse_args(argv)
    if args.num_images < 2:
        raise cli.UsageError(f"--num-images must be at least 2 (the job is timed on half and on all of them), "
                             f"not {args.num_images}")
    for flag, value in (("--repeats", args.repeats), ("--source-side", min(args.source_side))):
        if value < 1:
            raise cli.UsageError(f"{flag} must be positive, not {value}")
    # the tokenizer on one core too: figures are per core (read when its thread pool starts, at first use)
    os.environ.setdefault("RAYON_NUM_THREADS", "1")

    profile = JpegProfile()
    images = image_inputs(args.num_images, args.source_side)
    with tempfile.TemporaryDirectory(prefix="codec-lm-bench-") as scratch:
        folder = Path(scratch) / "in"
        folder.mkdir()
        for index, data in enumerate(images):
            (folder / f"{index:06d}.jpg").write_bytes(data)

        half = len(images) // 2

        def job(pattern: str, output: str, **runner: object) -> None:
            # a folder for each set of inputs: the job refuses to replace a dataset made from others
            run(job_flags(input=folder / pattern, output=Path(scratch) / output, **runner))

        one_core = {"direct_running_mode": "in_memory", "direct_num_workers": 1}
        # the first half of the files, linked into a folder of their own
        (folder / "half").mkdir()
        for name in (f"{i:06d}.jpg" for i in range(half)):
            (folder / "half" / name).symlink_to(folder / name)

        def floor() -> None:
            for data in images:
                pillow_floor(profile, data)
        # one item per run: rates are runs per second, turned into seconds below
        rates = best_rates({"floor": floor, "half": lambda: job("half/*.jpg", "half", **one_core),
                            "all": lambda: job("*.jpg", "all", **one_core)}, 1, args.repeats)
        floor_rate, half_seconds, all_seconds = len(images) * rates["floor"], 1 / rates["half"], 1 / rates["all"]
        ours = len(images) / all_seconds
        marginal = (len(images) - half) / (all_seconds - half_seconds)
        all_cores = best_rate(lambda: job("*.jpg", "all"), len(images), 1) if args.all_cores else None
        manifest = json.loads((Path(scratch) / "all" / "manifest.json").read_text())
        rows = pq.read_table(Path(scratch) / "all" / "documents.parquet")
        stream_bytes = sum(rows.column("stream_bytes").to_pylist()) / len(rows)

    totals = manifest["totals"]
    sides = "/".join(map(str, args.source_side))
    print(f"\nwhole job, {len(images)} JPEG sources ({sides} px short side), {profile.name}, DirectRunner, 1 core:")
    print(f"  whole run    job {ours:7.1f} img/s | Pillow floor (draft) {floor_rate:7.1f} img/s | ratio "
          f"{ours / floor_rate:.2f}x (the job costs {floor_rate / ours:.2f}x the floor)")
    print(f"  steady state job {marginal:7.1f} img/s | Pillow floor (draft) {floor_rate:7.1f} img/s | ratio "
          f"{marginal / floor_rate:.2f}x (the job costs {floor_rate / marginal:.2f}x the floor)"
          f"  (start-up {half_seconds - half / marginal:.1f} s)")
    if all_cores:
        print(f"  all {os.cpu_count()} cores (multi_processing): {all_cores:.1f} img/s")
    print(f"  {totals['tokens'] / totals['documents']:.0f} tokens per image, {stream_bytes:.0f} stream bytes per image,"
          f" {profile.size ** 2 * 3 / stream_bytes:.1f}x smaller than raw pixels, "
          f"{totals['sequences']} sequences of {manifest['seq_len'] + 1}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
