"""Benchmark: the codec layer's hot path against the bare library floor, measured in the same run.

Images: normalise + encode + tokenize per image (one core) vs. the bare Pillow floor on the same files
(decode, center crop, resize, encode with the same JPEG settings) — the least any JPEG-LM pipeline
must do. Videos: normalize + encode + tokenize vs. the bare PyAV floor (decode the first 5 s,
rescale each sampled frame, encode with the same libx264 settings). Prints ratios (ours / floor
throughput): these machines are noisy, absolute numbers are only context.

    python -m bench.codec [--images 120] [--videos 4] [--repeats 3]
"""

from __future__ import annotations

import argparse
import io
import os
import time
from collections.abc import Callable
from fractions import Fraction

import av
import numpy as np
from PIL import Image

from shared.codec.avc.profile import AvcProfile
from shared.codec.jpeg.profile import JpegProfile
from shared.format.tokenizer import ByteTokenizer
from shared.samples.clips import sample_clips
from shared.samples.photos import sample_crops

os.environ.setdefault("RAYON_NUM_THREADS", "1")  # one core for the tokenizer too: figures are per core


def best_rate(work: Callable[[], None], count: int, repeats: int) -> float:
    """Items per second of the fastest of ``repeats`` runs (the least disturbed by noise)."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        work()
        best = min(best, time.perf_counter() - start)
    return count / best


def image_inputs(count: int) -> list[bytes]:
    """Web-like JPEG sources: sample crops, and a third of them upscaled to ~1500 px (big camera photos)."""
    inputs = []
    for index, (_, png) in enumerate(sample_crops(count, seed=7)):
        image = Image.open(io.BytesIO(png)).convert("RGB")
        if index % 3 == 0:
            image = image.resize((image.width * 1500 // min(image.size), image.height * 1500 // min(image.size)))
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", quality=90)
        inputs.append(buffer.getvalue())
    return inputs


def pillow_floor(profile: JpegProfile, data: bytes) -> bytes:
    image = Image.open(io.BytesIO(data)).convert("RGB")
    side = min(image.size)
    left, top = (image.width - side) // 2, (image.height - side) // 2
    image = image.crop((left, top, left + side, top + side)).resize((profile.size, profile.size), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=profile.quality, subsampling=profile.subsampling,
               restart_marker_blocks=profile.restart_interval)
    return buffer.getvalue()


def pyav_floor(profile: AvcProfile, data: bytes) -> bytes:
    """Decode 5 s, keep one frame per 1/3 s, scale to 256x144, encode with the same x264 settings."""
    encoder = av.CodecContext.create("libx264", "w")
    encoder.width, encoder.height, encoder.pix_fmt = profile.width, profile.height, "yuv420p"
    encoder.time_base = Fraction(1, profile.fps)
    encoder.framerate = Fraction(profile.fps)
    encoder.options = {"profile": "baseline", "qp": str(profile.qp), "bf": "0", "threads": "1",
                       "x264-params": "slice-max-mbs=1:trellis=0:me=dia:subme=0:psy=0:mixed-refs=0:"
                                      "fast-pskip=0:partitions=none:ref=3"}
    out, next_tick = [], 0.0
    with av.open(io.BytesIO(data)) as container:
        for frame in container.decode(video=0):
            if frame.time is None or frame.time >= profile.seconds:
                break
            if frame.time + 1e-9 >= next_tick:
                next_tick += 1 / profile.fps
                scaled = frame.reformat(width=profile.width, height=profile.height, format="yuv420p")
                scaled.pts = len(out)
                out.append(b"".join(bytes(p) for p in encoder.encode(scaled)))
    out.append(b"".join(bytes(p) for p in encoder.encode(None)))
    return b"".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=120)
    parser.add_argument("--videos", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    jpeg = JpegProfile()
    images = image_inputs(args.images)
    tokenizer = ByteTokenizer.train([jpeg.encode(d) for d in images], 320, boundary=jpeg.token_boundary)

    def images_per_second(group: list[bytes]) -> tuple[float, float]:
        def ours() -> None:
            tokenizer.encode_batch([jpeg.encode(d) for d in group], bos=True, eos=True)
        floor = best_rate(lambda: [pillow_floor(jpeg, d) for d in group], len(group), args.repeats)
        return best_rate(ours, len(group), args.repeats), floor

    print(f"images ({len(images)} JPEG sources, {jpeg.name}, 1 core):")
    large, small = images[::3], [d for i, d in enumerate(images) if i % 3]
    for label, group in (("all sources", images), ("sources <= 640 px", small), ("~1500 px sources", large)):
        ours, floor = images_per_second(group)
        print(f"  {label:18s} normalise+encode+tokenize {ours:7.1f} img/s | Pillow floor {floor:7.1f} img/s"
              f" | ratio {ours / floor:.2f}x")
    streams = [jpeg.encode(d) for d in images]
    tokens = np.mean([len(t) for t in tokenizer.encode_batch(streams, bos=True, eos=True)])
    check = best_rate(lambda: [jpeg.decode(s, strict=True) for s in streams], len(streams), args.repeats)
    print(f"  strict decode (entropy check + Pillow decode) {check:.1f} img/s")
    print(f"  {np.mean([len(s) for s in streams]):.0f} stream bytes, {tokens:.0f} tokens per image (BOS/EOS included)")

    avc = AvcProfile()
    clips = [data for _, data in sample_clips(args.videos, seed=3)]
    video_tokenizer = ByteTokenizer.train([avc.encode(c) for c in clips], 1024, boundary=avc.token_boundary)

    def ours_videos() -> None:
        video_tokenizer.encode_batch([avc.encode(c) for c in clips], bos=True, eos=True)

    floor = best_rate(lambda: [pyav_floor(avc, c) for c in clips], len(clips), args.repeats)
    ours = best_rate(ours_videos, len(clips), args.repeats)
    streams = [avc.encode(c) for c in clips]
    tokens = np.mean([len(t) for t in video_tokenizer.encode_batch(streams, bos=True, eos=True)])
    print(f"videos ({len(clips)} clips, {avc.name}, 1 core):")
    print(f"  load+encode+tokenize {ours:8.2f} clips/s | PyAV floor {floor:8.2f} clips/s | ratio {ours / floor:.2f}x")
    print(f"  {np.mean([len(s) for s in streams]):.0f} stream bytes, {tokens:.0f} tokens per clip "
          f"(vocab {video_tokenizer.vocab_size}, BOS/EOS included)")


if __name__ == "__main__":
    main()
