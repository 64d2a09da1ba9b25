"""Benchmark: the whole Beam job per core against the Pillow codec floor, in the same run.

The job (read files -> encode -> dedup -> BPE sample + training -> tokenize -> pack -> write shards
and manifest) runs on the DirectRunner with one in-process worker; the floor is bare Pillow on the
same files (decode, center crop, resize, encode with the same settings) — the least any JPEG-LM
pipeline must do per image. Prints ratios (job throughput / floor throughput; target >= 0.8, i.e. the
job within 1.25x of the floor): for the whole run, start-up included, and at steady state — the
marginal cost per image, from timing the job on half and on all of the inputs — which is what a
23M-image run sees. Then the dataset's figures.

    python -m bench.pipeline [--images 600] [--repeats 2] [--all-cores]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

import pyarrow.parquet as pq

from bench.codec import best_rate, image_inputs, pillow_floor
from preprocess.run import run
from shared.codec.jpeg.profile import JpegProfile


def main() -> None:
    # the tokenizer on one core too: figures are per core (read when its thread pool starts, at first use)
    os.environ.setdefault("RAYON_NUM_THREADS", "1")
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=600)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--all-cores", action="store_true", help="also time the job with one worker per core")
    args = parser.parse_args()

    profile = JpegProfile()
    images = image_inputs(args.images)
    with tempfile.TemporaryDirectory(prefix="codec-lm-bench-") as scratch:
        folder = Path(scratch) / "in"
        folder.mkdir()
        for index, data in enumerate(images):
            (folder / f"{index:06d}.jpg").write_bytes(data)

        half = len(images) // 2

        def job(pattern: str, *runner: str) -> None:
            run(["--input", str(folder / pattern), "--output", str(Path(scratch) / "out"), *runner])

        one_core = ["--direct_running_mode", "in_memory", "--direct_num_workers", "1"]
        floor = best_rate(lambda: [pillow_floor(profile, d) for d in images], len(images), args.repeats)
        # the first half of the files: names 000000 … sort first, and "0*"/"1*" … globs select them exactly
        first_half = [f"{i:06d}.jpg" for i in range(half)]
        (folder / "half").mkdir()
        for name in first_half:
            (folder / "half" / name).symlink_to(folder / name)
        half_seconds = 1 / best_rate(lambda: job("half/*.jpg", *one_core), 1, args.repeats)
        ours = best_rate(lambda: job("*.jpg", *one_core), len(images), args.repeats)
        marginal = (len(images) - half) / (len(images) / ours - half_seconds)
        all_cores = best_rate(lambda: job("*.jpg"), len(images), 1) if args.all_cores else None
        manifest = json.loads((Path(scratch) / "out" / "manifest.json").read_text())
        rows = pq.read_table(Path(scratch) / "out" / "documents.parquet")
        stream_bytes = sum(rows.column("stream_bytes").to_pylist()) / len(rows)

    totals = manifest["totals"]
    print(f"\nwhole job, {len(images)} JPEG sources (a third ~1500 px), {profile.name}, DirectRunner, 1 core:")
    print(f"  whole run    job {ours:7.1f} img/s | Pillow codec floor {floor:7.1f} img/s | ratio {ours / floor:.2f}x")
    print(f"  steady state job {marginal:7.1f} img/s | Pillow codec floor {floor:7.1f} img/s | ratio {marginal / floor:.2f}x"
          f"  (start-up {half_seconds - half / marginal:.1f} s)")
    if all_cores:
        print(f"  all {os.cpu_count()} cores (multi_processing): {all_cores:.1f} img/s")
    print(f"  {totals['tokens'] / totals['documents']:.0f} tokens per image, {stream_bytes:.0f} stream bytes per image, "
          f"{profile.size ** 2 * 3 / stream_bytes:.1f}x smaller than raw pixels, "
          f"{totals['sequences']} sequences of {manifest['seq_len'] + 1}")


if __name__ == "__main__":
    main()
