"""Benchmark: the codec layer's hot path against the fastest bare-library floor, measured in the same run.

Images: normalise + encode + tokenize per image (one core) vs. the Pillow floor on the same files: the
same work done the plainest fast way, as anyone would write it. It decodes reduced in the DCT domain
(Pillow's draft mode, as the job does), center-crops, resizes once with the same Lanczos filter and
encodes with the profile's JPEG settings: it writes the very JPEG the job writes (a test checks it).
What it skips is the job's own work: the size and mode checks, EXIF orientation, colour rules,
stripping the header, tokenizing. Sources: real photos (the embedded sample photos of scikit-image and
scikit-learn, 21 of them, 300 to 1411 px), random crops of 50-100% of each photo's short side, resized
to ``--source-side`` px on the short side (default 768: web-sized) and saved as JPEG at quality 90.
Videos: normalize + encode + tokenize vs. the bare PyAV floor (decode the first 5 s, scale each sampled
frame with the same Lanczos filter straight to 4:2:0, encode with the same libx264 settings). Prints
ratios (ours / floor throughput, the runs taking turns): these machines are noisy, absolute numbers are
only context.

    python -m bench.codec [--num-images 120] [--source-side 768 [1536 ...]] [--num-videos 4] [--repeats 3]
"""

from __future__ import annotations

import io
import os
import sys
import time
from collections.abc import Callable
from fractions import Fraction
from functools import lru_cache

import av
import numpy as np
from av.video.reformatter import Interpolation
from PIL import Image

from shared.codec.avc.profile import AvcProfile
from shared.codec.jpeg.profile import JpegProfile
from shared.codec.normalize_image import to_rgb
from shared.format.tokenizer import ByteTokenizer
from shared.samples.clips import sample_clips
from shared.samples.photos import sample_photo_paths
from shared.tools import cli

os.environ.setdefault("RAYON_NUM_THREADS", "1")  # one core for the tokenizer too: figures are per core


def best_rate(work: Callable[[], None], count: int, repeats: int) -> float:
    """Items per second of the fastest of ``repeats`` runs (the least disturbed by noise)."""
    return best_rates({"work": work}, count, repeats)["work"]


def best_rates(works: dict[str, Callable[[], None]], count: int, repeats: int) -> dict[str, float]:
    """Items per second of each work's fastest of ``repeats`` runs. The works take turns, round after
    round, so a burst of load from other jobs on the machine slows them alike rather than one of them."""
    best = dict.fromkeys(works, float("inf"))
    for _ in range(repeats):
        for label, work in works.items():
            start = time.perf_counter()
            work()
            best[label] = min(best[label], time.perf_counter() - start)
    return {label: count / seconds for label, seconds in best.items()}


@lru_cache(maxsize=1)
def _photos() -> tuple[Image.Image, ...]:
    return tuple(to_rgb(Image.open(path)) for path in sample_photo_paths())


def image_inputs(count: int, side: int | list[int] = 768, seed: int = 7) -> list[bytes]:
    """Web-like JPEG sources of real photos: crops of the embedded sample photos (50-100% of the short side,
    aspect 3:4 to 4:3, round-robin over the photos), ``side`` px on the short side, JPEG quality 90.
    With several sides, source ``i`` has ``side[i % len(side)]``."""
    sides = [side] if isinstance(side, int) else list(side)
    photos, inputs = _photos(), []
    for index in range(count):
        rng = np.random.default_rng([seed, index])
        photo = photos[index % len(photos)]
        width, height = photo.size
        short = int(min(width, height) * rng.uniform(0.5, 1.0))
        aspect = rng.uniform(0.75, 4 / 3)
        crop_w, crop_h = min(width, int(short * aspect ** 0.5)), min(height, int(short / aspect ** 0.5))
        left, top = int(rng.integers(0, width - crop_w + 1)), int(rng.integers(0, height - crop_h + 1))
        scale = sides[index % len(sides)] / min(crop_w, crop_h)
        crop = photo.crop((left, top, left + crop_w, top + crop_h)).resize(
            (round(crop_w * scale), round(crop_h * scale)), Image.Resampling.LANCZOS)
        crop.info = {}  # no comment or profile of the photo's file: the sources are plain JPEGs
        buffer = io.BytesIO()
        crop.save(buffer, "JPEG", quality=90)
        inputs.append(buffer.getvalue())
    return inputs


def pillow_floor(profile: JpegProfile, data: bytes) -> bytes:
    """The profile's JPEG of ``data`` the fastest plain way: draft decode, crop, one Lanczos resize, encode."""
    image = Image.open(io.BytesIO(data))
    width, height = image.size
    short = min(width, height)
    # Decode at 1/2, 1/4 or 1/8 scale in the DCT domain, never below the target (no-op for small sources).
    image.draft("RGB", (-(-profile.size * width // short), -(-profile.size * height // short)))
    image = image.convert("RGB")
    side = min(image.size)
    left, top = (image.width - side) // 2, (image.height - side) // 2
    image = image.crop((left, top, left + side, top + side)).resize(
        (profile.size, profile.size), Image.Resampling.LANCZOS, reducing_gap=3.0)
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=profile.quality, subsampling=profile.subsampling,
               restart_marker_blocks=profile.restart_interval)
    return buffer.getvalue()


def pyav_floor(profile: AvcProfile, data: bytes) -> bytes:
    """Decode 5 s, keep one frame per 1/fps s, scale it (Lanczos) straight to 4:2:0, encode with the same x264
    settings."""
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
                scaled = frame.reformat(width=profile.width, height=profile.height, format="yuv420p",
                                        interpolation=Interpolation.LANCZOS)
                scaled.pts = len(out)
                out.append(b"".join(bytes(p) for p in encoder.encode(scaled)))
    out.append(b"".join(bytes(p) for p in encoder.encode(None)))
    return b"".join(out)


@cli.command("python -m bench.codec")
def main(argv: list[str] | None = None) -> int:
    parser = cli.parser("python -m bench.codec", __doc__)
    parser.add_argument("--num-images", type=int, default=120, help="JPEG sources per --source-side (default 120)")
    parser.add_argument("--source-side", type=int, nargs="+", default=[768], metavar="PX",
                        help="the sources' short side in px; several: a group of sources for each (default 768)")
    parser.add_argument("--num-videos", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    cli.deprecated(parser, "--images", "--num-images", type=int)
    cli.deprecated(parser, "--videos", "--num-videos", type=int)
    args = parser.parse_args(argv)
    for flag, value in (("--num-images", args.num_images), ("--num-videos", args.num_videos),
                        ("--repeats", args.repeats), ("--source-side", min(args.source_side))):
        if value < 1:
            raise cli.UsageError(f"{flag} must be positive, not {value}")

    jpeg = JpegProfile()
    groups = {side: image_inputs(args.num_images, side) for side in args.source_side}
    images = [data for group in groups.values() for data in group]
    tokenizer = ByteTokenizer.train([jpeg.encode(d) for d in images], 320, boundary=jpeg.token_boundary)

    def images_per_second(group: list[bytes]) -> tuple[float, float]:
        def ours() -> None:
            tokenizer.encode_batch([jpeg.encode(d) for d in group], bos=True, eos=True)

        def floor() -> None:
            for data in group:
                pillow_floor(jpeg, data)
        rates = best_rates({"ours": ours, "floor": floor}, len(group), args.repeats)
        return rates["ours"], rates["floor"]

    print(f"images ({len(images)} JPEG sources: crops of the sample photos, q90; {jpeg.name}, 1 core):")
    labelled = [(f"{side} px sources", group) for side, group in groups.items()]
    for label, group in labelled + ([("all sources", images)] if len(groups) > 1 else []):
        ours, floor = images_per_second(group)
        print(f"  {label:15s} normalise+encode+tokenize {ours:7.1f} img/s | Pillow floor (draft) {floor:7.1f} img/s"
              f" | ratio {ours / floor:.2f}x (the job costs {floor / ours:.2f}x the floor)")
    streams = [jpeg.encode(d) for d in images]
    tokens = np.mean([len(t) for t in tokenizer.encode_batch(streams, bos=True, eos=True)])
    check = best_rate(lambda: [jpeg.decode(s, strict=True) for s in streams], len(streams), args.repeats)
    print(f"  strict decode (entropy check + Pillow decode) {check:.1f} img/s")
    print(f"  {np.mean([len(s) for s in streams]):.0f} stream bytes, {tokens:.0f} tokens per image (BOS/EOS included)")

    avc = AvcProfile()
    clips = [data for _, data in sample_clips(args.num_videos, seed=3)]
    video_tokenizer = ByteTokenizer.train([avc.encode(c) for c in clips], 1024, boundary=avc.token_boundary)

    def ours_videos() -> None:
        video_tokenizer.encode_batch([avc.encode(c) for c in clips], bos=True, eos=True)

    rates = best_rates({"ours": ours_videos, "floor": lambda: [pyav_floor(avc, c) for c in clips]}, len(clips),
                       args.repeats)
    streams = [avc.encode(c) for c in clips]
    tokens = np.mean([len(t) for t in video_tokenizer.encode_batch(streams, bos=True, eos=True)])
    print(f"videos ({len(clips)} clips, {avc.name}, 1 core):")
    print(f"  load+encode+tokenize {rates['ours']:8.2f} clips/s | PyAV floor {rates['floor']:8.2f} clips/s"
          f" | ratio {rates['ours'] / rates['floor']:.2f}x")
    print(f"  {np.mean([len(s) for s in streams]):.0f} stream bytes, {tokens:.0f} tokens per clip "
          f"(vocab {video_tokenizer.vocab_size}, BOS/EOS included)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
