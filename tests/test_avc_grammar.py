"""The macroblock-level AVC grammar: real encodes are accepted byte for byte, and constrained random walks
always give streams that FFmpeg decodes with no error (and that the strict check passes)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from test_avc_syntax import idr_frame

from bench.avc_grammar import walk
from shared.codec.avc.bytestream import nal_units
from shared.codec.avc.grammar import NO_VALUE, PREFIX, AnyBits, AvcGrammar, SignedGolomb, _codes
from shared.codec.avc.profile import AvcProfile, ffmpeg_verdict
from shared.codec.avc.syntax import check_stream, se_code
from shared.codec.token_constraint import TokenConstraint
from shared.format.tokenizer import ByteTokenizer
from shared.samples.clips import sample_clip

PROFILES = ["avc-128x72-3fps-5s-qp37", "avc-64x48-3fps-2s-qp37", "avc-320x180-6fps-2.5s-qp30"]


def accepted(grammar: AvcGrammar, stream: bytes) -> tuple[bool, int]:
    """(whole stream accepted and may end there, bytes accepted)."""
    state = grammar.start()
    for index, byte in enumerate(stream):
        state = grammar.step(state, byte)
        if state is None:
            return False, index
    return grammar.can_end(state), len(stream)


@pytest.mark.parametrize("name", PROFILES)
def test_real_clips_are_accepted_byte_for_byte(name: str):
    profile = AvcProfile.from_name(name)
    grammar = profile.grammar()
    for index in range(4):
        stream = profile.encode(sample_clip(index)[1])
        assert accepted(grammar, stream) == (True, len(stream))
        for frames in (1, 2):  # prompts end where a frame ends: EOS may follow
            prompt = profile.cut_after_units(stream, frames)
            assert accepted(grammar, prompt) == (True, len(prompt))


@pytest.mark.parametrize("name,seed,stop", [("avc-128x72-3fps-5s-qp37", 0, 0.3), ("avc-128x72-3fps-5s-qp37", 1, 0.1),
                                            ("avc-64x48-3fps-2s-qp37", 2, 0.0), ("avc-64x48-3fps-2s-qp37", 3, 0.0),
                                            ("avc-64x48-3fps-2s-qp37", 4, 0.5)])
def test_random_constrained_walks_decode_cleanly(name: str, seed: int, stop: float):
    profile = AvcProfile.from_name(name)
    stream = walk(profile, seed, stop)
    frames = profile.frame_count(stream)
    assert frames >= 1 and (stop > 0 or frames == profile.max_frames)
    check = check_stream(profile.header, stream, profile.max_frames)
    assert check.ok and check.clean_frames == frames, check.problems[:3]
    verdict = ffmpeg_verdict(profile.restore(stream), profile.max_frames + 2)
    assert verdict.errors == () and verdict.corrupt_frames == 0 and verdict.frames == frames
    assert accepted(profile.grammar(), stream) == (True, len(stream))


def test_corrupted_streams_the_grammar_accepts_pass_the_check():
    profile = AvcProfile.from_name("avc-128x72-3fps-5s-qp37")
    grammar = profile.grammar()
    stream = profile.encode(sample_clip(5)[1])
    rng = np.random.default_rng(3)
    rejected = 0
    for _ in range(40):
        data = bytearray(stream)
        data[int(rng.integers(len(data)))] = int(rng.integers(256))
        whole, _ = accepted(grammar, bytes(data))
        check = check_stream(profile.header, bytes(data), profile.max_frames)
        assert not whole or check.ok  # the grammar is never more lenient than the check
        rejected += not whole
        if not check.ok:
            assert not whole
    assert rejected > 30


def test_hand_made_frames_and_unavailable_neighbours():
    profile = AvcProfile.from_name("avc-128x72-3fps-5s-qp37")
    grammar = profile.grammar()
    clean = idr_frame(profile)
    assert accepted(grammar, clean) == (True, len(clean))
    for mb_type in (1, 2):  # Intra_16x16 vertical and horizontal prediction read the slice's missing neighbours
        bad = idr_frame(profile, {5: mb_type})
        slice_5 = len(b"".join(unit for _, unit in nal_units(bad)[:5]))
        ok, where = accepted(grammar, bad)
        assert not ok and slice_5 < where < slice_5 + 10
    assert accepted(grammar, idr_frame(profile, qp_delta=14))[0]  # slice QP 51
    assert not accepted(grammar, idr_frame(profile, qp_delta=15))[0]  # 52
    # only an I slice may open the clip: slice_type 5 (P) is refused in the header's first byte
    start = grammar.start()
    for byte in b"\x00\x00\x01\x65":
        start = grammar.step(start, byte)
    assert grammar.step(start, 0b10001100) is None  # first_mb 0 = "1", slice_type 5 = "00110"
    assert grammar.step(start, 0b10001000) is not None  # slice_type 7 = "0001000"


def test_next_bytes_lists_what_stepping_every_byte_allows() -> None:
    profile = AvcProfile.from_name("avc-64x48-3fps-3s-qp43")
    stream = profile.encode(sample_clip(2)[1])
    grammar = profile.grammar()
    state, checked = grammar.start(), 0
    for offset, byte in enumerate(stream):
        if offset % 3 == 0:  # start codes, headers, residuals, emulation prevention, trailing bits
            expected = {value: after for value in range(256) if (after := grammar.step(state, value)) is not None}
            assert grammar.next_bytes(state) == expected, offset
            checked += 1
        state = grammar.step(state, byte)
    assert checked > 300


@pytest.mark.parametrize("low, high", [(-26, 25), (-6, 6), (-37, 14), (0, 0), (-1, 0), (0, 1), (-256, 255)])
def test_structured_code_tables_answer_as_listed_ones(low: int, high: int) -> None:
    """se(v) ranges and u(n) are judged by their codes' structure; listing every code and prefix must
    give the same answers, for every bit string a walk can ask about (up to one bit past a whole code)."""
    listed = _codes({se_code(value): value for value in range(low, high + 1)})
    longest = max(map(len, listed.values))
    asked = ["".join(bits) for size in range(1, min(longest, 12) + 2) for bits in itertools.product("01", repeat=size)]
    asked += [code[:cut] for code in listed.values for cut in range(1, len(code) + 1)]
    for code in asked:
        want, got = listed.lookup(code), SignedGolomb(low, high).lookup(code)
        assert got is want if want in (PREFIX, NO_VALUE) else got == want, code
    for size in range(1, 7):
        listed = _codes({format(value, f"0{size}b"): value for value in range(1 << size)})
        for code in ("".join(bits) for length in range(1, size + 2) for bits in itertools.product("01", repeat=length)):
            want, got = listed.lookup(code), AnyBits(size).lookup(code)
            assert got is want if want in (PREFIX, NO_VALUE) else got == want, code


def test_verdicts_on_many_tokens_are_try_advance_one_by_one() -> None:
    """A redraw judges a filtered set at once (shared prefixes walked once, bytes after a cached nibble): the
    same verdicts as judging each token from a grammar of its own, in headers, macroblocks and between units."""
    profile = AvcProfile.from_name("avc-64x48-3fps-2s-qp37")
    streams = [profile.encode(sample_clip(index)[1]) for index in (3, 4)]
    tokenizer = ByteTokenizer.train(streams, 400, boundary=profile.token_boundary)
    shared_walks = TokenConstraint(profile.grammar(), tokenizer.token_bytes, tokenizer.eos_id)
    one_by_one = TokenConstraint(profile.grammar(), tokenizer.token_bytes, tokenizer.eos_id)
    tokens = list(range(tokenizer.vocab_size))
    state, checked, allowed = shared_walks.start(), 0, 0
    for index, token in enumerate(tokenizer.encode(streams[0]).tolist()):
        if index % 7 == 0:
            expected = [one_by_one.try_advance(state, other) is not None for other in tokens]
            assert shared_walks.verdicts(state, tokens[::-1]) == expected[::-1], index
            checked, allowed = checked + 1, allowed + sum(expected)
        state = shared_walks.try_advance(state, token)
    assert checked > 20 and 0 < allowed < checked * len(tokens)
    assert shared_walks.verdicts(state, [tokenizer.eos_id]) == [True]  # the whole clip: it may end
