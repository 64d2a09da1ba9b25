"""The AVC (H.264) codec profile: videos as canonical H.264 byte streams, as in the paper's Avc-LM.

A video is normalised (3 fps, first 5 s -> up to 15 frames, scaled to fit 256x144 and padded with black)
and encoded in-process by libx264 with the paper's settings: baseline profile, constant QP 37, no
B-frames and one macroblock per slice, so every 16x16 block of every frame is its own NAL unit (144 per
256x144 frame). The encoder's output is an Annex-B byte stream: NAL units, each after a 00 00 01 or
00 00 00 01 start code.

What the model sees (the *stream*) is that output minus the NAL units that are the same for every video
of a profile (SPS and PPS, the profile's ``header``) or carry no picture (x264's SEI with its ~600-byte
option string, access-unit delimiters). ``restore`` puts the header back, giving a standard H.264
elementary stream that decodes bit-identically to the encoder's full output.

Model outputs may be garbage, so ``decode`` is tolerant by default: it never raises, does bounded work
and reports how many leading frames decoded cleanly. FFmpeg conceals much of what it cannot decode, so
"cleanly" also means that the strict bit-level check (``avc.syntax.check_stream``: every slice parsed to
its last bit with the profile's SPS/PPS) passed every macroblock of the frame; its per-macroblock counts
and first error are in the report's facts. ``strict=True`` turns any decoder complaint or anything the
check finds into ``InvalidMediaError("invalid-stream", ...)``. Constrained sampling uses the grammar of
``avc.grammar``, which only lets through streams that pass both.
"""

from __future__ import annotations

import functools
import io
import math
import re
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any, ClassVar

import av
import numpy as np
from av.video.reformatter import Interpolation
from PIL import Image

from shared.codec.avc.bytestream import NAL_PPS, NAL_SPS, SLICE_TYPES, STRIPPED_TYPES, nal_type, nal_units, starts_frame
from shared.codec.avc.finish import Finished, finish
from shared.codec.avc.grammar import AvcGrammar
from shared.codec.avc.syntax import AvcCheck, Params, check_stream, parse_header
from shared.codec.errors import InvalidMediaError

# swscale's SIMD paths may round differently from its C code; the bit-exact flags make pixel conversions
# reproducible across machines, which byte-identical encodes need. CONVERT is for colour conversion at
# the same size (bicubic is swscale's default filter, used for the chroma planes); SCALE is for resizing.
_EXACT = Interpolation.BITEXACT | Interpolation.ACCURATE_RND
CONVERT = Interpolation.BICUBIC | _EXACT
SCALE = Interpolation.LANCZOS | _EXACT

# ---------------------------------------------------------------------------------------------------
# The profile
# ---------------------------------------------------------------------------------------------------


@dataclass
class DecodedVideo:
    """What ``AvcProfile.decode`` made of a stream.

    ``stream`` is the given stream made whole and strictly valid (``avc.finish``: its clean prefix, the
    frame it stops inside filled), and ``frames`` its frames, RGB uint8 arrays (height x width x 3).
    ``filled`` marks, per frame, the pixels of filled macroblocks. The facts are about the given stream:
    its first ``valid_frames`` frames are clean (every macroblock passed the strict check,
    ``avc.syntax.check_stream``, and FFmpeg decoded them with no error or concealment); ``expected_frames``
    is how many pictures it announces (slices starting at macroblock 0); ``complete`` means every announced
    frame is clean, so ``stream`` is the given stream itself. ``check`` is the strict check's verdict, with
    its per-macroblock counts and first error; ``finished`` what was kept, filled and dropped.
    """

    frames: list[np.ndarray]
    valid_frames: int
    expected_frames: int
    complete: bool
    stream: bytes
    check: AvcCheck
    finished: Finished
    filled: list[np.ndarray]

    @property
    def pictures(self) -> list[np.ndarray]:
        return self.frames

    @property
    def valid_units(self) -> int:
        return self.valid_frames

    @property
    def total_units(self) -> int:
        return self.expected_frames

    @property
    def facts(self) -> dict[str, Any]:
        check, finished = self.check, self.finished
        return {"frames_valid": self.valid_frames, "frames_announced": self.expected_frames, "clean": self.complete,
                "frames_clean": check.clean_frames, "macroblocks_clean": check.clean_macroblocks,
                "macroblocks_announced": check.macroblocks,
                "frames_whole": check.whole_frames,  # all but a last frame cut short by a token budget
                "macroblocks_written": check.macroblocks - check.unwritten_macroblocks,
                "first_error": check.problems[0] if check.problems else None,
                # the file: the stream's clean prefix, the frame it stops inside finished with filler
                "frames_in_file": finished.frames, "macroblocks_kept": finished.kept,
                "macroblocks_filled": len(finished.filled), "macroblocks_dropped": finished.dropped}


@dataclass(frozen=True)
class AvcProfile:
    """An H.264 codec profile: how videos are normalised and encoded, and the invariant header that goes.

    The name encodes every parameter, so ``AvcProfile.from_name(p.name) == p``.
    """

    width: int = 256
    height: int = 144
    fps: int = 3
    seconds: float = 5  # only the first `seconds` of a clip are used
    qp: int = 37
    # A header recorded in a dataset's manifest (see `from_json`); None means "what this libx264 writes".
    recorded_header: bytes | None = field(default=None, repr=False, compare=False)

    kind: ClassVar[str] = "avc"
    modality: ClassVar[str] = "video"
    unit: ClassVar[str] = "frame"
    file_suffix: ClassVar[str] = ".h264"
    view_suffix: ClassVar[str] = ".mp4"
    sheet_cell: ClassVar[int] = 72
    # [00] 00 00 01 starts a NAL unit
    token_boundary: ClassVar[tuple[str, str]] = (r"\u2800?\u2800\u2800\u2801", "merged_with_next")
    _NAME = re.compile(r"avc-(\d+)x(\d+)-(\d+)fps-(\d+(?:\.\d+)?)s-qp(\d+)")

    def __post_init__(self) -> None:
        if self.width <= 0 or self.height <= 0 or self.width % 2 or self.height % 2:
            raise ValueError(
                f"width and height must be positive and even (4:2:0), got {self.width}x{self.height}"
            )
        if self.fps <= 0 or self.seconds <= 0:
            raise ValueError(f"fps and seconds must be positive, got {self.fps} fps, {self.seconds} s")
        if not 0 <= self.qp <= 51:
            raise ValueError(f"qp must be in 0..51 for 8-bit H.264, got {self.qp}")

    # --- identity -----------------------------------------------------------------------------------

    @property
    def name(self) -> str:
        return f"avc-{self.width}x{self.height}-{self.fps}fps-{self.seconds:g}s-qp{self.qp}"

    @property
    def max_frames(self) -> int:
        """Frames in a full-length clip: the ticks 0, 1/fps, 2/fps, ... before ``seconds``."""
        return math.ceil(round(self.fps * self.seconds, 9))

    @property
    def total_units(self) -> int:
        return self.max_frames

    @property
    def macroblocks(self) -> int:
        """16x16 macroblocks per frame; with one macroblock per slice, also slice NAL units per frame."""
        return math.ceil(self.width / 16) * math.ceil(self.height / 16)

    @property
    def max_stream_bytes(self) -> int:
        """The largest stream ``decode`` looks at: twice the raw 4:2:0 size of a full clip. A real encode at
        any QP is far smaller, so anything bigger is garbage and is cut to bound the decoder's work."""
        return 2 * self.max_frames * self.width * self.height * 3 // 2

    @functools.cached_property
    def header(self) -> bytes:
        """The profile's SPS and PPS NAL units (with start codes): identical for every video it encodes."""
        if self.recorded_header is not None:
            return self.recorded_header
        return computed_header(self.width, self.height, self.fps, self.qp)

    def to_json(self) -> dict:
        params = dict(width=self.width, height=self.height, fps=self.fps, seconds=self.seconds, qp=self.qp)
        return {"name": self.name, "kind": self.kind, "params": params, "header": self.header.hex()}

    @classmethod
    def from_name(cls, name: str) -> AvcProfile:
        match = cls._NAME.fullmatch(name)
        if not match:
            raise ValueError(f"not an AVC profile name: {name!r} (expected e.g. {cls().name!r})")
        width, height, fps, seconds, qp = match.groups()
        return cls(int(width), int(height), int(fps), float(seconds), int(qp))

    @classmethod
    def from_json(cls, d: dict) -> AvcProfile:
        """The profile recorded in a manifest, keeping its recorded header so that old datasets restore
        byte-exactly even if this libx264 writes a different one (then a warning says so)."""
        if d.get("kind") != cls.kind:
            raise ValueError(f"not an AVC profile: kind {d.get('kind')!r}")
        profile = cls(**d["params"])
        if d.get("name", profile.name) != profile.name:
            raise ValueError(f"profile name {d['name']!r} does not match its parameters ({profile.name!r})")
        if d.get("header") is None:
            return profile
        recorded = bytes.fromhex(d["header"])
        if recorded != computed_header(profile.width, profile.height, profile.fps, profile.qp):
            warnings.warn(
                f"{profile.name}: the recorded header differs from the one this libx264 build writes; "
                "existing streams restore with the recorded header, but new encodes will be refused "
                "(install the libx264/PyAV build the dataset was made with)",
                stacklevel=2,
            )
        return cls(**d["params"], recorded_header=recorded)

    # --- video in -------------------------------------------------------------------------------------

    def normalize(self, source: bytes | str | Path, *, max_pixels: int | None = None) -> list[np.ndarray]:
        """Read any video FFmpeg can read and return its normalised frames (RGB uint8, height x width x 3).

        Frames are taken at ``fps`` from the first ``seconds``: tick ``i`` is ``i / fps`` after the first
        frame's timestamp and shows the latest frame whose timestamp is at or before it (like FFmpeg's
        ``fps`` filter; timestamps, not frame numbers, so variable frame rates work). A tick counts only
        before the clip's end (last timestamp + that frame's duration); a clip with any frame gives at
        least one. Decoding stops at the first frame past the last tick. Rotation metadata is applied,
        then each frame is scaled to fit (Lanczos) and centred on black.

        ``max_pixels`` bounds the source's width x height (default ``PIL.Image.MAX_IMAGE_PIXELS``, the
        decompression-bomb limit the JPEG profile also honours). Every problem with the input raises
        ``InvalidMediaError`` with a reason code.
        """
        limit = Image.MAX_IMAGE_PIXELS if max_pixels is None else max_pixels
        if isinstance(source, (bytes, bytearray, memoryview)):
            what = f"the {len(source)}-byte video"
            if len(source) == 0:
                raise InvalidMediaError("empty", "the video is 0 bytes; check the download or upload")
            file: io.BytesIO | str = io.BytesIO(source)
        else:
            what = str(source)
            path = Path(source)
            if not path.is_file():
                raise InvalidMediaError("unreadable", f"{what} does not exist or is not a file")
            if path.stat().st_size == 0:
                raise InvalidMediaError("empty", f"{what} is 0 bytes; check the download or upload")
            file = str(path)
        try:
            with av.open(file, metadata_errors="ignore") as container:
                return self._sample(container, what, limit)
        except InvalidMediaError:
            raise
        except Exception as error:  # av.error.*, and anything else a broken file provokes
            raise InvalidMediaError(
                "unreadable",
                f"{what} is not a video FFmpeg can read ({error}); check that it is a complete "
                "video file (mp4, mkv, webm, mov, avi, ...)",
            ) from error

    def _sample(
        self, container: av.container.InputContainer, what: str, limit: int | None
    ) -> list[np.ndarray]:
        if not container.streams.video:
            kinds = ", ".join(stream.type for stream in container.streams) or "no streams"
            raise InvalidMediaError(
                "no-video-stream", f"{what} has no video stream ({kinds}); pass a video file"
            )
        stream = container.streams.video[0]
        # Refuse decompression bombs before decoding anything, from the size the container declares.
        width, height = stream.codec_context.width, stream.codec_context.height
        if limit is not None and width * height > limit:
            raise InvalidMediaError(
                "too-many-pixels",
                f"{what} is {width}x{height} = {width * height} pixels, above the limit of {limit}; "
                "downscale it first or raise the limit",
            )
        sar = stream.sample_aspect_ratio or Fraction(1)  # non-square pixels (anamorphic video)
        rate = stream.average_rate or stream.guessed_rate
        default_duration = 1 / Fraction(rate) if rate else Fraction(0)

        ticks = [Fraction(i, self.fps) for i in range(self.max_frames)]  # after the first frame's time
        picked: list[np.ndarray] = []
        current: tuple[av.VideoFrame, Fraction] | None = None  # the latest frame so far, and its time
        start = Fraction(0)
        report = {"packets": 0, "errors": []}
        for frame in _decoded_frames(container, stream, report):
            if limit is not None and frame.width * frame.height > limit:
                raise InvalidMediaError(
                    "too-many-pixels",
                    f"{what} has a {frame.width}x{frame.height} frame, above {limit} pixels",
                )
            time = _frame_time(frame, stream, current)
            if current is None:
                start = time
            else:
                time = max(time, current[1])  # a timestamp going backwards shows at once
                # Every tick before this frame's time shows the previous frame.
                while len(picked) < len(ticks) and start + ticks[len(picked)] < time:
                    picked.append(self._fit(current[0], sar))
                if len(picked) == len(ticks):
                    break  # past the last tick: read no further
            current = (frame, time)
        if current is not None and len(picked) < len(ticks):
            frame, time = current
            duration = frame.duration * Fraction(frame.time_base) if frame.time_base else 0
            end = time + (duration or default_duration)  # the clip's end
            while len(picked) < len(ticks) and start + ticks[len(picked)] < end:
                picked.append(self._fit(frame, sar))
            if not picked:
                picked.append(self._fit(frame, sar))
        if not picked:  # not a single frame decoded
            if report["packets"] or report["errors"]:
                details = f" ({report['errors'][0]})" if report["errors"] else ""
                raise InvalidMediaError(
                    "truncated",
                    f"{what} has {report['packets']} video packets but no frame decodes{details}; the file "
                    "is probably cut short or corrupt",
                )
            raise InvalidMediaError(
                "no-frames",
                f"{what} has a video stream without a single frame in it (an empty track, or a file cut "
                "short before its first frame is complete)",
            )
        return picked

    def _fit(self, frame: av.VideoFrame, sar: Fraction) -> np.ndarray:
        """``frame`` upright, scaled to fit ``width`` x ``height`` and centred on black."""
        # The display matrix says how to turn the stored picture to show it upright (counter-clockwise
        # degrees); phones store portrait video as landscape plus a 90-degree rotation.
        turns = round(frame.rotation / 90) % 4
        shown_w, shown_h = frame.width * float(sar), frame.height
        if turns % 2:
            shown_w, shown_h = shown_h, shown_w
        scale = min(self.width / shown_w, self.height / shown_h)
        fit_w = min(self.width, max(1, round(shown_w * scale)))
        fit_h = min(self.height, max(1, round(shown_h * scale)))
        # Scale before turning (cheaper), to the turned-back size.
        stored_w, stored_h = (fit_h, fit_w) if turns % 2 else (fit_w, fit_h)
        rgb = frame.to_ndarray(width=stored_w, height=stored_h, format="rgb24", interpolation=SCALE)
        rgb = np.rot90(rgb, k=turns)
        canvas = np.zeros((self.height, self.width, 3), np.uint8)
        top, left = (self.height - fit_h) // 2, (self.width - fit_w) // 2
        canvas[top : top + fit_h, left : left + fit_w] = rgb
        return canvas

    # --- encoding -----------------------------------------------------------------------------------

    def encode(self, source: bytes | str | Path, *, max_pixels: int | None = None) -> bytes:
        """The stream of a video: ``normalize`` then ``encode_pictures``."""
        return self.encode_pictures(self.normalize(source, max_pixels=max_pixels))

    def encode_pictures(self, frames: list[np.ndarray]) -> bytes:
        """Encode normalised frames with libx264 and strip the header and SEI: the stream the model sees.

        Raises ``RuntimeError`` when the parameter sets libx264 wrote are not the profile's header: this
        libx264 build encodes differently from the one the header was made with.
        """
        if not 1 <= len(frames) <= self.max_frames:
            raise ValueError(f"{self.name} encodes 1 to {self.max_frames} frames, got {len(frames)}")
        for frame in frames:
            if frame.shape != (self.height, self.width, 3) or frame.dtype != np.uint8:
                raise ValueError(
                    f"frames must be {self.height}x{self.width}x3 uint8 (see normalize), "
                    f"got {frame.shape} {frame.dtype}"
                )
        units = [unit for _, unit in nal_units(encode_annexb(frames, self.fps, self.qp))]
        expected = {nal_type(unit): unit for _, unit in nal_units(self.header)}
        parameter_sets = [unit for unit in units if nal_type(unit) in (NAL_SPS, NAL_PPS)]
        if not parameter_sets or any(expected.get(nal_type(unit)) != unit for unit in parameter_sets):
            raise RuntimeError(
                f"{self.name}: libx264 wrote parameter sets (SPS/PPS) that differ from the profile's header "
                f"({b''.join(parameter_sets).hex()} vs {self.header.hex()}); this libx264 build encodes "
                "differently from the one the header was recorded with, so its streams would not restore. "
                "Use the pinned PyAV/libx264 build."
            )
        return b"".join(unit for unit in units if nal_type(unit) not in STRIPPED_TYPES)

    def restore(self, stream: bytes) -> bytes:
        """A standard Annex-B H.264 elementary stream: the header followed by the stream."""
        return self.header + stream

    # --- streams out ----------------------------------------------------------------------------------

    def frame_count(self, stream: bytes) -> int:
        """Frames a stream announces: slices that start a picture (``first_mb_in_slice == 0``)."""
        return sum(starts_frame(unit) for _, unit in nal_units(stream))

    def cut_after_units(self, stream: bytes, units: int) -> bytes:
        """The prefix of ``stream`` holding its first ``units`` frames: it ends right before the first NAL
        unit of the next frame (the whole stream when it has that many frames or fewer). A prompt."""
        if units < 0:
            raise ValueError(f"a prompt holds 0 or more frames, not {units}")
        seen = 0
        for offset, unit in nal_units(stream):
            if starts_frame(unit):
                if seen == units:
                    return stream[:offset]
                seen += 1
        return stream

    def prompt_units(self, ratio: float) -> int:
        """Frames in a prompt of the first ``ratio`` of a full-length clip."""
        if not 0.0 <= ratio <= 1.0:
            raise ValueError(f"prompt ratio must be in [0, 1], not {ratio}")
        return math.floor(ratio * self.max_frames + 1e-9)

    def prompt(self, stream: bytes, ratio: float) -> bytes:
        return self.cut_after_units(stream, self.prompt_units(ratio))

    def grammar(self) -> AvcGrammar:
        return AvcGrammar(self)

    def raw_pixel_bytes(self, stream: bytes) -> int:
        return self.width * self.height * 3 * self.frame_count(stream)

    def decode(self, stream: bytes, *, strict: bool = False, partial_frame: str = "fill") -> DecodedVideo:
        """Judge a stream (header is added) with the strict check, make it whole and decode that with FFmpeg.

        Tolerant by default, for model outputs: never raises and looks at no more than ``max_stream_bytes``.
        The frames come from the stream made whole (``avc.finish.finish``): its clean prefix, the frame it
        stops inside filled (``partial_frame="fill"``) or dropped (``"drop"``), decoded with FFmpeg's error
        detection at its strictest. ``strict=True`` raises ``InvalidMediaError("invalid-stream")`` instead on
        foreign bytes or units, on anything the strict bit-level check (``avc.syntax.check_stream``) finds,
        on any decoder complaint, or when the number of decoded frames differs from the number the stream
        announces.
        """
        expected = self.frame_count(stream)
        problems = []
        if len(stream) > self.max_stream_bytes:
            problems.append(f"{len(stream)} bytes is more than the {self.max_stream_bytes} any clip needs")
            stream = stream[: self.max_stream_bytes]
        units = nal_units(stream)
        foreign = sorted({nal_type(unit) for _, unit in units} - set(SLICE_TYPES))
        if foreign:
            problems.append(f"NAL unit types {foreign}, but a stream holds only slices (types 1 and 5)")
        if expected > self.max_frames:
            problems.append(f"{expected} frames announced, more than the profile's {self.max_frames}")
        check = check_stream(self.header, stream, self.max_frames)
        if strict and (problems or check.problems):
            shown = [*problems, *check.problems]
            shown = "; ".join(shown[:3]) + ("; ..." if len(shown) > 3 else "")
            raise InvalidMediaError("invalid-stream", f"not a {self.name} stream: {shown}")
        finished = finish(self.parameters, stream, check, partial_frame)
        frames, errors = [], []
        for frame, error in _decode_h264(self.restore(finished.stream), self.max_frames + 2, strict=True):
            if error is None and frame.is_corrupt:
                error = f"frame {len(frames) + 1} has decoding errors"
            if error is not None:
                if strict:
                    raise InvalidMediaError("invalid-stream", f"not a {self.name} stream: decoder error after "
                                                              f"{len(frames)} frames ({error})")
                errors.append(error)
                continue
            frames.append(frame.to_ndarray(format="rgb24", interpolation=CONVERT))
        if strict and len(frames) != expected:
            raise InvalidMediaError(
                "invalid-stream",
                f"not a {self.name} stream: it announces {expected} frames but {len(frames)} decode",
            )
        valid = check.leading_clean_frames if not errors else 0
        complete = not problems and not errors and check.ok and 0 < expected == len(frames) == valid
        return DecodedVideo(frames, valid, expected, complete, stream if complete else finished.stream, check,
                            finished, self._filled_masks(finished, len(frames)))

    @functools.cached_property
    def parameters(self) -> Params:
        """The header's SPS and PPS, parsed."""
        return parse_header(self.header)

    def _filled_masks(self, finished: Finished, frames: int) -> list[np.ndarray]:
        masks = [np.zeros((self.height, self.width), bool) for _ in range(frames)]
        across = math.ceil(self.width / 16)
        for frame, macroblock in finished.filled:
            if frame < frames:
                top, left = 16 * (macroblock // across), 16 * (macroblock % across)
                masks[frame][top:top + 16, left:left + 16] = True
        return masks

    def viewable(self, stream: bytes) -> bytes:
        return self.to_mp4(stream)

    def check_viewable(self, file: bytes) -> tuple[str, ...]:
        """What is wrong with an MP4 file made by ``viewable``, judged from the file itself: its H.264 data
        (back to Annex B with FFmpeg's ``h264_mp4toannexb``) must hold the profile's SPS and PPS and slices
        that pass the strict check, and FFmpeg must decode it at its strictest (``ffmpeg_verdict``) into
        every frame the slices announce, with no error or concealment. Empty when the file is sound."""
        try:
            with av.open(io.BytesIO(file), format="mp4") as container:
                video = container.streams.video[0]
                to_annexb = av.bitstream.BitStreamFilterContext("h264_mp4toannexb", video)
                packets = [packet for packet in container.demux(video) if packet.size]
                annexb = b"".join(bytes(out) for packet in [*packets, None] for out in to_annexb.filter(packet))
        except (av.error.FFmpegError, IndexError) as error:
            return (f"not a readable MP4 with an H.264 track ({error})",)
        units = [unit for _, unit in nal_units(annexb)]
        header = {nal_type(unit): unit.lstrip(b"\x00") for _, unit in nal_units(self.header)}
        if any(nal_type(unit) in header and unit.lstrip(b"\x00") != header[nal_type(unit)] for unit in units):
            return ("its parameter sets (SPS/PPS) are not the profile's",)
        slices = b"".join(unit for unit in units if nal_type(unit) not in STRIPPED_TYPES)
        check = check_stream(self.header, slices, self.max_frames)
        problems = list(check.problems)
        verdict = ffmpeg_verdict(self.restore(slices), self.max_frames + 2)
        problems += [f"FFmpeg: {error}" for error in verdict.errors]
        if verdict.corrupt_frames:
            problems.append(f"FFmpeg conceals errors in {verdict.corrupt_frames} frames")
        if verdict.frames != check.frames or not check.frames:
            problems.append(f"{check.frames} frames announced, {verdict.frames} decoded")
        return tuple(problems)

    def to_mp4(self, stream: bytes) -> bytes:
        """The stream as an MP4 file at ``fps`` for viewing: the H.264 data is remuxed, not re-encoded.

        Like tolerant decoding, it keeps only the slices (a stray parameter set in a model's output would
        make the file unplayable); ``InvalidMediaError("invalid-stream")`` when not even one frame is there.
        """
        if self.frame_count(stream) == 0:
            raise InvalidMediaError("invalid-stream", "the stream holds no frame: there is nothing to write")
        slices = b"".join(unit for _, unit in nal_units(stream) if nal_type(unit) in SLICE_TYPES)
        time_base = Fraction(1, self.fps)
        raw = io.BytesIO(self.restore(slices))
        buffer = io.BytesIO()
        try:
            with (
                av.open(raw, format="h264", options={"framerate": str(self.fps)}) as source,
                av.open(buffer, "w", format="mp4", options={"fflags": "+bitexact"}) as output,
            ):
                video = output.add_stream_from_template(source.streams.video[0])
                video.time_base = time_base
                # The raw H.264 demuxer yields one packet per picture in decoding order, which is also
                # display order here (no B-frames): number them.
                packets = (packet for packet in source.demux(source.streams.video[0]) if packet.size)
                for index, packet in enumerate(packets):
                    packet.stream = video
                    packet.pts = packet.dts = index
                    packet.duration = 1
                    packet.time_base = time_base
                    output.mux(packet)
        except av.error.FFmpegError as error:
            message = f"cannot remux the stream into MP4 ({error})"
            raise InvalidMediaError("invalid-stream", message) from error
        return buffer.getvalue()


# ---------------------------------------------------------------------------------------------------
# libx264 and FFmpeg plumbing
# ---------------------------------------------------------------------------------------------------


def x264_options(qp: int) -> dict[str, str]:
    """libx264 options for the paper's setup (``ffmpeg -c:v libx264 -profile:v baseline -qp 37 ...``)."""
    params = [
        "slice-max-mbs=1",  # one macroblock per slice: every 16x16 block is a NAL unit
        "bframes=0",
        "trellis=0",
        "me=dia",
        "subme=0",
        "psy=0",
        "mixed-refs=0",
        "fast-pskip=0",
        "partitions=none",
        "ref=3",
        "threads=1",  # x264's output depends on its thread count
    ]
    return {"profile": "baseline", "qp": str(qp), "x264-params": ":".join(params)}


def encode_annexb(frames: list[np.ndarray], fps: int, qp: int) -> bytes:
    """The full libx264 output (SPS, PPS, SEI, slices) for RGB ``frames`` at ``fps``.

    A bare codec context (no container) does not ask for global headers, so x264 writes its parameter
    sets inline before each key frame: a self-contained Annex-B stream.
    """
    height, width = frames[0].shape[:2]
    codec = av.CodecContext.create("libx264", "w")
    codec.width, codec.height, codec.pix_fmt = width, height, "yuv420p"
    codec.time_base = Fraction(1, fps)
    codec.framerate = Fraction(fps)
    codec.thread_count = 1
    codec.options = x264_options(qp)
    out = bytearray()
    for index, rgb in enumerate(frames):
        # Convert to 4:2:0 ourselves, with swscale's bit-exact flags, rather than leave it to PyAV's encoder.
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
        frame = frame.reformat(format="yuv420p", interpolation=CONVERT)
        frame.pts = index
        for packet in codec.encode(frame):
            out += bytes(packet)
    for packet in codec.encode(None):
        out += bytes(packet)
    return bytes(out)


@functools.cache
def computed_header(width: int, height: int, fps: int, qp: int) -> bytes:
    """The SPS and PPS this libx264 writes for a profile, from an encode of one black frame."""
    black = np.zeros((height, width, 3), np.uint8)
    units = [unit for _, unit in nal_units(encode_annexb([black], fps, qp))]
    return b"".join(unit for unit in units if nal_type(unit) in (NAL_SPS, NAL_PPS))


@dataclass(frozen=True)
class FfmpegVerdict:
    """FFmpeg's own opinion of an Annex-B stream, at its strictest (see ``ffmpeg_verdict``)."""

    frames: int  # decoded
    corrupt_frames: int  # decoded with concealment (``AVFrame.decode_error_flags`` / ``is_corrupt``)
    errors: tuple[str, ...]  # decoder exceptions and messages logged at error level

    def clean(self, expected_frames: int) -> bool:
        """No error, no concealment, and as many frames as the stream announces."""
        return not self.errors and not self.corrupt_frames and self.frames == expected_frames


def ffmpeg_verdict(annexb: bytes, max_frames: int) -> FfmpegVerdict:
    """Decode with FFmpeg's H.264 decoder, error detection at its strictest (``err_detect`` with
    ``explode``: any bitstream error fails the packet), and collect every complaint: exceptions, frames
    marked corrupt (concealed) and error-level log lines. The strict check's independent referee.

    Logging is switched on (PyAV leaves it off) for the call and restored after it.
    """
    frames = corrupt = 0
    errors: list[str] = []
    previous = av.logging.get_level()
    av.logging.set_level(av.logging.VERBOSE)
    try:
        with av.logging.Capture() as logs:
            codec = av.CodecContext.create("h264", "r")
            codec.thread_count = 1
            codec.options = {"err_detect": "crccheck+bitstream+buffer+explode"}
            for frame, error in _decode_h264_packets(codec, annexb, max_frames):
                if error is not None:
                    errors.append(error)
                else:
                    frames += 1
                    corrupt += bool(frame.is_corrupt)
    finally:
        av.logging.set_level(previous)
    errors += [f"{name}: {message.strip()}" for level, name, message in logs if level <= av.logging.ERROR]
    return FfmpegVerdict(frames, corrupt, tuple(errors))


def _decode_h264_packets(
    codec: av.CodecContext, data: bytes, max_frames: int
) -> Iterator[tuple[av.VideoFrame | None, str | None]]:
    try:
        packets = codec.parse(data) + codec.parse(None)
    except Exception as error:  # noqa: BLE001 — whatever FFmpeg's parser raises is the verdict on these bytes
        yield None, str(error)
        return
    produced = 0
    for packet in [*packets, None]:  # None drains the decoder
        try:
            decoded = codec.decode(packet)
        except Exception as error:  # noqa: BLE001 — as above, for the decoder
            yield None, str(error)
            continue
        for frame in decoded:
            yield frame, None
            produced += 1
            if produced >= max_frames:
                return


def _decoded_frames(
    container: av.container.InputContainer, stream: av.VideoStream, report: dict
) -> Iterator[av.VideoFrame]:
    """Decoded frames of ``stream``, counting non-empty packets in ``report["packets"]`` and appending
    what went wrong to ``report["errors"]``.

    A packet the decoder rejects is skipped, as the ffmpeg tool does; a demuxing error (a file cut
    short) ends the stream after the decoder is drained.
    """
    packets = container.demux(stream)
    while True:
        try:
            packet = next(packets)
        except StopIteration:
            return
        except av.error.FFmpegError as error:
            report["errors"].append(str(error))
            packet = None  # drain the decoder, then stop
        if packet is not None and packet.size:
            report["packets"] += 1
        try:
            yield from stream.decode(packet)
        except av.error.FFmpegError as error:
            report["errors"].append(str(error))
        if packet is None:
            return


def _frame_time(
    frame: av.VideoFrame, stream: av.VideoStream, previous: tuple[av.VideoFrame, Fraction] | None
) -> Fraction:
    """A frame's presentation time in seconds; frames without timestamps follow the previous one."""
    timestamp = frame.pts if frame.pts is not None else frame.dts
    time_base = frame.time_base or stream.time_base
    if timestamp is not None and time_base:
        return timestamp * Fraction(time_base)
    if previous is None:
        return Fraction(0)
    rate = stream.average_rate or stream.guessed_rate
    return previous[1] + (1 / Fraction(rate) if rate else Fraction(0))


def _decode_h264(
    data: bytes, max_frames: int, strict: bool
) -> Iterator[tuple[av.VideoFrame | None, str | None]]:
    """Decode an Annex-B stream: ``(frame, None)`` per frame, ``(None, message)`` per decoder error.

    Stops after ``max_frames`` frames. Strict decoding asks FFmpeg to fail on any error it detects
    (``err_detect=explode``) instead of concealing it.
    """
    codec = av.CodecContext.create("h264", "r")
    codec.thread_count = 1
    if strict:
        codec.options = {"err_detect": "crccheck+bitstream+buffer+explode"}
    # whatever garbage provokes is caught there: tolerant decoding reports, never raises
    yield from _decode_h264_packets(codec, data, max_frames)
