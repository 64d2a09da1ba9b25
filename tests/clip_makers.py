"""Test-only media makers: variable-frame-rate clips and audio-only files (no video stream).

The embedded demo clips and the general clip maker are in ``shared.samples.clips``; these two exist only
to give the AVC reader the awkward inputs it must cope with.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from fractions import Fraction

import av
import numpy as np

from shared.samples.clips import encode_clip, open_output, photo, render_frames


def make_vfr_clip(
    times: Sequence[float | Fraction],
    end: float | Fraction,
    photo_index: int = 0,
    size: tuple[int, int] = (256, 144),
    container: str = "mp4",
) -> bytes:
    """A variable-frame-rate clip: marked frame ``i`` is shown from ``times[i]`` (seconds) until the next
    frame or ``end``. Times are taken as exact decimal fractions (0.35 means 7/20)."""
    exact = [Fraction(str(t)) for t in times]
    pictures = render_frames(photo(photo_index), len(exact), size, motion="pan", mark_frames=True)
    return encode_clip(pictures, exact, Fraction(str(end)), codec="libx264", container=container)


def make_audio_only(seconds: float = 1.0, container: str = "m4a", sample_rate: int = 44100) -> bytes:
    """A file with one audio stream (a 440 Hz sine) and no video: AAC in ``m4a``, PCM in ``wav``."""
    codec = "pcm_s16le" if container == "wav" else "aac"
    samples = np.sin(2 * np.pi * 440 * np.arange(int(seconds * sample_rate)) / sample_rate)
    buffer = io.BytesIO()
    with open_output(buffer, container) as output:
        stream = output.add_stream(codec, rate=sample_rate, layout="mono")
        chunk = 1024  # AAC's frame size; PyAV converts the samples to the encoder's format (planar)
        for start in range(0, len(samples), chunk):
            block = (0.5 * samples[start : start + chunk]).astype(np.float32)[None, :]
            frame = av.AudioFrame.from_ndarray(block, format="flt", layout="mono")
            frame.sample_rate = sample_rate
            frame.pts = start
            output.mux(stream.encode(frame))
        output.mux(stream.encode(None))
    return buffer.getvalue()
