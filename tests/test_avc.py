"""The AVC profile on real media: clips synthesised in-process from the sample photos, no network."""

from __future__ import annotations

import io
import json
import warnings
from collections import Counter

import av
import numpy as np
import pytest
from clip_makers import make_audio_only, make_vfr_clip
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

import shared.codec.avc.bytestream as bytestream
import shared.codec.avc.profile as avc
from shared.codec.avc.bytestream import nal_type, nal_units, payload, starts_frame
from shared.codec.avc.profile import AvcProfile, encode_annexb
from shared.codec.errors import InvalidMediaError
from shared.samples import clips as sv

PROFILE = AvcProfile()


@pytest.fixture(scope="module")
def clip6() -> bytes:
    """6 s at 25 fps, 4:3, every frame marked with its number."""
    return sv.make_clip(photo_index=0, seconds=6.0, fps=25, size=(320, 240), mark_frames=True)


@pytest.fixture(scope="module")
def frames6(clip6: bytes) -> list[np.ndarray]:
    return PROFILE.normalize(clip6)


@pytest.fixture(scope="module")
def stream6(frames6: list[np.ndarray]) -> bytes:
    return PROFILE.encode_pictures(frames6)


def read_mark(frame: np.ndarray, rows: slice, cols: slice) -> int:
    """Which frame number (mod 14) the grey corner patch of a marked frame says."""
    level = frame[rows, cols].mean()
    return int(np.argmin([abs(level - sv.mark_level(i)) for i in range(14)]))


# The 320x240 patch (top-left quarter) lands at x 32..80, y 0..36 after fitting into 256x144.
MARK_4_3 = (slice(6, 30), slice(40, 72))
# A 256x144 source is not scaled: its patch is x 0..64, y 0..36.
MARK_16_9 = (slice(6, 30), slice(8, 56))


def yuv_frames(annexb: bytes) -> list[np.ndarray]:
    """Decoded pictures of an Annex-B stream as raw 4:2:0 planes (no colour conversion in the way)."""
    codec = av.CodecContext.create("h264", "r")
    packets = codec.parse(annexb) + codec.parse(None)
    return [frame.to_ndarray() for packet in [*packets, None] for frame in codec.decode(packet)]


# --- the profile's identity ---------------------------------------------------------------------------


def test_profile_name_and_json_round_trip():
    assert PROFILE.name == "avc-256x144-3fps-5s-qp37"
    assert PROFILE.max_frames == 15
    assert AvcProfile.from_name(PROFILE.name) == PROFILE
    other = AvcProfile(width=320, height=240, fps=5, seconds=2.5, qp=30)
    assert other.name == "avc-320x240-5fps-2.5s-qp30"
    assert AvcProfile.from_name(other.name) == other
    assert other.max_frames == 13  # ticks 0, 0.2, ..., 2.4

    record = json.loads(json.dumps(PROFILE.to_json()))
    assert record["kind"] == "avc" and record["name"] == PROFILE.name
    assert bytes.fromhex(record["header"]) == PROFILE.header
    restored = AvcProfile.from_json(record)
    assert restored == PROFILE and restored.header == PROFILE.header

    with pytest.raises(ValueError):
        AvcProfile.from_name("jpeg-256x256-q25")
    with pytest.raises(ValueError):
        AvcProfile.from_json({**record, "kind": "jpeg"})


def test_header_is_sps_and_pps():
    units = [unit for _, unit in nal_units(PROFILE.header)]
    assert [nal_type(unit) for unit in units] == [bytestream.NAL_SPS, bytestream.NAL_PPS]
    assert b"".join(units) == PROFILE.header
    sps = units[0][units[0].find(b"\x00\x00\x01") + 3 :]
    assert sps[1] == 66  # profile_idc: baseline


def test_from_json_keeps_a_recorded_header_and_warns(stream6: bytes):
    record = PROFILE.to_json()
    # A header recorded by another libx264 build: here the real one with the SPS repeated.
    foreign = PROFILE.header + PROFILE.header
    with pytest.warns(UserWarning, match="recorded header differs"):
        old = AvcProfile.from_json({**record, "header": foreign.hex()})
    assert old == PROFILE and old.header == foreign
    assert old.restore(stream6) == foreign + stream6
    # New encodes with it are refused: their parameter sets would not match what gets restored.
    frame = np.zeros((144, 256, 3), np.uint8)
    bogus = bytes.fromhex(record["header"].replace("6742", "6743", 1))
    with pytest.warns(UserWarning):
        wrong = AvcProfile.from_json({**record, "header": bogus.hex()})
    with pytest.raises(RuntimeError, match="libx264"):
        wrong.encode_pictures([frame])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the matching header warns about nothing
        AvcProfile.from_json(record)


# --- encoding -----------------------------------------------------------------------------------------


def test_encode_is_deterministic(clip6: bytes, stream6: bytes, tmp_path):
    assert PROFILE.encode(clip6) == stream6
    path = tmp_path / "clip.mp4"
    path.write_bytes(clip6)
    assert PROFILE.encode(path) == stream6
    assert PROFILE.encode(str(path)) == stream6
    # The encoder alone, repeatedly (x264 must not depend on timing or leftover state).
    frames = PROFILE.normalize(clip6)
    assert len({PROFILE.encode_pictures(frames) for _ in range(5)}) == 1


def test_header_is_invariant_across_clips():
    clips = [
        sv.make_clip(photo_index=3, seconds=2, fps=15, size=(320, 180), motion="zoom"),
        sv.make_clip(photo_index=7, seconds=3, fps=30, size=(240, 320), motion="pan"),
        sv.make_clip(photo_index=11, seconds=1, fps=24, size=(256, 256), codec="mpeg4", container="avi"),
    ]
    for clip in clips:
        full = encode_annexb(PROFILE.normalize(clip), PROFILE.fps, PROFILE.qp)
        units = [unit for _, unit in nal_units(full)]
        parameter_sets = [unit for unit in units if nal_type(unit) in (bytestream.NAL_SPS, bytestream.NAL_PPS)]
        assert parameter_sets and b"".join(parameter_sets[:2]) == PROFILE.header
        assert PROFILE.encode(clip)  # and encode's own check passes


def test_stream_layout_one_slice_per_macroblock(stream6: bytes):
    units = [unit for _, unit in nal_units(stream6)]
    assert b"".join(units) == stream6  # nothing outside NAL units
    assert set(nal_type(unit) for unit in units) <= {bytestream.NAL_SLICE, bytestream.NAL_IDR}
    assert nal_type(units[0]) == bytestream.NAL_IDR
    assert PROFILE.macroblocks == 256 * 144 // 256 == 144
    starts = [i for i, unit in enumerate(units) if starts_frame(unit)]
    assert starts[0] == 0 and len(starts) == 15 == PROFILE.frame_count(stream6)
    per_frame = Counter(np.searchsorted(starts, range(len(units)), side="right"))
    assert set(per_frame.values()) == {144}


def test_encoder_output_has_what_gets_stripped(frames6: list[np.ndarray], stream6: bytes):
    full = encode_annexb(frames6, PROFILE.fps, PROFILE.qp)
    types = Counter(nal_type(unit) for _, unit in nal_units(full))
    assert types[bytestream.NAL_SEI] >= 1 and types[bytestream.NAL_SPS] >= 1 and types[bytestream.NAL_PPS] >= 1
    assert b"x264" in full and b"x264" not in stream6
    assert len(full) - len(stream6) > 500  # the SEI option string and parameter sets


def test_restore_decodes_bit_identically_to_the_encoder_output(frames6: list[np.ndarray], stream6: bytes):
    full = encode_annexb(frames6, PROFILE.fps, PROFILE.qp)
    restored = PROFILE.restore(stream6)
    assert restored.startswith(PROFILE.header)
    expected = yuv_frames(full)
    got = yuv_frames(restored)
    assert len(expected) == len(got) == 15
    assert all(np.array_equal(a, b) for a, b in zip(expected, got))
    decoded = PROFILE.decode(stream6)
    assert decoded.complete and decoded.valid_frames == decoded.expected_frames == 15
    # ... and the pictures are the input, up to QP 37 losses.
    error = np.mean([np.abs(a.astype(int) - b).mean() for a, b in zip(frames6, decoded.frames)])
    assert error < 12


def test_encode_pictures_rejects_bad_arrays():
    frame = np.zeros((144, 256, 3), np.uint8)
    with pytest.raises(ValueError):
        PROFILE.encode_pictures([])
    with pytest.raises(ValueError):
        PROFILE.encode_pictures([frame] * 16)
    with pytest.raises(ValueError):
        PROFILE.encode_pictures([np.zeros((144, 255, 3), np.uint8)])
    with pytest.raises(ValueError):
        PROFILE.encode_pictures([frame.astype(np.float32)])


# --- reading videos -------------------------------------------------------------------------------------


def test_samples_3fps_from_the_first_5_seconds(frames6: list[np.ndarray]):
    assert len(frames6) == 15
    assert all(f.shape == (144, 256, 3) and f.dtype == np.uint8 for f in frames6)
    # Tick k is k/3 s: the latest 25 fps frame at or before it is frame floor(25k/3).
    assert [read_mark(f, *MARK_4_3) for f in frames6] == [(25 * k // 3) % 14 for k in range(15)]


def test_stops_decoding_after_the_last_tick(clip6: bytes, monkeypatch):
    seen = []
    original = avc._decoded_frames

    def counting(*args):
        for frame in original(*args):
            seen.append(frame.pts)
            yield frame

    monkeypatch.setattr(avc, "_decoded_frames", counting)
    assert len(PROFILE.normalize(clip6)) == 15
    # The last tick (14/3 s) shows frame 116; frame 117 is the first past it, and the last one read.
    assert len(seen) == 118


@pytest.mark.parametrize(
    ("seconds", "fps", "expected"),
    [(2.0, 25, 6), (0.5, 25, 2), (0.3, 10, 1), (1 / 25, 25, 1), (5.0, 10, 15), (1.0, 2, 3)],
)
def test_short_clips_give_fewer_frames(seconds, fps, expected):
    # 0.5 s: ticks 0 and 1/3 come before the end; 1 frame of 1/25 s: only tick 0.
    # 1 s at 2 fps: frames at 0 and 0.5, ticks 0, 1/3, 2/3 < 1.0.
    clip = sv.make_clip(photo_index=1, seconds=seconds, fps=fps, size=(256, 144))
    assert len(PROFILE.normalize(clip)) == expected


def test_single_frame_clip_gives_one_frame():
    clip = sv.make_clip(photo_index=2, frames=1, fps=25, size=(256, 144), mark_frames=True)
    frames = PROFILE.normalize(clip)
    assert len(frames) == 1 and read_mark(frames[0], *MARK_16_9) == 0


@pytest.mark.parametrize("container", ["mp4", "mkv"])
def test_variable_frame_rate_uses_timestamps(container):
    # Frame i is shown from times[i]; frame 4 starts exactly on tick 3 (1 s).
    times = [0, 0.1, 0.35, 0.4, 1.0, 1.25, 1.9]
    clip = make_vfr_clip(times, end=2.1, size=(256, 144), container=container)
    frames = PROFILE.normalize(clip)
    # Ticks 0, 1/3, 2/3, 1, 4/3, 5/3, 2 (2 < 2.1 = end; 7/3 is past it).
    assert [read_mark(f, *MARK_16_9) for f in frames] == [0, 1, 3, 4, 5, 5, 6]
    # The clip's end is the last frame's time plus its duration: ending at 1.95 s drops tick 2.
    shorter = make_vfr_clip(times, end=1.95, size=(256, 144), container=container)
    assert len(PROFILE.normalize(shorter)) == 6


def test_letterbox_pads_with_black(frames6: list[np.ndarray], stream6: bytes):
    # 4:3 into 256x144: the picture is 192x144, centred, black bars of 32 columns left and right.
    frame = frames6[3]
    assert frame[:, :32].max() == 0 and frame[:, 224:].max() == 0
    assert frame[:, 32:224].mean() > 40
    decoded = PROFILE.decode(stream6).frames[3]
    assert decoded[:, :30].max() <= 12 and decoded[:, 226:].max() <= 12  # black after H.264, near exactly
    # Portrait 3:4 -> 108x144 with 74-column bars.
    portrait = PROFILE.normalize(sv.make_clip(photo_index=5, seconds=0.4, size=(240, 320)))[0]
    assert portrait[:, :74].max() == 0 and portrait[:, 182:].max() == 0
    assert portrait[:, 74:182].mean() > 40


@pytest.mark.parametrize("rotation", [90, 180, 270])
def test_rotation_metadata_is_applied(rotation):
    rotated = sv.make_clip(photo_index=4, seconds=0.7, size=(320, 240), rotation=rotation)
    with av.open(io.BytesIO(rotated)) as container:
        frame = next(container.decode(video=0))
        stored = (frame.width, frame.height)
        assert frame.rotation % 360 == rotation  # reported in -180..180
    assert stored == ((240, 320) if rotation % 180 else (320, 240))
    upright = PROFILE.normalize(sv.make_clip(photo_index=4, seconds=0.7, size=(320, 240)))
    frames = PROFILE.normalize(rotated)
    assert len(frames) == len(upright) == 3
    difference = np.abs(frames[1].astype(int) - upright[1]).mean()
    assert difference < 4, difference
    # Ignoring the matrix would show the picture turned: very different.
    turned = np.abs(np.rot90(frames[1], 2).astype(int) - upright[1]).mean()
    assert turned > 5 * difference + 10


def test_other_containers_and_codecs():
    frames = PROFILE.normalize(sv.make_clip(photo_index=6, seconds=1.0, codec="mpeg4", container="avi"))
    assert len(frames) == 3
    frames = PROFILE.normalize(sv.make_clip(photo_index=6, seconds=1.0, container="mkv", motion="zoom"))
    assert len(frames) == 3


# --- output: MP4 and prompts ----------------------------------------------------------------------------


def test_to_mp4_remuxes_to_the_same_frames(stream6: bytes):
    mp4 = PROFILE.to_mp4(stream6)
    decoded = PROFILE.decode(stream6).frames
    with av.open(io.BytesIO(mp4)) as container:
        video = container.streams.video[0]
        assert container.format.name.startswith("mov,mp4")
        assert video.codec_context.name == "h264" and video.average_rate == 3
        frames = list(container.decode(video))
        assert [frame.time for frame in frames] == pytest.approx([k / 3 for k in range(15)])
        pictures = [frame.to_ndarray(format="rgb24", interpolation=avc.CONVERT) for frame in frames]
    assert len(pictures) == 15
    assert all(np.array_equal(a, b) for a, b in zip(pictures, decoded))
    # Remuxed, not re-encoded: every slice of the stream is in the file.
    assert all(payload(unit) in mp4 for _, unit in nal_units(stream6)[::97])


def test_to_mp4_of_model_outputs(stream6: bytes):
    # Only slices are written: a stray parameter set cannot make the file unplayable.
    polluted = stream6[:1000] + AvcProfile(width=1920, height=1088).header + stream6[1000:]
    with av.open(io.BytesIO(PROFILE.to_mp4(polluted))) as container:
        frames = list(container.decode(video=0))
    assert len(frames) == 15 and (frames[0].width, frames[0].height) == (256, 144)
    for nothing in (b"", b"\x00\x00\x01\x67garbage", PROFILE.cut_after_units(stream6, 0)):
        with pytest.raises(InvalidMediaError) as caught:
            PROFILE.to_mp4(nothing)
        assert caught.value.reason == "invalid-stream"


@pytest.mark.parametrize("k", [0, 1, 5, 14, 15, 20])
def test_cut_after_units_ends_at_a_frame_boundary(stream6: bytes, k: int):
    prefix = PROFILE.cut_after_units(stream6, k)
    assert stream6.startswith(prefix)
    assert PROFILE.frame_count(prefix) == min(k, 15)
    rest = stream6[len(prefix) :]
    if k < 15:
        assert starts_frame(nal_units(rest)[0][1])  # the cut is right before frame k+1's first slice
    else:
        assert rest == b""
    decoded = PROFILE.decode(prefix)
    assert decoded.valid_frames == len(decoded.frames) == min(k, 15)
    assert decoded.complete == (k > 0)


# --- bad inputs -------------------------------------------------------------------------------------------


def _undecodable(container: str) -> bytes:
    """A real clip with its video packets overwritten by 0xFF: the container is intact, no frame decodes."""
    clip = bytearray(sv.make_clip(photo_index=8, seconds=0.5, container=container))
    with av.open(io.BytesIO(bytes(clip))) as source:
        for packet in source.demux(video=0):
            if packet.size:
                data = bytes(packet)
                start = clip.find(data)
                clip[start : start + len(data)] = b"\xff" * len(data)
    return bytes(clip)


def _video_track_without_frames() -> bytes:
    """A Matroska file with a video track and an audio track, and only audio packets."""
    buffer = io.BytesIO()
    with av.open(buffer, "w", format="matroska") as output:
        video = output.add_stream("libx264", rate=25)
        video.width, video.height = 64, 48
        audio = output.add_stream("pcm_s16le", rate=8000, layout="mono")
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 800), np.int16), format="s16", layout="mono")
        frame.sample_rate, frame.pts = 8000, 0
        output.mux(audio.encode(frame))
        output.mux(audio.encode(None))
    return buffer.getvalue()


def _png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 48), "red").save(buffer, "PNG")
    return buffer.getvalue()


BAD_INPUTS = {
    "empty": (lambda: b"", "empty"),
    "text": (lambda: b"this is not a video, just some text\n" * 20, "unreadable"),
    "random-bytes": (lambda: np.random.default_rng(1).bytes(4000), "unreadable"),
    "mp4-cut-in-half": (lambda: (lambda c: c[: len(c) // 2])(sv.make_clip(seconds=1)), "unreadable"),
    "audio-m4a": (lambda: make_audio_only(container="m4a"), "no-video-stream"),
    "audio-wav": (lambda: make_audio_only(container="wav"), "no-video-stream"),
    "mp4-undecodable": (lambda: _undecodable("mp4"), "truncated"),
    "mkv-undecodable": (lambda: _undecodable("mkv"), "truncated"),
    "mkv-empty-video-track": (_video_track_without_frames, "no-frames"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_inputs_raise_invalid_media_error(case: str, tmp_path):
    make, reason = BAD_INPUTS[case]
    data = make()
    with pytest.raises(InvalidMediaError) as caught:
        PROFILE.encode(data)
    assert caught.value.reason == reason, caught.value
    assert caught.value.message  # says what to do, not just a code
    path = tmp_path / "input.mp4"  # not .bin: FFmpeg reads any *.bin as "binary text" art
    path.write_bytes(data)
    with pytest.raises(InvalidMediaError) as caught:
        PROFILE.normalize(path)
    assert caught.value.reason == reason


def test_missing_file_is_unreadable(tmp_path):
    with pytest.raises(InvalidMediaError) as caught:
        PROFILE.normalize(tmp_path / "missing.mp4")
    assert caught.value.reason == "unreadable"


def test_a_still_image_is_a_one_frame_video():
    assert len(PROFILE.normalize(_png())) == 1  # FFmpeg reads PNG: not an error


def test_too_many_pixels_is_checked_before_decoding(monkeypatch):
    clip = sv.make_clip(photo_index=9, seconds=0.5, size=(320, 240))

    def no_decoding(*args):
        raise AssertionError("decoded before checking the declared size")
        yield  # pragma: no cover

    monkeypatch.setattr(avc, "_decoded_frames", no_decoding)
    with pytest.raises(InvalidMediaError) as caught:
        PROFILE.normalize(clip, max_pixels=320 * 240 - 1)
    assert caught.value.reason == "too-many-pixels"
    # The default limit is Pillow's decompression-bomb limit.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(InvalidMediaError) as caught:
        PROFILE.encode(clip)
    assert caught.value.reason == "too-many-pixels"


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(min_size=1, max_size=3000))
def test_arbitrary_bytes_never_escape_as_raw_exceptions(data: bytes):
    try:
        frames = PROFILE.normalize(data)
    except InvalidMediaError as error:
        assert error.reason in {"unreadable", "no-video-stream", "truncated", "no-frames", "too-many-pixels"}
    else:
        assert 1 <= len(frames) <= 15


# --- decoding model outputs ----------------------------------------------------------------------------


def test_tolerant_decode_of_corrupted_streams(stream6: bytes):
    rng = np.random.default_rng(0)
    valid = []
    for _ in range(25):
        corrupted = bytearray(stream6)
        for _ in range(int(rng.integers(1, 20))):
            corrupted[int(rng.integers(0, len(corrupted)))] = int(rng.integers(0, 256))
        decoded = PROFILE.decode(bytes(corrupted))
        assert decoded.valid_frames <= len(decoded.frames) <= PROFILE.max_frames + 2
        assert all(f.shape == (144, 256, 3) for f in decoded.frames)
        valid.append(decoded.valid_frames)
        with pytest.raises(InvalidMediaError) as caught:
            PROFILE.decode(bytes(corrupted), strict=True)
        assert caught.value.reason == "invalid-stream"
    assert max(valid) < 15  # every corruption is noticed somewhere


@pytest.mark.parametrize("fraction", [0.05, 0.3, 0.77, 0.999])
def test_tolerant_decode_of_truncated_streams(stream6: bytes, fraction: float):
    cut = stream6[: int(len(stream6) * fraction)]
    decoded = PROFILE.decode(cut)
    announced = PROFILE.frame_count(cut)
    assert decoded.expected_frames == announced
    # The last frame is incomplete (concealed), the ones before it are clean.
    assert len(decoded.frames) == announced
    assert decoded.valid_frames == announced - 1 and not decoded.complete
    with pytest.raises(InvalidMediaError):
        PROFILE.decode(cut, strict=True)


def test_strict_decode_accepts_real_streams_and_rejects_foreign_units(stream6: bytes):
    decoded = PROFILE.decode(stream6, strict=True)
    assert decoded.complete and len(decoded.frames) == 15
    # A parameter set inside the stream (here one declaring another picture size) is not allowed;
    # tolerant decoding drops it and still decodes the real frames.
    other_sps = AvcProfile(width=1920, height=1088).header
    polluted = stream6[:1000] + other_sps + stream6[1000:]
    assert PROFILE.decode(polluted).frames[0].shape == (144, 256, 3)
    with pytest.raises(InvalidMediaError, match="NAL unit types"):
        PROFILE.decode(polluted, strict=True)
    with pytest.raises(InvalidMediaError):
        PROFILE.decode(b"junk" + stream6, strict=True)
    with pytest.raises(InvalidMediaError):
        PROFILE.decode(b"", strict=True)
    empty = PROFILE.decode(b"")
    assert empty.frames == [] and empty.valid_frames == empty.expected_frames == 0 and not empty.complete


def test_tolerant_decode_bounds_its_work(stream6: bytes):
    # 100 copies of the clip announce 1500 frames; the check parses max_frames, and the file keeps those.
    decoded = PROFILE.decode(stream6 * 100)
    assert decoded.expected_frames == 1500
    assert len(decoded.frames) == decoded.facts["frames_in_file"] == PROFILE.max_frames and not decoded.complete
    # Inputs beyond max_stream_bytes are cut before anything is parsed.
    noise = np.random.default_rng(2).bytes(3 * PROFILE.max_stream_bytes)
    assert len(PROFILE.decode(noise).frames) <= PROFILE.max_frames + 2


# Start codes, NAL headers (IDR slice, slice, SPS, PPS) and random payloads: the decoder's worst case.
_nal_soup = st.lists(
    st.tuples(
        st.sampled_from([b"\x00\x00\x01", b"\x00\x00\x00\x01"]),
        st.sampled_from([b"\x65", b"\x41", b"\x67", b"\x68"]),
        st.binary(max_size=40),
    ),
    max_size=60,
).map(lambda parts: b"".join(a + b + c for a, b, c in parts))


@settings(max_examples=60, deadline=None)
@given(data=st.one_of(st.binary(max_size=2000), _nal_soup))
def test_tolerant_decode_never_raises(data: bytes):
    decoded = PROFILE.decode(data)
    assert decoded.valid_frames <= len(decoded.frames) <= PROFILE.max_frames + 2
    assert decoded.expected_frames == PROFILE.frame_count(data)


# --- the sample clips themselves --------------------------------------------------------------------------


def test_sample_clips_are_deterministic_and_varied():
    assert sv.make_clip(photo_index=3, seconds=0.5, container="mkv") == sv.make_clip(
        photo_index=3, seconds=0.5, container="mkv"
    )
    clips = list(sv.sample_clips(3, seed=0))
    assert len({key for key, _ in clips}) == 3
    shapes = set()
    for _, clip in clips:
        with av.open(io.BytesIO(clip)) as container:
            video = container.streams.video[0]
            shapes.add((video.width, video.height, video.average_rate))
            assert 2 <= float(video.duration * video.time_base) <= 7.1
        assert 6 <= len(PROFILE.normalize(clip)) <= 15
    assert len(shapes) > 1
