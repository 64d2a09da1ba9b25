"""JPEG profile: byte-exact restore, independent decoding, normalisation rules, bad input, tolerant decode."""

from __future__ import annotations

import io
import struct
import warnings
import zlib

import av
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image, JpegImagePlugin

from shared.codec.errors import InvalidMediaError
from shared.codec.jpeg.profile import JpegProfile
from shared.samples.photos import sample_photo_paths

PROFILES = ["jpeg-256-q25", "jpeg-64-q25", "jpeg-128-q50-444", "jpeg-256-q25-422-ri4", "jpeg-64-q25-ri0"]
PHOTOS = sample_photo_paths()


def pillow_full_encode(profile: JpegProfile, image: Image.Image) -> bytes:
    """What a user gets from Pillow directly, written independently of the profile code."""
    buffer = io.BytesIO()
    options = {"restart_marker_blocks": profile.restart_interval} if profile.restart_interval else {}
    image.save(buffer, "JPEG", quality=profile.quality, subsampling=profile.subsampling, **options)
    return buffer.getvalue()


def ffmpeg_decode(jpeg: bytes) -> np.ndarray:
    with av.open(io.BytesIO(jpeg), format="jpeg_pipe") as container:
        return next(container.decode(video=0)).to_ndarray(format="rgb24")


@pytest.fixture(scope="module")
def paper() -> JpegProfile:
    return JpegProfile()


@pytest.mark.parametrize("name", PROFILES)
def test_restore_is_byte_identical_to_pillow_and_ffmpeg_agrees(name: str) -> None:
    profile = JpegProfile.from_name(name)
    for path in PHOTOS:
        normalised = profile.normalize_image(path)
        stream = profile.encode(path)
        restored = profile.restore(stream)
        assert restored == pillow_full_encode(profile, normalised), path.name
        assert not stream.startswith(b"\xff\xd8") and not stream.endswith(b"\xff\xd9")
        ours = np.asarray(profile.decode(stream, strict=True).image, dtype=np.int16)
        with Image.open(io.BytesIO(restored)) as reference:
            assert np.array_equal(ours, np.asarray(reference.convert("RGB"), dtype=np.int16))
        theirs = ffmpeg_decode(restored).astype(np.int16)
        assert theirs.shape == ours.shape == (profile.size, profile.size, 3)
        # Two independent decoders differ only in IDCT/upsampling rounding.
        assert np.abs(theirs - ours).mean() < 3.0, path.name


def test_paper_profile_layout(paper: JpegProfile) -> None:
    assert paper.name == "jpeg-256-q25" and paper.total_mcus == 256
    header = paper.header
    markers = []
    position = 2
    while position < len(header):
        markers.append(header[position + 1])
        position += 2 + int.from_bytes(header[position + 2:position + 4], "big")
    assert header[:2] == b"\xff\xd8"
    assert markers == [0xE0, 0xDB, 0xDB, 0xC0, 0xC4, 0xC4, 0xC4, 0xC4, 0xDD, 0xDA]
    stream = paper.encode(PHOTOS[0])
    restarts = [stream[i + 1] for i in range(len(stream) - 1) if stream[i] == 0xFF and 0xD0 <= stream[i + 1] <= 0xD7]
    assert restarts == [0xD0 + i % 8 for i in range(255)]
    assert stream.count(b"\xff\xd7") == 31


def test_header_is_the_same_for_every_image(paper: JpegProfile) -> None:
    headers = {pillow_full_encode(paper, paper.normalize_image(p))[:len(paper.header)] for p in PHOTOS}
    assert headers == {paper.header}


def test_profile_names_and_json_round_trip() -> None:
    for name in PROFILES:
        profile = JpegProfile.from_name(name)
        assert profile.name == name
        data = profile.to_json()
        assert data["kind"] == "jpeg" and bytes.fromhex(data["header"]) == profile.header
        assert JpegProfile.from_json(data) == profile
    with pytest.raises(ValueError, match="not a JPEG profile name"):
        JpegProfile.from_name("jpeg-256")
    with pytest.raises(ValueError, match="subsampling"):
        JpegProfile(subsampling="4:1:1")
    with pytest.raises(ValueError, match="multiple of 8"):
        JpegProfile(size=100)


def test_recorded_header_wins_over_the_computed_one(paper: JpegProfile) -> None:
    data = paper.to_json()
    header = bytearray(paper.header)
    header[20] ^= 1  # inside the JFIF segment: a recorded header from some other libjpeg build
    data["header"] = bytes(header).hex()
    with pytest.warns(UserWarning, match="recorded header"):
        recorded = JpegProfile.from_json(data)
    assert recorded.restore(b"") == bytes(header) + b"\xff\xd9"


# ---- normalisation ---------------------------------------------------------------------------
def encode_png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG" if image.mode not in ("CMYK", "F", "I", "YCbCr", "LAB", "HSV") else "TIFF")
    return buffer.getvalue()


@pytest.mark.parametrize("mode", ["1", "L", "LA", "P", "PA", "RGB", "RGBA", "CMYK", "I;16", "I", "F", "YCbCr", "LAB",
                                  "HSV"])
def test_every_mode_normalises_to_rgb(mode: str) -> None:
    profile = JpegProfile.from_name("jpeg-64-q25")
    source = Image.open(PHOTOS[0]).convert("RGB").resize((96, 80))
    image = source.convert(mode) if mode not in ("I;16", "I", "F") else source.convert("L").convert(mode)
    result = profile.normalize_image(image)
    assert result.mode == "RGB" and result.size == (64, 64)
    assert profile.decode(profile.encode(image), strict=True).complete


def test_alpha_is_composited_over_white() -> None:
    profile = JpegProfile.from_name("jpeg-64-q25")
    transparent = Image.new("RGBA", (80, 80), (255, 0, 0, 0))
    assert np.asarray(profile.normalize_image(transparent)).min() == 255
    palette = Image.new("P", (80, 80), 0)
    palette.putpalette([0, 0, 0] * 256)
    palette.info["transparency"] = 0
    assert np.asarray(profile.normalize_image(encode_png(palette))).min() == 255
    half = Image.new("LA", (80, 80), (0, 128))
    assert abs(int(np.asarray(profile.normalize_image(half)).mean()) - 127) <= 1


def test_sixteen_bit_greyscale_maps_the_full_range() -> None:
    profile = JpegProfile.from_name("jpeg-64-q25")
    values = np.full((64, 64), 65535, dtype=np.uint16)
    values[:, 32:] = 32896  # 128 * 257
    result = np.asarray(profile.normalize_image(Image.fromarray(values)))
    assert result[:, :30].min() == 255 and abs(int(result[:, 40:].mean()) - 128) <= 1


def test_exif_orientation_is_applied() -> None:
    profile = JpegProfile.from_name("jpeg-64-q25")
    image = Image.new("RGB", (64, 64), (0, 0, 255))
    image.paste((255, 0, 0), (0, 0, 64, 16))  # red stripe on top
    exif = Image.Exif()
    exif[0x0112] = 6  # stored rotated: viewers turn it 90 degrees clockwise
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=95, exif=exif)
    upright = np.asarray(profile.normalize_image(buffer.getvalue()), dtype=np.int16)
    assert upright[:, -8:, 0].mean() > 200 and upright[:8, :32, 2].mean() > 200  # stripe now on the right


def test_center_square_crop_of_a_wide_image() -> None:
    profile = JpegProfile.from_name("jpeg-64-q25")
    wide = Image.new("RGB", (300, 100), (255, 0, 0))
    wide.paste((0, 255, 0), (100, 0, 200, 100))  # the center square is green
    result = np.asarray(profile.normalize_image(wide), dtype=np.int16)
    assert result[:, :, 1].min() > 250 and result[:, :, 0].max() < 5


def test_large_jpeg_sources_use_draft_mode(monkeypatch: pytest.MonkeyPatch) -> None:
    profile = JpegProfile.from_name("jpeg-64-q25")
    calls = []
    original = JpegImagePlugin.JpegImageFile.draft
    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "draft",
                        lambda self, mode, size: calls.append(size) or original(self, mode, size))
    big = io.BytesIO()
    Image.open(PHOTOS[0]).convert("RGB").save(big, "JPEG", quality=95)  # 512x512, 8x the target
    drafted = np.asarray(profile.normalize_image(big.getvalue()), dtype=np.int16)
    assert calls == [(64, 64)]
    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "draft", original)
    direct = np.asarray(profile.normalize_image(Image.open(io.BytesIO(big.getvalue())).convert("RGB")), dtype=np.int16)
    assert np.abs(drafted - direct).mean() < 4  # DCT-domain downscale looks the same


def huge_png(width: int, height: int) -> bytes:
    """A tiny PNG file that declares a huge canvas (a decompression bomb)."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    rows = zlib.compress(b"\x00" * (1 + width // 8) * 4)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)) + \
        chunk(b"IDAT", rows) + chunk(b"IEND", b"")


def truncated_jpeg() -> bytes:
    buffer = io.BytesIO()
    Image.open(PHOTOS[0]).convert("RGB").save(buffer, "JPEG", quality=90)
    return buffer.getvalue()[:4000]


@pytest.mark.parametrize("source, reason", [
    (b"", "empty"),
    (b"this is not an image at all", "unreadable"),
    (b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, "unreadable"),
    ("/nonexistent/photo.jpg", "unreadable"),
    (huge_png(20000, 20000), "too-many-pixels"),
    (huge_png(12000, 12000), "too-many-pixels"),  # between Pillow's warning and its error threshold
    (truncated_jpeg(), "truncated"),
])
def test_bad_inputs_raise_a_clear_error(paper: JpegProfile, source: bytes | str, reason: str) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing slips through as a mere warning
        with pytest.raises(InvalidMediaError) as error:
            paper.encode(source)
    assert error.value.reason == reason
    assert str(error.value).startswith(reason)


def test_pixel_limit_is_a_parameter(paper: JpegProfile) -> None:
    with pytest.raises(InvalidMediaError, match="above the limit of 1000"):
        paper.encode(PHOTOS[0], max_pixels=1000)


# ---- tolerant and strict decoding --------------------------------------------------------------
@pytest.fixture(scope="module")
def photo_stream(paper: JpegProfile) -> bytes:
    return paper.encode(PHOTOS[3])


def test_empty_stream_decodes_to_grey(paper: JpegProfile) -> None:
    result = paper.decode(b"")
    assert result.valid_mcus == 0 and not result.complete
    assert np.abs(np.asarray(result.image, dtype=np.int16) - 128).max() <= 1


def test_prompt_cut_matches_the_authors_definition(paper: JpegProfile, photo_stream: bytes) -> None:
    full = paper.restore(photo_stream)
    for ratio in (0.0, 0.25, 0.5, 0.75, 1.0):
        prompt = paper.prompt(photo_stream, ratio)
        # the authors: cut the full file right after the int(32*r)-th FF D7
        end = len(paper.header)
        for _ in range(int(32 * ratio) if ratio < 1 else 0):
            end = full.index(b"\xff\xd7", end) + 2
        expected = full[len(paper.header):end] if ratio < 1 else photo_stream
        assert prompt == expected, ratio
        assert paper.prompt_units(ratio) == min(256, 8 * int(32 * ratio))
        decoded = paper.decode(prompt)
        assert decoded.valid_mcus == paper.prompt_units(ratio)
        assert decoded.complete == (ratio == 1.0)
    with pytest.raises(ValueError, match="restart marker"):
        JpegProfile.from_name("jpeg-256-q25-ri4").cut_after_units(photo_stream, 6)


def test_prompt_keeps_the_top_of_the_image(paper: JpegProfile, photo_stream: bytes) -> None:
    full = np.asarray(paper.decode(photo_stream).image, dtype=np.int16)
    half = np.asarray(paper.decode(paper.prompt(photo_stream, 0.5)).image, dtype=np.int16)
    assert np.array_equal(half[:120], full[:120])
    assert np.abs(half[136:] - 128).max() <= 1


def test_strict_decoding_raises_on_any_problem(paper: JpegProfile, photo_stream: bytes) -> None:
    bad = bytearray(photo_stream)
    bad[100:140] = b"\x00" * 40
    for stream in (photo_stream[:-10], bytes(bad), photo_stream + b"\xff\xd0\x12", b"\x00\x01\x02"):
        with pytest.raises(InvalidMediaError, match="invalid-stream"):
            paper.decode(stream, strict=True)
        assert not paper.decode(stream).complete


@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_tolerant_decoding_never_raises(paper: JpegProfile, photo_stream: bytes, data: st.DataObject) -> None:
    stream = bytearray(photo_stream)
    for _ in range(data.draw(st.integers(0, 20))):
        stream[data.draw(st.integers(0, len(stream) - 1))] = data.draw(st.integers(0, 255))
    stream = bytes(stream[:data.draw(st.integers(0, len(stream)))]) + data.draw(st.binary(max_size=64))
    result = paper.decode(stream)
    assert result.image.size == (256, 256) and result.image.mode == "RGB"
    assert 0 <= result.valid_mcus <= 256
    if result.complete:
        assert paper.decode(stream, strict=True).valid_mcus == 256


@settings(max_examples=40, deadline=None)
@given(noise=st.binary(min_size=0, max_size=20000))
def test_random_bytes_never_crash_the_decoder(paper: JpegProfile, noise: bytes) -> None:
    result = paper.decode(noise)
    assert result.valid_mcus <= 256 and result.image.size == (256, 256)


def test_adobe_rgb_sources_are_converted_to_srgb() -> None:
    profile = JpegProfile.from_name("jpeg-64-q25")
    rocket = next(p for p in PHOTOS if p.name == "rocket.jpg")  # ships with an Adobe RGB (1998) profile
    with Image.open(rocket) as image:
        assert b"Adobe RGB" in image.info["icc_profile"]
        untagged = image.convert("RGB")
        untagged.info = {}
    converted = np.asarray(profile.normalize_image(rocket), dtype=np.int16)
    ignored = np.asarray(profile.normalize_image(untagged), dtype=np.int16)

    def saturation(pixels: np.ndarray) -> float:
        return float((pixels.max(axis=2) - pixels.min(axis=2)).mean())

    # Adobe RGB's primaries are wider: the same colours need more saturated sRGB values.
    assert saturation(converted) > saturation(ignored) + 1


def test_alpha_sources_keep_their_colour_profile() -> None:
    profile = JpegProfile.from_name("jpeg-64-q25")
    rocket = next(p for p in PHOTOS if p.name == "rocket.jpg")
    with Image.open(rocket) as image:
        icc = image.info["icc_profile"]
        rgba = image.convert("RGBA")
    rgba.info = {"icc_profile": icc}
    plain = rgba.copy()
    plain.info = {}
    converted = np.asarray(profile.normalize_image(rgba), dtype=np.int16)
    ignored = np.asarray(profile.normalize_image(plain), dtype=np.int16)
    assert np.abs(converted - ignored).mean() > 2  # the profile was applied despite the alpha channel


def test_strict_decoding_rejects_a_marker_after_the_last_interval(paper: JpegProfile, photo_stream: bytes) -> None:
    with pytest.raises(InvalidMediaError, match="beyond the image"):
        paper.decode(photo_stream + b"\xff\xd7", strict=True)


def test_prompt_ratios_on_other_restart_intervals(photo_stream: bytes) -> None:
    every_third = JpegProfile.from_name("jpeg-256-q25-ri3")
    stream = every_third.encode(PHOTOS[3])
    assert every_third.prompt(stream, 1.0) == stream
    assert every_third.prompt_units(0.5) == 126  # 128 MCUs, down to whole intervals of 3
    small = JpegProfile.from_name("jpeg-64-q25")  # 16 MCUs: a row of 4 per quarter
    assert [small.prompt_units(r) for r in (0.0, 0.25, 0.5, 0.75, 1.0)] == [0, 4, 8, 12, 16]
    assert JpegProfile.from_name("jpeg-64-q25-ri5").prompt_units(0.75) == 10
    with pytest.raises(ValueError, match="no restart markers"):
        JpegProfile.from_name("jpeg-64-q25-ri0").prompt_units(0.5)
