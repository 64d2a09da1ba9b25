"""The codec interface: names and records resolve to profiles, every codec offers the whole interface, and
callers can use any profile the same way (what a third codec must pass too)."""

from __future__ import annotations

import numpy as np
import pytest

from shared.codec.avc.profile import AvcProfile
from shared.codec.errors import InvalidMediaError
from shared.codec.jpeg.profile import JpegProfile
from shared.codec.profile import ByteGrammar, CodecProfile, view
from shared.codec.registry import CODECS, MODALITIES, get_profile, profile_from_json
from shared.codec.token_constraint import TokenConstraint
from shared.format.tokenizer import ByteTokenizer
from shared.samples.clips import sample_clip
from shared.samples.photos import sample_crop

# Small profiles of every codec, and a source each can read.
SMALL = {"jpeg": ("jpeg-64-q25", lambda i: sample_crop(i)[1]),
         "avc": ("avc-64x48-3fps-2s-qp37", lambda i: sample_clip(i)[1])}


def test_default_profiles_are_the_papers() -> None:
    image, video = get_profile(MODALITIES["image"].profile), get_profile(MODALITIES["video"].profile)
    assert image == JpegProfile(size=256, quality=25, subsampling="4:2:0", restart_interval=1)
    assert video == AvcProfile(width=256, height=144, fps=3, seconds=5, qp=37)
    assert (MODALITIES["image"].vocab_size, MODALITIES["image"].seq_len) == (320, 12288)
    assert (MODALITIES["video"].vocab_size, MODALITIES["video"].seq_len) == (1024, 32768)
    assert {get_profile(defaults.profile).modality for defaults in MODALITIES.values()} == set(MODALITIES)


@pytest.mark.parametrize("name", ["jpeg-256-q25", "jpeg-512-q25", "jpeg-64-q90-444-ri2", "avc-256x144-3fps-5s-qp37",
                                  "avc-320x180-6fps-2.5s-qp30"])
def test_names_and_records_round_trip(name: str) -> None:
    profile = get_profile(name)
    assert profile.name == name
    record = profile.to_json()
    assert profile_from_json(record) == profile and profile_from_json(record).header == profile.header


@pytest.mark.parametrize("name, message", [("png-256", "unknown profile"), ("jpeg-256-q25-411", "not a JPEG profile"),
                                           ("avc-256x144", "not an AVC profile")])
def test_bad_names(name: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        get_profile(name)
    with pytest.raises(ValueError, match="not a codec profile record"):
        profile_from_json({"kind": "gif"})


def test_every_registered_codec_is_small_enough_for_a_test_here() -> None:
    assert set(SMALL) == set(CODECS), "a new codec adds its small profile and a source to SMALL"


@pytest.mark.parametrize("kind", sorted(SMALL))
def test_every_codec_offers_the_whole_interface(kind: str) -> None:
    """One code path for every codec: what preprocess, train and the tools ask of a profile."""
    name, source = SMALL[kind]
    profile = get_profile(name)
    assert isinstance(profile, CodecProfile) and profile.kind == kind and name.startswith(kind + "-")
    assert profile.modality in MODALITIES and profile.file_suffix.startswith(".") and profile.sheet_cell > 0
    assert profile_from_json(profile.to_json()) == profile

    pictures = profile.normalize(source(0), max_pixels=None)
    assert pictures and all(p.dtype == np.uint8 and p.ndim == 3 and p.shape[2] == 3 for p in pictures)
    stream = profile.encode_pictures(pictures)
    assert stream == profile.encode(source(0))
    assert profile.restore(stream).startswith(profile.header) and not stream.startswith(profile.header)

    decoded = profile.decode(stream, strict=True)
    assert decoded.complete and decoded.valid_units == decoded.total_units > 0
    assert len(decoded.pictures) == len(pictures) and decoded.pictures[0].shape == pictures[0].shape
    assert decoded.facts["clean"] is True and profile.raw_pixel_bytes(stream) == sum(p.size for p in pictures)
    shown = view(profile, stream)
    assert shown.file == profile.viewable(stream) and shown.decoded.complete

    # prompts: a prefix in whole units, and every prefix a grammar accepts
    half = profile.prompt(stream, 0.5)
    assert stream.startswith(half) and half == profile.cut_after_units(stream, profile.prompt_units(0.5))
    assert profile.prompt(stream, 0.0) == b"" and profile.prompt(stream, 1.0) == stream
    assert 0 < profile.prompt_units(0.5) < profile.total_units
    grammar = profile.grammar()
    assert isinstance(grammar, ByteGrammar)
    state = grammar.start()
    for byte in stream:
        state = grammar.step(state, byte)
        assert state is not None

    # the codec's token boundary: a prompt cut tokenizes to a prefix of the whole stream's tokens
    tokenizer = ByteTokenizer.train([profile.encode(source(i)) for i in range(3)], 300, boundary=profile.token_boundary)
    assert list(tokenizer.encode(stream)[:len(tokenizer.encode(half))]) == list(tokenizer.encode(half))
    constraint = TokenConstraint(grammar, tokenizer.token_bytes, tokenizer.eos_id)
    assert constraint.feed(constraint.start(), stream) is not None

    with pytest.raises(InvalidMediaError):
        profile.encode(b"not media at all")
    with pytest.raises(InvalidMediaError):
        profile.decode(stream[: len(stream) // 3] + b"\x00\x00\x01\x41garbage", strict=True)
