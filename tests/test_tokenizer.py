"""Byte-level BPE: lossless on any bytes, standard tokenizer.json, merges stop at structure boundaries."""

from __future__ import annotations

import random

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer

from shared.codec.avc.profile import AvcProfile
from shared.codec.jpeg.profile import JpegProfile
from shared.format.tokenizer import BOS, EOS, ByteTokenizer, bytes_to_text, text_to_bytes
from shared.samples.photos import sample_crops

START_CODES = (b"\x00\x00\x01", b"\x00\x00\x00\x01")


@pytest.fixture(scope="module")
def jpeg_streams() -> list[bytes]:
    profile = JpegProfile.from_name("jpeg-128-q25")
    return [profile.encode(png) for _, png in sample_crops(40, seed=1)]


@pytest.fixture(scope="module")
def jpeg_tokenizer(jpeg_streams: list[bytes]) -> ByteTokenizer:
    return ByteTokenizer.train(jpeg_streams, vocab_size=320, boundary=JpegProfile.token_boundary)


def annexb_like_streams(count: int, seed: int = 0) -> list[bytes]:
    """NAL-unit-shaped data: start codes followed by a header byte and skewed payload bytes."""
    rng = random.Random(seed)
    streams = []
    for _ in range(count):
        units = [rng.choice(START_CODES) + bytes([rng.choice((0x65, 0x41, 0x21))])
                 + bytes(rng.choice(b"\x00\x12\x34\x80\xe0\xff" + bytes(range(256))) for _ in range(rng.randint(5, 60)))
                 for _ in range(rng.randint(20, 80))]
        streams.append(b"".join(units))
    return streams


def test_vocabulary_layout(jpeg_tokenizer: ByteTokenizer, tmp_path) -> None:
    assert jpeg_tokenizer.vocab_size == 320
    assert (jpeg_tokenizer.bos_id, jpeg_tokenizer.eos_id) == (318, 319)
    assert [jpeg_tokenizer.token_bytes[b] for b in range(256)] == [bytes([b]) for b in range(256)]
    assert all(len(jpeg_tokenizer.token_bytes[i]) >= 2 for i in range(256, 318))
    restart_markers = {bytes([0xFF, 0xD0 + k]) for k in range(8)}
    assert restart_markers <= set(jpeg_tokenizer.token_bytes[256:318])  # each marker became one token
    path = tmp_path / "tokenizer.json"
    jpeg_tokenizer.save(path)
    plain = Tokenizer.from_file(str(path))  # a stock tokenizers load, nothing of ours
    assert plain.get_vocab_size() == 320 and plain.token_to_id(BOS) == 318 and plain.token_to_id(EOS) == 319
    data = b"\xff\xd0\x12\x34\xff\x00"
    assert plain.encode(bytes_to_text(data)).ids == jpeg_tokenizer.encode(data).tolist()
    assert text_to_bytes(plain.decode(plain.encode(bytes_to_text(data)).ids)) == data


def test_training_is_deterministic(jpeg_streams: list[bytes], jpeg_tokenizer: ByteTokenizer) -> None:
    again = ByteTokenizer.train(jpeg_streams, vocab_size=320, boundary=JpegProfile.token_boundary)
    assert again.to_str() == jpeg_tokenizer.to_str()


def test_round_trip_and_compression_on_real_streams(jpeg_tokenizer: ByteTokenizer, jpeg_streams: list[bytes]) -> None:
    ids = jpeg_tokenizer.encode_batch(jpeg_streams, bos=True, eos=True)
    for stream, tokens in zip(jpeg_streams, ids):
        assert tokens.dtype == np.uint16 and tokens[0] == 318 and tokens[-1] == 319
        assert jpeg_tokenizer.decode(tokens) == stream
        assert 318 not in tokens[1:-1] and 319 not in tokens[1:-1]
    assert sum(map(len, jpeg_streams)) > 1.05 * sum(len(t) - 2 for t in ids)  # merges do shorten streams


SPECIAL_BYTES = [BOS.encode(), EOS.encode(), b"<|bos|><|eos|>", bytes(range(256)), b""]


@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=4096) | st.sampled_from(SPECIAL_BYTES))
def test_lossless_on_arbitrary_bytes(jpeg_tokenizer: ByteTokenizer, data: bytes) -> None:
    ids = jpeg_tokenizer.encode(data)
    assert jpeg_tokenizer.decode(ids) == data
    assert jpeg_tokenizer.bos_id not in ids and jpeg_tokenizer.eos_id not in ids


def test_every_byte_value_round_trips(jpeg_tokenizer: ByteTokenizer) -> None:
    everything = bytes(range(256)) * 3 + bytes(reversed(range(256)))
    assert jpeg_tokenizer.decode(jpeg_tokenizer.encode(everything)) == everything
    assert text_to_bytes(bytes_to_text(everything)) == everything
    with pytest.raises(ValueError, match="outside the byte alphabet"):
        text_to_bytes("plain ascii")
    for bad in ([-1], [5, jpeg_tokenizer.vocab_size]):
        with pytest.raises(IndexError, match="outside the vocabulary"):
            jpeg_tokenizer.decode(bad)


def test_no_merge_crosses_a_restart_marker(jpeg_tokenizer: ByteTokenizer, jpeg_streams: list[bytes]) -> None:
    for token in jpeg_tokenizer.token_bytes[256:318]:
        for k in range(len(token) - 1):
            if token[k] == 0xFF and 0xD0 <= token[k + 1] <= 0xD7:
                assert k == len(token) - 2, token.hex()  # a marker may only end a token
    profile = JpegProfile.from_name("jpeg-128-q25")
    for stream in jpeg_streams[:10]:
        full = jpeg_tokenizer.encode(stream)
        for ratio in (0.25, 0.5, 0.75, 1.0):
            prompt = jpeg_tokenizer.encode(profile.prompt(stream, ratio))
            assert np.array_equal(full[:len(prompt)], prompt)
        for mcus in range(0, profile.total_mcus + 1, 7):
            prompt = jpeg_tokenizer.encode(profile.cut_after_units(stream, mcus))
            assert np.array_equal(full[:len(prompt)], prompt)


def test_avc_merges_never_span_a_start_code() -> None:
    streams = annexb_like_streams(30)
    tokenizer = ByteTokenizer.train(streams, vocab_size=400, boundary=AvcProfile.token_boundary)
    assert tokenizer.vocab_size == 400
    for token in tokenizer.token_bytes[256:398]:
        position = token.find(b"\x00\x00\x01")
        assert position in (-1, 0) or token.startswith(b"\x00\x00\x00\x01"), token.hex()
    for stream in streams[:5]:
        full = tokenizer.encode(stream)
        assert tokenizer.decode(full) == stream
        cuts = [i for i in range(1, len(stream)) if stream[i:i + 4] == b"\x00\x00\x00\x01"
                or (stream[i:i + 3] == b"\x00\x00\x01" and stream[i - 1] != 0)]
        for cut in cuts[::5]:
            prompt = tokenizer.encode(stream[:cut])
            assert np.array_equal(full[:len(prompt)], prompt)


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="at least 258"):
        ByteTokenizer.train([b"abc"], vocab_size=100, boundary=JpegProfile.token_boundary)
    with pytest.raises(ValueError, match="not a codec-LM tokenizer"):
        ByteTokenizer(Tokenizer.from_str(Tokenizer(__import__("tokenizers").models.BPE()).to_str()))
