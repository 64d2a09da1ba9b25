"""The strict AVC check (avc_syntax): real encodes are clean, errors are found, and FFmpeg agrees."""

from __future__ import annotations

import pytest

from bench.avc_check import agreement, judge
from shared.codec.avc.bytestream import nal_payloads, nal_units
from shared.codec.avc.profile import AvcProfile, ffmpeg_verdict
from shared.codec.avc.syntax import check_stream, parse_header
from shared.codec.avc.tables import CHROMA_DC_TOTAL_ZEROS, COEFF_TOKEN, RUN_BEFORE, TOTAL_ZEROS
from shared.samples.clips import sample_clip

TINY = AvcProfile.from_name("avc-128x72-3fps-5s-qp37")
PROFILES = ["avc-128x72-3fps-5s-qp37", "avc-64x48-3fps-2s-qp37", "avc-320x180-6fps-2.5s-qp30"]


@pytest.fixture(scope="module")
def tiny_streams() -> list[bytes]:
    return [TINY.encode(sample_clip(index)[1]) for index in range(3)]


class BitWriter:
    """Writes syntax elements MSB first, for hand-made slices."""

    def __init__(self) -> None:
        self.bits = ""

    def u(self, value: int, count: int) -> BitWriter:
        self.bits += format(value, f"0{count}b") if count else ""
        return self

    def ue(self, value: int) -> BitWriter:
        code = format(value + 1, "b")
        self.bits += "0" * (len(code) - 1) + code
        return self

    def se(self, value: int) -> BitWriter:
        return self.ue(2 * value - 1 if value > 0 else -2 * value)

    def nal(self, header: int) -> bytes:
        bits = self.bits + "1"
        bits += "0" * (-len(bits) % 8)
        rbsp = int(bits, 2).to_bytes(len(bits) // 8, "big")
        escaped, zeros = bytearray(), 0
        for byte in rbsp:  # emulation prevention
            if zeros >= 2 and byte <= 3:
                escaped.append(3)
                zeros = 0
            escaped.append(byte)
            zeros = zeros + 1 if byte == 0 else 0
        return b"\x00\x00\x00\x01" + bytes([header]) + bytes(escaped)


def idr_frame(profile: AvcProfile, mb_type_at: dict[int, int] | None = None, qp_delta: int = 0) -> bytes:
    """An IDR frame of Intra_16x16 macroblocks without coefficients; ``mb_type_at`` overrides the mb_type
    (3 = Intra_16x16 DC, 1 = vertical, 2 = horizontal) of some macroblocks."""
    units = []
    for mb in range(profile.macroblocks):
        slice_ = BitWriter().ue(mb).ue(7).ue(0).u(0, 4).ue(0)  # first_mb, I, PPS 0, frame_num 0, idr_pic_id 0
        slice_.u(0, 1).u(0, 1).se(qp_delta)  # dec_ref_pic_marking, slice_qp_delta
        slice_.ue(0).se(0).se(0)  # deblocking on, offsets 0
        slice_.ue((mb_type_at or {}).get(mb, 3)).ue(0).se(0)  # mb_type, chroma DC, mb_qp_delta 0
        slice_.u(1, 1)  # the Intra16x16 DC block's coeff_token: no coefficient (nC 0)
        units.append(slice_.nal(0x65))
    return b"".join(units)


def test_vlc_tables_are_prefix_free_codes():
    for table in (*COEFF_TOKEN, *TOTAL_ZEROS, *CHROMA_DC_TOTAL_ZEROS, *RUN_BEFORE):
        codes = sorted(table)
        assert all(not b.startswith(a) for a, b in zip(codes, codes[1:])), "a code is a prefix of another"
        assert sum(2.0 ** -len(code) for code in codes) <= 1.0
    assert len(COEFF_TOKEN[0]) == 62 and len(COEFF_TOKEN[4]) == 14  # (TotalCoeff, TrailingOnes) pairs
    assert [len(table) for table in TOTAL_ZEROS] == list(range(16, 1, -1))


def test_header_parameters_of_the_tiny_profile():
    params = parse_header(TINY.header)
    assert (params.mb_width, params.mb_height, params.macroblocks) == (8, 5, TINY.macroblocks)
    assert params.poc_type == 2 and params.max_num_ref_frames == 3 and params.num_ref_idx_default == 3
    assert params.pic_init_qp == 37 and params.deblocking_control and params.level_idc == 10


@pytest.mark.parametrize("name", PROFILES)
def test_real_clips_are_clean_for_the_check_and_for_ffmpeg(name: str):
    profile = AvcProfile.from_name(name)
    for index in range(3):
        stream = profile.encode(sample_clip(index)[1])
        check = check_stream(profile.header, stream, profile.max_frames)
        assert check.problems == () and check.ok, check.problems[:3]
        assert check.frames == check.clean_frames == check.leading_clean_frames == profile.frame_count(stream)
        assert check.clean_macroblocks == check.macroblocks == check.frames * profile.macroblocks
        assert ffmpeg_verdict(profile.restore(stream), profile.max_frames + 2).clean(check.frames)


def test_random_corruptions_agree_with_ffmpeg(tiny_streams: list[bytes]):
    result = agreement(TINY, tiny_streams, trials=60, count=2, seed=1)
    assert result.trials == 60 and result.both_broken > 30  # most corruptions break something
    # An error FFmpeg reports is never missed; the check may be stricter (it also judges what FFmpeg
    # silently tolerates, e.g. a long-term reference flag or a skip run past the frame).
    assert result.only_ffmpeg_broken == 0, result.examples
    assert result.rate >= 0.9, result.examples


def test_hand_made_intra_frames_and_unavailable_neighbours():
    clean = idr_frame(TINY)
    assert check_stream(TINY.header, clean).ok and judge(TINY, clean)[:2] == (True, True)
    for mb_type, what in ((1, "Intra_16x16 prediction mode 0"), (2, "Intra_16x16 prediction mode 1")):
        broken = idr_frame(TINY, {7: mb_type})
        check = check_stream(TINY.header, broken)
        assert check.clean_macroblocks == TINY.macroblocks - 1 and check.frame_clean == (False,)
        assert what in check.problems[0] and check.first_error_offset > 0
        assert judge(TINY, broken)[:2] == (False, False)  # FFmpeg refuses it too


def test_slice_qp_out_of_range_is_an_error():
    assert check_stream(TINY.header, idr_frame(TINY, qp_delta=14)).ok  # 37 + 14 = 51
    check = check_stream(TINY.header, idr_frame(TINY, qp_delta=15))
    assert not check.ok and "slice QP 52" in check.problems[0]
    assert judge(TINY, idr_frame(TINY, qp_delta=15))[:2] == (False, False)


def test_structure_errors(tiny_streams: list[bytes]):
    stream = tiny_streams[0]
    frames = TINY.frame_count(stream)
    # a dropped slice: its frame is short and the next slice comes out of order
    units = [unit for _, unit in nal_units(stream)]
    dropped = b"".join(units[:45] + units[46:])
    check = check_stream(TINY.header, dropped)
    assert check.frames == frames and check.clean_frames == frames - 1 and check.leading_clean_frames == 1
    # a P frame first: no reference exists
    second = TINY.cut_after_units(stream, 2)[len(TINY.cut_after_units(stream, 1)):]
    assert not check_stream(TINY.header, second).ok
    # truncation in the middle of a slice
    cut = stream[: len(stream) // 2]
    check = check_stream(TINY.header, cut)
    assert check.frames == TINY.frame_count(cut) and check.clean_frames == check.frames - 1
    assert check.first_error_offset >= len(TINY.cut_after_units(stream, check.frames - 1))
    # bounded work: frames past max_frames are counted, not parsed
    check = check_stream(TINY.header, stream * 4, TINY.max_frames)
    assert check.frames == 4 * frames and check.clean_frames <= TINY.max_frames


def test_decode_reports_the_strict_check(tiny_streams: list[bytes]):
    stream = tiny_streams[1]
    decoded = TINY.decode(stream, strict=True)
    assert decoded.complete and decoded.facts["macroblocks_clean"] == decoded.facts["macroblocks_announced"]
    assert decoded.facts["first_error"] is None
    broken = idr_frame(TINY, {3: 1}) + stream[len(TINY.cut_after_units(stream, 1)):]
    decoded = TINY.decode(broken)
    assert decoded.valid_frames == 0 and not decoded.complete
    assert decoded.facts["macroblocks_clean"] == decoded.facts["macroblocks_announced"] - 1
    assert "needs neighbours" in decoded.facts["first_error"]
    with pytest.raises(Exception, match="needs neighbours"):
        TINY.decode(broken, strict=True)


def test_i_pcm_and_emulation_prevention():
    # I_PCM: alignment bits, then 384 raw samples; zero samples make 00 00 runs that need escaping
    pcm = BitWriter().ue(0).ue(7).ue(0).u(0, 4).ue(0).u(0, 2).se(0).ue(0).se(0).se(0).ue(25)
    pcm.u(0, -len(pcm.bits) % 8).u(0, 8 * 384)
    unit = pcm.nal(0x65)
    assert unit.count(b"\x00\x00\x03") > 100
    start = b"\x00\x00\x00\x01"
    stream = unit + b"".join(start + piece for piece in idr_frame(TINY).split(start)[2:])
    check = check_stream(TINY.header, stream)
    assert check.ok and check.clean_macroblocks == TINY.macroblocks
    assert judge(TINY, stream)[:2] == (True, True)
    unescaped = stream.replace(b"\x00\x00\x03", b"\x00\x00", 1)
    check = check_stream(TINY.header, unescaped)
    assert not check.ok and "emulation prevention" in check.problems[0]


def test_a_stream_cut_inside_a_frame_is_counted_as_unwritten_not_as_garbage(tiny_streams: list[bytes]) -> None:
    """A sample that runs out of token budget stops inside a frame: at a slice boundary or inside a slice.
    Its macroblocks so far count as written and clean, the rest as unwritten; what went wrong is not cut."""
    stream = tiny_streams[0]
    starts = [offset for offset, _ in nal_payloads(stream)]  # each unit's start code
    second_frame = starts[TINY.macroblocks]  # one slice per macroblock: frame 1's first slice
    inside = range(starts[TINY.macroblocks + 4] + 5, starts[TINY.macroblocks + 5])  # every cut inside one slice
    for end, written in [(starts[TINY.macroblocks + 5], 5), *((end, 4) for end in inside)]:
        check = check_stream(TINY.header, stream[:end], TINY.max_frames)
        assert (check.frames, check.clean_frames, check.whole_frames) == (2, 1, 1) and not check.ok
        assert check.cut_short and check.unwritten_macroblocks == TINY.macroblocks - written
        assert check.clean_macroblocks == TINY.macroblocks + written
    # a macroblock that ends on a byte boundary, cut before the byte that holds only its stop bit
    units = nal_payloads(stream)
    k = next(i for i in range(TINY.macroblocks + 1, len(units) - 1) if units[i][1][-1] == 0x80)
    check = check_stream(TINY.header, stream[:starts[k + 1] - 1], TINY.max_frames)
    assert check.cut_short and check.whole_frames == 1 and check.clean_macroblocks == k
    whole = check_stream(TINY.header, stream[:second_frame], TINY.max_frames)
    assert whole.ok and not whole.cut_short and whole.whole_frames == 1
    garbled = bytearray(stream[:starts[TINY.macroblocks + 5] - 1])
    garbled[starts[TINY.macroblocks + 2] + 6] ^= 0xFF  # an error before the cut: not a clean frame cut short
    check = check_stream(TINY.header, bytes(garbled), TINY.max_frames)
    assert not check.cut_short and check.whole_frames == check.frames == 2
