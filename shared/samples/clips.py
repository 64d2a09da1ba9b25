"""Small deterministic video clips made from the embedded sample photos, for tests and the demo.

A clip is a camera pan or zoom across one of the real photos (``shared.samples.photos``), encoded in-process
with PyAV, so no video files ship with the project and nothing is downloaded. The same arguments give the
same bytes on every run (single-threaded encoders, fixed motion). There are also helpers for the awkward
inputs a video reader must cope with: rotation metadata, clips shorter than a second or a single frame
long (variable frame rates and audio-only files: ``tests/clip_makers.py``).

Frames can be *marked*: a flat grey patch in the top-left corner whose level depends on the frame number
(``mark_level``), so a test can tell which source frame a sampler picked even after scaling and lossy
re-encoding.
"""

from __future__ import annotations

import io
from collections.abc import Iterator, Sequence
from fractions import Fraction

import av
import numpy as np
from PIL import Image

from shared.samples.photos import sample_photo_paths

# Short container names -> FFmpeg muxer names.
_MUXERS = {"mkv": "matroska", "m4a": "ipod"}
# The clips must be byte-identical on every run and machine, so encoders run single-threaded (x264's
# output depends on its thread count) at a constant quantiser: x264's CRF mode with its macroblock tree
# gave differing streams in 5 of 30 identical encodes in one process (measured with this PyAV build).
_ENCODER_OPTIONS = {
    "libx264": {"preset": "veryfast", "qp": "20", "threads": "1"},
    "mpeg4": {"qscale": "3", "threads": "1"},
}
_Interpolation = av.video.reformatter.Interpolation
_CONVERT = _Interpolation.BICUBIC | _Interpolation.BITEXACT | _Interpolation.ACCURATE_RND


def mark_level(index: int) -> int:
    """Grey level of the corner patch on marked frame ``index``: 14 levels 16 apart, far above codec noise."""
    return 24 + 16 * (index % 14)


def photo(index: int) -> np.ndarray:
    """Sample photo ``index`` (modulo the number of photos) as RGB uint8; alpha is composited on white."""
    paths = sample_photo_paths()
    image = Image.open(paths[index % len(paths)])
    if image.mode in ("RGBA", "LA", "P"):
        image = image.convert("RGBA")
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, image)
    return np.asarray(image.convert("RGB"))


def render_frames(
    picture: np.ndarray, count: int, size: tuple[int, int], *, motion: str = "pan", mark_frames: bool = False
) -> list[np.ndarray]:
    """``count`` frames of ``size`` (width, height) moving a virtual camera across ``picture``.

    ``pan`` slides a window of 75% of the largest fitting one diagonally from the top-left to the
    bottom-right corner; ``zoom`` shrinks the largest fitting window to half its size around the centre.
    Windows have sub-pixel positions (Pillow's ``box`` resampling), so the motion is smooth.
    """
    if motion not in ("pan", "zoom"):
        raise ValueError(f"motion must be 'pan' or 'zoom', not {motion!r}")
    width, height = size
    image = Image.fromarray(picture)
    photo_w, photo_h = image.size
    # The largest window with the output's aspect ratio that fits in the photo.
    full_h = min(photo_h, photo_w * height / width)
    full_w = full_h * width / height
    frames = []
    for i in range(count):
        progress = i / max(1, count - 1)
        if motion == "pan":
            win_w, win_h = 0.75 * full_w, 0.75 * full_h
            left = progress * (photo_w - win_w)
            top = progress * (photo_h - win_h)
        else:
            scale = 1.0 - 0.5 * progress
            win_w, win_h = scale * full_w, scale * full_h
            left, top = (photo_w - win_w) / 2, (photo_h - win_h) / 2
        box = (left, top, left + win_w, top + win_h)
        frame = np.array(image.resize((width, height), Image.Resampling.BILINEAR, box=box))
        if mark_frames:
            frame[: height // 4, : width // 4] = mark_level(i)
        frames.append(frame)
    return frames


def encode_clip(
    frames: Sequence[np.ndarray],
    times: Sequence[Fraction],
    end: Fraction,
    *,
    codec: str = "libx264",
    container: str = "mp4",
    rotation: int = 0,
) -> bytes:
    """Encode RGB ``frames`` shown at ``times`` (seconds) until ``end`` into ``container`` bytes.

    Timestamps are exact: the stream's time base is the finest common one of all the times, so variable
    frame rates survive. ``rotation`` (degrees, counter-clockwise, a multiple of 90) is written as the
    stream's display matrix and the pictures are stored turned the other way, so a player that honours the
    matrix shows them exactly as given.
    """
    if rotation % 90:
        raise ValueError("rotation must be a multiple of 90 degrees")
    stored = [np.ascontiguousarray(np.rot90(f, k=-(rotation // 90))) for f in frames]
    height, width = stored[0].shape[:2]
    time_base = Fraction(1, int(np.lcm.reduce([Fraction(t).denominator for t in [*times, end]])))
    if time_base.denominator == 1:
        time_base = Fraction(1, 1000)
    steps = {b - a for a, b in zip(times, [*times[1:], end])}
    if len(frames) != len(times) or min(steps) <= 0:
        raise ValueError("need one time per frame, increasing, and an end after the last time")
    # Constant-rate clips announce their rate; for irregular timestamps any rate is only a hint.
    rate = 1 / min(steps)
    options = dict(_ENCODER_OPTIONS.get(codec, {}))
    if len(steps) > 1 and codec == "libx264":
        # MP4 stores durations as decode-time deltas: with B-frames reordering the pictures, irregular
        # display durations (above all the last frame's) would not survive.
        options["bf"] = "0"

    buffer = io.BytesIO()
    with open_output(buffer, container) as output:
        stream = output.add_stream(codec, rate=rate, options=options)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.codec_context.time_base = time_base
        stream.codec_context.thread_count = 1
        if rotation:
            stream.set_display_rotation(rotation)
        # Each frame's display duration, by pts: muxers otherwise guess the last frame's (mp4 makes it
        # one "average" frame long), and a variable-rate clip must end exactly at `end`.
        durations = {}
        for i, (array, t) in enumerate(zip(stored, times)):
            # Convert to the encoder's format ourselves, with swscale's bit-exact flags (its SIMD paths
            # may round differently on other CPUs).
            frame = av.VideoFrame.from_ndarray(array, format="rgb24").reformat(
                format="yuv420p", interpolation=_CONVERT
            )
            frame.pts = int(t / time_base)
            frame.time_base = time_base
            following = times[i + 1] if i + 1 < len(times) else end
            durations[frame.pts] = int((following - t) / time_base)
            _mux(output, stream.encode(frame), durations)
        _mux(output, stream.encode(None), durations)
    return buffer.getvalue()


def _mux(
    output: av.container.OutputContainer, packets: list[av.Packet], durations: dict[int, int]
) -> None:
    for packet in packets:
        packet.duration = durations.get(packet.pts, packet.duration)
    output.mux(packets)


def open_output(buffer: io.BytesIO, container: str) -> av.container.OutputContainer:
    # `bitexact` keeps muxers from writing random ids (Matroska's segment UID) or version strings.
    muxer = _MUXERS.get(container, container)
    return av.open(buffer, "w", format=muxer, options={"fflags": "+bitexact"})


def make_clip(
    photo_index: int = 0,
    *,
    seconds: float = 6.0,
    fps: int = 25,
    size: tuple[int, int] = (320, 240),
    motion: str = "pan",
    codec: str = "libx264",
    container: str = "mp4",
    frames: int | None = None,
    rotation: int = 0,
    mark_frames: bool = False,
) -> bytes:
    """A constant-frame-rate clip panning/zooming across a sample photo, as container bytes.

    ``frames`` overrides the frame count (default ``round(seconds * fps)``, at least 1); the clip lasts
    ``frames / fps`` seconds, so ``seconds=0.5`` or ``frames=1`` make the short clips a reader must handle.
    ``size`` is the displayed (width, height), also for rotated clips.
    """
    count = frames if frames is not None else max(1, round(seconds * fps))
    pictures = render_frames(photo(photo_index), count, size, motion=motion, mark_frames=mark_frames)
    times = [Fraction(i, fps) for i in range(count)]
    return encode_clip(pictures, times, Fraction(count, fps), codec=codec, container=container, rotation=rotation)


SAMPLE_SIZES = [(320, 240), (320, 180), (240, 320), (256, 256), (352, 288)]
SAMPLE_RATES = [12, 15, 24, 25, 30]


def sample_clip(index: int, seed: int = 0) -> tuple[str, bytes]:
    """Deterministic demo clip ``index`` as ``(key, mp4_bytes)``.

    Photos go round-robin; motion, duration (2-7 s), size (landscape, portrait, square) and frame rate
    are drawn from a generator seeded by ``(seed, index)``, so the demo sees the variety of a web video
    dataset and any clip can be made alone, on any worker.
    """
    rng = np.random.default_rng([seed, index])
    motion = ("pan", "zoom")[int(rng.integers(2))]
    seconds = round(float(rng.uniform(2.0, 7.0)), 2)
    size = SAMPLE_SIZES[int(rng.integers(len(SAMPLE_SIZES)))]
    fps = SAMPLE_RATES[int(rng.integers(len(SAMPLE_RATES)))]
    paths = sample_photo_paths()
    clip = make_clip(index % len(paths), seconds=seconds, fps=fps, size=size, motion=motion)
    return f"{paths[index % len(paths)].stem}-{motion}-{index:05d}", clip


def sample_clips(count: int, seed: int = 0) -> Iterator[tuple[str, bytes]]:
    """The first ``count`` clips of :func:`sample_clip`."""
    return (sample_clip(index, seed) for index in range(count))
