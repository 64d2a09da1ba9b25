"""The strict AVC check: which frames and macroblocks of a stream parse and decode cleanly, bit by bit.

FFmpeg's H.264 decoder conceals what it cannot decode and, unless told to explode, decodes on. A model's
output is therefore judged here, with the profile's own SPS and PPS (its ``header``): every slice NAL unit
is parsed to its last bit as ITU-T H.264 7.3 says (slice header, ``mb_skip_run``, ``macroblock_layer``
with ``mb_pred`` / ``sub_mb_pred`` and CAVLC ``residual_block``s, ``rbsp_trailing_bits``), and the
values are checked against what a decoder needs:

- intra prediction modes may only read neighbours that exist: with one macroblock per slice no other
  macroblock is available (6.4.4 makes macroblocks of other slices unavailable), so Intra_16x16 and
  chroma prediction must be DC and Intra_4x4 modes at the macroblock's left or top edge are limited;
- the CAVLC context nC comes from blocks of the same macroblock only (9.2.1);
- QP deltas, motion vectors (the level's vertical range, Table A-1), reference indices (no more than the
  decoded reference frames), ``total_zeros`` / ``run_before`` against the coefficients left, and the
  picture order: ``frame_num``, one slice per macroblock in order, IDR first.

A frame is *clean* when every one of its macroblocks is; ``check_stream`` reports counts per frame and
per macroblock and the first error (byte offset in the stream and reason). The grammar
(``avc.grammar``) is written separately from the same standard, on purpose: each is the other's test
(tests/test_avc_grammar.py and tests/test_avc_syntax.py hold them together; see ``avc/__init__.py``).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from shared.codec.avc.bytestream import NAL_IDR, NAL_PPS, NAL_SPS, SLICE_TYPES, nal_payloads, starts_picture
from shared.codec.avc.tables import (
    CBP_INTER,
    CBP_INTRA,
    CHROMA_DC_PRED,
    CHROMA_DC_TOTAL_ZEROS,
    CHROMA_XY,
    COEFF_TOKEN,
    DC_PRED,
    INTRA4X4_NEEDS_LEFT,
    INTRA4X4_NEEDS_TOP,
    LUMA_INDEX,
    LUMA_XY,
    RUN_BEFORE,
    TOTAL_ZEROS,
    coeff_token_table,
)

P_SLICE, I_SLICE = 0, 2  # slice_type % 5
I_PCM = 25  # mb_type of an I slice (30 in a P slice)
MAX_LEVEL_PREFIX = 15  # Baseline, Main and Extended bitstreams (9.2.2.1)


class SyntaxProblem(Exception):
    """A stream is not what the profile's decoder can decode cleanly; ``bit`` is where (in the RBSP)."""

    def __init__(self, reason: str, bit: int = -1) -> None:
        super().__init__(reason)
        self.reason, self.bit = reason, bit


class UnitEnded(SyntaxProblem):
    """The NAL unit ends before its slice does (inside a syntax element, or before the stop bit): in the
    last unit of a stream, a sample cut short."""


# ---------------------------------------------------------------------------------------------------
# Bits
# ---------------------------------------------------------------------------------------------------


def unescape(payload: bytes) -> tuple[bytes, list[int]]:
    """The RBSP of a NAL unit's payload: emulation prevention bytes (00 00 03) removed. Also returns, for
    each removed byte, its position in ``payload``, to map RBSP positions back to stream offsets."""
    rbsp, removed, zeros = bytearray(), [], 0
    for index, byte in enumerate(payload):
        if zeros >= 2 and byte == 3:
            removed.append(index)
            zeros = 0
            continue
        if zeros >= 2 and byte < 3:
            raise SyntaxProblem(f"00 00 {byte:02x} inside a NAL unit (emulation prevention missing)", 8 * len(rbsp))
        rbsp.append(byte)
        zeros = zeros + 1 if byte == 0 else 0
    return bytes(rbsp), removed


def ue_code(value: int) -> str:
    """The ue(v) code of ``value`` as a bit string (9.1): Exp-Golomb, what ``BitReader.ue`` reads."""
    code = format(value + 1, "b")
    return "0" * (len(code) - 1) + code


def se_code(value: int) -> str:
    """The se(v) code of ``value`` (9.1.1): positive values map to odd ue(v) codes, the rest to even ones."""
    return ue_code(2 * value - 1 if value > 0 else -2 * value)


class BitReader:
    """Reads an RBSP MSB first; reading past its end is a ``SyntaxProblem``."""

    def __init__(self, data: bytes) -> None:
        self.bits = "".join(format(byte, "08b") for byte in data)
        self.position = 0

    def bit(self) -> int:
        if self.position >= len(self.bits):
            raise UnitEnded("the NAL unit ends inside a syntax element", self.position)
        self.position += 1
        return self.bits[self.position - 1] == "1"

    def u(self, count: int) -> int:
        value = 0
        for _ in range(count):
            value = value << 1 | self.bit()
        return value

    def ue(self, limit: int = 1 << 32) -> int:
        zeros = 0
        while not self.bit():
            zeros += 1
            if zeros > 31:
                raise SyntaxProblem("an Exp-Golomb code longer than 32 bits", self.position)
        value = (1 << zeros) - 1 + self.u(zeros)
        if value > limit:
            raise SyntaxProblem(f"ue(v) value {value} above {limit}", self.position)
        return value

    def se(self) -> int:
        code = self.ue()
        return (code + 1) // 2 if code % 2 else -(code // 2)

    def vlc(self, table: dict, what: str) -> object:
        start, code = self.position, ""
        longest = max(map(len, table))
        while len(code) < longest:
            code += "1" if self.bit() else "0"
            if code in table:
                return table[code]
        raise SyntaxProblem(f"no {what} code starts with {code}", start)

    def more_rbsp_data(self) -> bool:
        """Whether syntax follows before ``rbsp_trailing_bits`` (the last 1 bit is the stop bit)."""
        return self.bits.rfind("1") > self.position

    def trailing_bits(self) -> None:
        stop_bit = self.bits.rfind("1")
        if stop_bit < self.position:  # nothing, or only zeros, after the macroblock
            raise UnitEnded("the NAL unit ends before its rbsp_stop_one_bit", self.position)
        if stop_bit != self.position:
            raise SyntaxProblem("the slice does not end with rbsp_trailing_bits after its macroblock", self.position)
        if len(self.bits) - self.position > 8:
            raise SyntaxProblem("zero bytes after rbsp_trailing_bits", self.position)
        self.position = len(self.bits)


# ---------------------------------------------------------------------------------------------------
# Parameter sets
# ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Params:
    """What the slice syntax needs of the profile's SPS and PPS (7.3.2.1, 7.3.2.2)."""

    mb_width: int
    mb_height: int
    level_idc: int
    log2_max_frame_num: int
    poc_type: int
    log2_max_poc_lsb: int  # poc type 0 only
    delta_always_zero: bool  # poc type 1 only
    max_num_ref_frames: int
    num_ref_idx_default: int  # num_ref_idx_l0_default_active_minus1 + 1
    pic_init_qp: int
    deblocking_control: bool
    redundant_pic_cnt: bool
    bottom_field_pic_order: bool

    @property
    def macroblocks(self) -> int:
        return self.mb_width * self.mb_height

    @property
    def max_mv_vertical(self) -> int:
        """Vertical motion vector range of the level (Table A-1) in quarter samples: [-r, r - 1]."""
        level = self.level_idc
        return 256 if level <= 10 else 512 if level <= 20 else 1024 if level <= 30 else 2048


@lru_cache(maxsize=16)
def parse_header(header: bytes) -> Params:
    """The profile's SPS and PPS (Annex-B, start codes included): a Baseline, CAVLC, frame-only stream."""
    units = {unit[0] & 0x1F: unit for _, unit in nal_payloads(header) if unit}
    if NAL_SPS not in units or NAL_PPS not in units:
        raise ValueError("the header must hold an SPS (NAL type 7) and a PPS (type 8)")
    sps = BitReader(unescape(units[NAL_SPS][1:])[0])
    profile_idc = sps.u(8)
    sps.u(8)  # constraint flags
    level_idc = sps.u(8)
    sps.ue()  # seq_parameter_set_id
    if profile_idc in (100, 110, 122, 244, 44, 83, 86, 118, 128, 138, 139, 134, 135):
        raise ValueError(f"profile_idc {profile_idc}: only Baseline/Main/Extended SPS are supported")
    log2_max_frame_num = sps.ue() + 4
    poc_type = sps.ue()
    log2_max_poc_lsb, delta_always_zero = 0, False
    if poc_type == 0:
        log2_max_poc_lsb = sps.ue() + 4
    elif poc_type == 1:
        raise ValueError("pic_order_cnt_type 1 is not supported")
    max_num_ref_frames = sps.ue()
    sps.u(1)  # gaps_in_frame_num_value_allowed_flag
    mb_width, mb_height = sps.ue() + 1, sps.ue() + 1
    if not sps.u(1):
        raise ValueError("only frame_mbs_only_flag = 1 (progressive frames) is supported")

    pps = BitReader(unescape(units[NAL_PPS][1:])[0])
    pps.ue(), pps.ue()  # pic_parameter_set_id, seq_parameter_set_id
    if pps.u(1):
        raise ValueError("the PPS selects CABAC; only CAVLC is supported")
    bottom_field_pic_order = bool(pps.u(1))
    if pps.ue():
        raise ValueError("slice groups (FMO) are not supported")
    num_ref_idx_default = pps.ue() + 1
    pps.ue()  # num_ref_idx_l1_default_active_minus1
    if pps.u(1) or pps.u(2):
        raise ValueError("weighted prediction is not supported")
    pic_init_qp = 26 + pps.se()
    pps.se(), pps.se()  # pic_init_qs_minus26, chroma_qp_index_offset
    deblocking_control = bool(pps.u(1))
    pps.u(1)  # constrained_intra_pred_flag: no inter neighbour is ever available anyway
    redundant_pic_cnt = bool(pps.u(1))
    return Params(mb_width, mb_height, level_idc, log2_max_frame_num, poc_type, log2_max_poc_lsb,
                  delta_always_zero, max_num_ref_frames, num_ref_idx_default, pic_init_qp, deblocking_control,
                  redundant_pic_cnt, bottom_field_pic_order)


# ---------------------------------------------------------------------------------------------------
# Slices
# ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SliceHeader:
    nal_type: int
    nal_ref_idc: int
    first_mb: int
    slice_type: int  # 0 P, 2 I (slice_type % 5)
    raw_slice_type: int
    frame_num: int
    idr_pic_id: int
    num_ref_idx_active: int
    qp: int


@dataclass(frozen=True)
class FrameContext:
    """What a slice may refer to: the reference frames decoded so far, and the expected frame_num."""

    references: int  # short-term reference frames in the decoded picture buffer
    frame_num: int  # the frame_num a non-IDR picture must have


def parse_slice_header(reader: BitReader, params: Params, nal_type: int, nal_ref_idc: int,
                       context: FrameContext) -> SliceHeader:
    first_mb = reader.ue()
    if first_mb >= params.macroblocks:
        raise SyntaxProblem(f"first_mb_in_slice {first_mb} is past the frame's {params.macroblocks} macroblocks", 0)
    raw_slice_type = reader.ue()
    if raw_slice_type > 9 or raw_slice_type % 5 not in (P_SLICE, I_SLICE):
        raise SyntaxProblem(f"slice_type {raw_slice_type}: a Baseline CAVLC stream has only I and P slices")
    slice_type = raw_slice_type % 5
    if nal_type == NAL_IDR and slice_type != I_SLICE:
        raise SyntaxProblem("an IDR slice must be an I slice")
    if reader.ue() != 0:
        raise SyntaxProblem("pic_parameter_set_id other than the header's PPS (0)")
    frame_num = reader.u(params.log2_max_frame_num)
    idr_pic_id = 0
    if nal_type == NAL_IDR:
        if frame_num:
            raise SyntaxProblem(f"frame_num {frame_num} in an IDR slice (must be 0)")
        idr_pic_id = reader.ue(65535)
    elif frame_num != context.frame_num:
        raise SyntaxProblem(f"frame_num {frame_num}, expected {context.frame_num} (no gaps are allowed)")
    if params.poc_type == 0:
        reader.u(params.log2_max_poc_lsb)
        if params.bottom_field_pic_order:
            reader.se()
    if params.redundant_pic_cnt and reader.ue():
        raise SyntaxProblem("a redundant picture (redundant_pic_cnt > 0)")
    num_ref_idx_active = params.num_ref_idx_default
    if slice_type == P_SLICE:
        if reader.u(1):  # num_ref_idx_active_override_flag
            num_ref_idx_active = reader.ue(31) + 1
        if num_ref_idx_active > 16:
            raise SyntaxProblem(f"{num_ref_idx_active} active references, more than 16 for a frame")
        if num_ref_idx_active > context.references:
            raise SyntaxProblem(f"{num_ref_idx_active} active references but only {context.references} "
                                "reference frames are decoded")
        if reader.u(1):  # ref_pic_list_modification_flag_l0
            parse_list_modification(reader, params, context, num_ref_idx_active)
    if nal_ref_idc:
        parse_ref_pic_marking(reader, nal_type)
    qp = params.pic_init_qp + reader.se()
    if not 0 <= qp <= 51:
        raise SyntaxProblem(f"slice QP {qp} outside 0..51")
    if params.deblocking_control:
        idc = reader.ue()
        if idc > 2:
            raise SyntaxProblem(f"disable_deblocking_filter_idc {idc} above 2")
        if idc != 1:
            for name in ("slice_alpha_c0_offset_div2", "slice_beta_offset_div2"):
                offset = reader.se()
                if not -6 <= offset <= 6:
                    raise SyntaxProblem(f"{name} {offset} outside -6..6")
    return SliceHeader(nal_type, nal_ref_idc, first_mb, slice_type, raw_slice_type, frame_num, idr_pic_id,
                       num_ref_idx_active, qp)


def parse_list_modification(reader: BitReader, params: Params, context: FrameContext, active: int) -> None:
    """ref_pic_list_modification for list 0: only short-term pictures exist (8.2.4.3.1)."""
    max_pic_num = 1 << params.log2_max_frame_num
    for _ in range(active + 1):
        idc = reader.ue()
        if idc == 3:
            return
        if idc > 1:
            raise SyntaxProblem(f"modification_of_pic_nums_idc {idc}: there are no long-term pictures")
        difference = reader.ue() + 1
        if difference > context.references:
            raise SyntaxProblem(f"reference list modification to a picture {difference} back, but only "
                                f"{context.references} are decoded")
        if difference > max_pic_num:
            raise SyntaxProblem("abs_diff_pic_num_minus1 beyond MaxPicNum")
    raise SyntaxProblem("the reference list modification does not end")


def parse_ref_pic_marking(reader: BitReader, nal_type: int) -> None:
    if nal_type == NAL_IDR:
        reader.u(1)  # no_output_of_prior_pics_flag
        if reader.u(1):
            raise SyntaxProblem("long_term_reference_flag: the profile uses short-term references only")
    elif reader.u(1):
        raise SyntaxProblem("adaptive_ref_pic_marking_mode_flag: the profile uses the sliding window only")


# ---------------------------------------------------------------------------------------------------
# Macroblocks
# ---------------------------------------------------------------------------------------------------


class MacroblockParser:
    """One macroblock of a one-macroblock slice: no neighbour outside it is available (6.4.4)."""

    def __init__(self, reader: BitReader, params: Params, header: SliceHeader) -> None:
        self.reader, self.params, self.header = reader, params, header
        self.qp = header.qp
        self.luma_counts = [0] * 16  # total_coeff of each luma 4x4 block, for nC
        self.chroma_counts = [[0] * 4, [0] * 4]

    def parse(self) -> str:
        """Parse ``macroblock_layer``; returns the macroblock's kind (for statistics and messages)."""
        reader, header = self.reader, self.header
        limit = 30 if header.slice_type == P_SLICE else 25
        mb_type = reader.ue(limit)
        if header.slice_type == P_SLICE:
            if mb_type < 5:
                return self.inter(mb_type)
            mb_type -= 5
        return self.intra(mb_type)

    # --- intra --------------------------------------------------------------------------------------

    def intra(self, mb_type: int) -> str:
        reader = self.reader
        if mb_type == I_PCM:
            while reader.position % 8:
                if reader.bit():
                    raise SyntaxProblem("pcm_alignment_zero_bit is 1", reader.position - 1)
            reader.u(8 * 384)  # 256 luma and 128 chroma samples; any 8-bit value
            return "I_PCM"
        if mb_type == 0:  # I_NxN: sixteen Intra_4x4 modes
            modes: dict[int, int] = {}
            for index, (x, y) in enumerate(LUMA_XY):
                predicted = DC_PRED if x == 0 or y == 0 else min(modes[LUMA_INDEX[(x - 1, y)]],
                                                                  modes[LUMA_INDEX[(x, y - 1)]])
                if reader.u(1):
                    mode = predicted
                else:
                    rem = reader.u(3)
                    mode = rem if rem < predicted else rem + 1
                if x == 0 and mode in INTRA4X4_NEEDS_LEFT or y == 0 and mode in INTRA4X4_NEEDS_TOP:
                    raise SyntaxProblem(f"Intra_4x4 mode {mode} in block {index} needs a neighbour outside the "
                                        "slice", reader.position)
                modes[index] = mode
            self.chroma_mode()
            cbp = self.cbp(CBP_INTRA)
            self.residual(cbp & 15, cbp >> 4, intra16=False)
            return "I_4x4"
        prediction, chroma, luma = (mb_type - 1) % 4, (mb_type - 1) // 4 % 3, 15 if mb_type > 12 else 0
        if prediction != DC_PRED:
            raise SyntaxProblem(f"Intra_16x16 prediction mode {prediction} needs neighbours outside the slice",
                                reader.position)
        self.chroma_mode()
        self.qp_delta()
        self.residual(luma, chroma, intra16=True)
        return "I_16x16"

    def chroma_mode(self) -> None:
        mode = self.reader.ue(3)
        if mode != CHROMA_DC_PRED:
            raise SyntaxProblem(f"intra_chroma_pred_mode {mode} needs neighbours outside the slice",
                                self.reader.position)

    # --- inter --------------------------------------------------------------------------------------

    def inter(self, mb_type: int) -> str:
        reader, active = self.reader, self.header.num_ref_idx_active
        grid: dict[tuple[int, int], tuple[int, tuple[int, int]]] = {}  # 4x4 block -> (ref_idx, mv)
        if mb_type < 3:
            shapes = [((0, 0, 4, 4), "16x16")] if mb_type == 0 else \
                [((0, 0, 4, 2), "16x8"), ((0, 2, 4, 2), "16x8")] if mb_type == 1 else \
                [((0, 0, 2, 4), "8x16"), ((2, 0, 2, 4), "8x16")]
            refs = [self.ref_idx(active) for _ in shapes]
            for index, ((x, y, w, h), shape) in enumerate(shapes):
                self.motion(grid, x, y, w, h, refs[index], shape, index)
        else:
            sub_types = [reader.ue(3) for _ in range(4)]
            refs = [0] * 4 if mb_type == 4 else [self.ref_idx(active) for _ in range(4)]
            for part, sub in enumerate(sub_types):
                x0, y0 = 2 * (part % 2), 2 * (part // 2)
                w, h = (2, 2) if sub == 0 else (2, 1) if sub == 1 else (1, 2) if sub == 2 else (1, 1)
                for dy in range(0, 2, h):
                    for dx in range(0, 2, w):
                        self.motion(grid, x0 + dx, y0 + dy, w, h, refs[part], "8x8", 0)
        cbp = self.cbp(CBP_INTER)
        self.residual(cbp & 15, cbp >> 4, intra16=False)
        return ("P_L0_16x16", "P_16x8", "P_8x16", "P_8x8", "P_8x8ref0")[mb_type]

    def ref_idx(self, active: int) -> int:
        """te(v) with range active - 1 (7.4.5.1); absent with one active reference."""
        if active == 1:
            return 0
        value = 1 - self.reader.u(1) if active == 2 else self.reader.ue()
        if value >= active:
            raise SyntaxProblem(f"ref_idx_l0 {value} with {active} active references", self.reader.position)
        return value

    def motion(self, grid: dict, x: int, y: int, w: int, h: int, ref: int, shape: str, part: int) -> None:
        """mvd_l0 of one (sub-)partition; the motion vector must be in the level's range."""
        mvd = (self.reader.se(), self.reader.se())
        if not all(-32768 <= component <= 32767 for component in mvd):
            raise SyntaxProblem(f"mvd_l0 {mvd} outside -8192..8191.75 samples", self.reader.position)
        px, py = predict_mv(grid, x, y, w, h, ref, shape, part)
        mv = (px + mvd[0], py + mvd[1])
        vertical = self.params.max_mv_vertical
        if not (-8192 <= mv[0] <= 8191 and -vertical <= mv[1] < vertical):
            raise SyntaxProblem(f"motion vector {mv} (quarter samples) outside the level's range",
                                self.reader.position)
        for dy in range(h):
            for dx in range(w):
                grid[(x + dx, y + dy)] = (ref, mv)

    # --- residual -----------------------------------------------------------------------------------

    def cbp(self, mapping: tuple[int, ...]) -> int:
        cbp = mapping[self.reader.ue(47)]
        if cbp:
            self.qp_delta()
        return cbp

    def qp_delta(self) -> None:
        delta = self.reader.se()
        if not -26 <= delta <= 25:
            raise SyntaxProblem(f"mb_qp_delta {delta} outside -26..25", self.reader.position)
        self.qp = (self.qp + delta + 52) % 52

    def residual(self, luma_cbp: int, chroma_cbp: int, *, intra16: bool) -> None:
        if chroma_cbp > 2:
            raise SyntaxProblem(f"chroma coded_block_pattern {chroma_cbp}", self.reader.position)
        if intra16:
            self.block(self.luma_nc(0), 16, "Intra16x16 DC")
        for index, (x, y) in enumerate(LUMA_XY):
            if luma_cbp >> (index // 4) & 1:
                self.luma_counts[index] = self.block(self.luma_nc(index), 15 if intra16 else 16, f"luma {index}")
        if chroma_cbp:
            for _ in range(2):
                self.block(-1, 4, "chroma DC")
        if chroma_cbp == 2:
            for plane in range(2):
                for index in range(4):
                    nc = self.chroma_nc(plane, index)
                    self.chroma_counts[plane][index] = self.block(nc, 15, f"chroma AC {plane} {index}")

    def luma_nc(self, index: int) -> int:
        x, y = LUMA_XY[index]
        left = self.luma_counts[LUMA_INDEX[(x - 1, y)]] if x else None
        top = self.luma_counts[LUMA_INDEX[(x, y - 1)]] if y else None
        return combine_nc(left, top)

    def chroma_nc(self, plane: int, index: int) -> int:
        x, y = CHROMA_XY[index]
        counts = self.chroma_counts[plane]
        return combine_nc(counts[CHROMA_XY.index((x - 1, y))] if x else None,
                          counts[CHROMA_XY.index((x, y - 1))] if y else None)

    def block(self, nc: int, max_coeff: int, what: str) -> int:
        """residual_block_cavlc (7.3.5.3.2); returns TotalCoeff."""
        reader = self.reader
        total, ones = reader.vlc(COEFF_TOKEN[coeff_token_table(nc)], f"coeff_token ({what})")
        if total > max_coeff:
            raise SyntaxProblem(f"{total} coefficients in a {max_coeff}-coefficient block ({what})", reader.position)
        if not total:
            return 0
        suffix_length = 1 if total > 10 and ones < 3 else 0
        reader.u(ones)  # trailing_ones_sign_flag
        for index in range(ones, total):
            prefix = 0
            while not reader.bit():
                prefix += 1
                if prefix > MAX_LEVEL_PREFIX:
                    raise SyntaxProblem(f"level_prefix above {MAX_LEVEL_PREFIX} ({what})", reader.position)
            size = 4 if prefix == 14 and suffix_length == 0 else prefix - 3 if prefix >= 15 else suffix_length
            code = (min(15, prefix) << suffix_length) + reader.u(size)
            if prefix >= 15 and suffix_length == 0:
                code += 15
            if index == ones and ones < 3:
                code += 2
            level = (code + 2) >> 1 if code % 2 == 0 else (-code - 1) >> 1
            suffix_length = max(suffix_length, 1)
            if abs(level) > 3 << (suffix_length - 1) and suffix_length < 6:
                suffix_length += 1
        zeros = 0
        if total < max_coeff:
            table = CHROMA_DC_TOTAL_ZEROS[total - 1] if nc == -1 else TOTAL_ZEROS[total - 1]
            zeros = reader.vlc(table, f"total_zeros ({what})")
            if zeros > max_coeff - total:
                raise SyntaxProblem(f"total_zeros {zeros} with {total} coefficients in {max_coeff} ({what})",
                                    reader.position)
        for _ in range(total - 1):
            if zeros <= 0:
                break
            run = reader.vlc(RUN_BEFORE[min(zeros, 7) - 1], f"run_before ({what})")
            if run > zeros:
                raise SyntaxProblem(f"run_before {run} with {zeros} zeros left ({what})", reader.position)
            zeros -= run
        return total


def combine_nc(left: int | None, top: int | None) -> int:
    """nC from the available neighbouring blocks' TotalCoeff (9.2.1)."""
    if left is not None and top is not None:
        return (left + top + 1) >> 1
    return left if left is not None else top if top is not None else 0


def predict_mv(grid: dict, x: int, y: int, w: int, h: int, ref: int, shape: str, part: int) -> tuple[int, int]:
    """Luma motion vector prediction (8.4.1.3) with only this macroblock's partitions available."""
    unavailable = (-1, (0, 0))

    def at(position: tuple[int, int]) -> tuple[int, tuple[int, int]] | None:
        return grid.get(position)  # None: outside the macroblock or not decoded yet

    a, b = at((x - 1, y)), at((x, y - 1))
    c = at((x + w, y - 1))
    if c is None:
        c = at((x - 1, y - 1))  # D replaces an unavailable C
    if shape == "16x8":
        chosen = b if part == 0 else a
        if chosen is not None and chosen[0] == ref:
            return chosen[1]
    elif shape == "8x16":
        chosen = a if part == 0 else c
        if chosen is not None and chosen[0] == ref:
            return chosen[1]
    if b is None and c is None and a is not None:
        b = c = a
    a, b, c = (n or unavailable for n in (a, b, c))
    matching = [n for n in (a, b, c) if n[0] == ref]
    if len(matching) == 1:
        return matching[0][1]
    return tuple(sorted(n[1][i] for n in (a, b, c))[1] for i in range(2))


# ---------------------------------------------------------------------------------------------------
# Streams
# ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SliceResult:
    offset: int  # of the NAL unit's start code in the stream
    header: SliceHeader | None  # None when the header itself is broken
    kind: str  # the macroblock's kind ("I_4x4", "P_Skip", ...), "" when it did not parse
    problem: str  # "" when the slice parses cleanly
    problem_offset: int  # byte in the stream where the problem was found (-1 when none)
    unit_ended: bool = False  # the problem is that the unit ends before its slice does (UnitEnded)


@dataclass(frozen=True)
class CleanPrefix:
    """The longest run of clean slices from the stream's start, up to its first error or its end: what a
    file made from a model's output keeps (``avc.finish``)."""

    end: int = 0  # byte offset in the stream where it ends
    whole_frames: int = 0  # frames it holds whole
    whole_frames_end: int = 0  # byte offset after the last whole frame
    macroblocks: int = 0  # macroblocks of the frame it stops inside (0: it stops at a frame's end)
    frame_header: SliceHeader | None = None  # that frame's first slice header (None when ``macroblocks`` is 0)
    nal_header: int = 0  # that frame's NAL header byte
    references: int = 0  # reference frames that frame may use


@dataclass(frozen=True)
class AvcCheck:
    """The strict verdict on a stream: per frame and per macroblock.

    ``frames`` are the pictures the stream announces (slices with ``first_mb_in_slice`` 0, as
    ``AvcProfile.frame_count`` counts them); a frame is clean when it has exactly one cleanly parsed slice
    per macroblock, in order, consistent with the frames before it.
    """

    macroblocks_per_frame: int
    frame_clean: tuple[bool, ...]
    clean_macroblocks: int
    problems: tuple[str, ...]  # human-readable, the first error first; empty for a perfect stream
    first_error_offset: int  # byte offset in the stream of the first error, -1 when there is none
    # Macroblocks of the last frame that were never written: the stream stops inside a frame that was clean
    # so far (a sample cut by its token budget). 0 when the last frame is whole or went wrong.
    unwritten_macroblocks: int = 0
    clean_prefix: CleanPrefix = CleanPrefix()
    units: int = 0  # NAL units in the stream

    @property
    def frames(self) -> int:
        return len(self.frame_clean)

    @property
    def clean_frames(self) -> int:
        return sum(self.frame_clean)

    @property
    def leading_clean_frames(self) -> int:
        """Clean frames before the first unclean one: what later frames' references can rely on."""
        count = 0
        while count < self.frames and self.frame_clean[count]:
            count += 1
        return count

    @property
    def macroblocks(self) -> int:
        return self.frames * self.macroblocks_per_frame

    @property
    def cut_short(self) -> bool:
        """The stream stops inside its last frame, which was clean up to there."""
        return self.unwritten_macroblocks > 0

    @property
    def whole_frames(self) -> int:
        """Frames not cut short: the denominator of the clean share of what was actually written."""
        return self.frames - self.cut_short

    @property
    def ok(self) -> bool:
        return not self.problems and self.frames > 0


def parse_slice(params: Params, unit: bytes, offset: int, context: FrameContext) -> SliceResult:
    """Parse one slice NAL unit (without start code) completely."""
    header: SliceHeader | None = None
    removed: list[int] = []
    reader = BitReader(b"")
    try:
        if not unit:
            raise SyntaxProblem("an empty NAL unit", 0)
        nal_header = unit[0]
        nal_type, nal_ref_idc = nal_header & 0x1F, nal_header >> 5 & 3
        if nal_header & 0x80:
            raise SyntaxProblem("forbidden_zero_bit is 1", 0)
        if nal_type not in SLICE_TYPES:
            raise SyntaxProblem(f"NAL unit type {nal_type}: a stream holds only slices (types 1 and 5)", 0)
        if nal_type == NAL_IDR and not nal_ref_idc:
            raise SyntaxProblem("an IDR slice with nal_ref_idc 0", 0)
        rbsp, removed = unescape(unit[1:])
        reader = BitReader(rbsp)
        header = parse_slice_header(reader, params, nal_type, nal_ref_idc, context)
        kind = parse_slice_data(reader, params, header)
        return SliceResult(offset, header, kind, "", -1)
    except SyntaxProblem as problem:
        byte = (problem.bit if problem.bit >= 0 else reader.position) // 8
        byte += sum(1 for index in removed if index <= byte)  # back to a position in the escaped payload
        return SliceResult(offset, header, "", problem.reason, offset + 4 + byte, isinstance(problem, UnitEnded))


def parse_slice_data(reader: BitReader, params: Params, header: SliceHeader) -> str:
    """slice_data (7.3.4) of a one-macroblock slice, and the trailing bits."""
    if header.slice_type == P_SLICE:
        run = reader.ue()
        if run > params.macroblocks - header.first_mb:
            raise SyntaxProblem(f"mb_skip_run {run} runs past the frame's end", reader.position)
        if run > 1:
            raise SyntaxProblem(f"mb_skip_run {run} skips more than the slice's one macroblock", reader.position)
        if run == 1:
            if reader.more_rbsp_data():
                raise SyntaxProblem("more than one macroblock in a slice (the profile codes one per slice)",
                                    reader.position)
            reader.trailing_bits()
            return "P_Skip"
    kind = MacroblockParser(reader, params, header).parse()
    if reader.more_rbsp_data():
        raise SyntaxProblem("more than one macroblock in a slice (the profile codes one per slice)", reader.position)
    reader.trailing_bits()
    return kind


def check_stream(header: bytes, stream: bytes, max_frames: int | None = None) -> AvcCheck:
    """Check every slice of ``stream`` (the model's view: slices only) with the profile's ``header``.

    Frames past ``max_frames`` (a clip's length) are counted, unclean, without being parsed: that bounds
    the work on garbage.
    """
    params = parse_header(header)
    macroblocks = params.macroblocks
    problems: list[str] = []
    first_offset = -1
    prefix = CleanPrefix()

    def problem(offset: int, reason: str) -> None:
        nonlocal first_offset
        if first_offset < 0:
            first_offset = offset
        problems.append(f"byte {offset}: {reason}")

    units = nal_payloads(stream)
    if stream and (not units or units[0][0] > 0):
        problem(0, "bytes before the first start code")
    frames: list[bool] = []
    clean_mbs = 0
    references, frame_num = 0, 0  # decoded picture buffer: reference frames, and the next frame_num
    frame_ok, expected_mb, frame_mbs = False, macroblocks, 0
    frame_header: SliceHeader | None = None

    def close_frame() -> None:
        nonlocal references, frame_num, frame_ok
        if not frames:
            return
        if expected_mb != macroblocks:
            if frame_ok:
                problem(len(stream), f"frame {len(frames) - 1} ends after {expected_mb} of {macroblocks} macroblocks")
            frame_ok = False
        frames[-1] = frame_ok
        if frame_header is not None and frame_header.nal_ref_idc:  # the sliding window (8.2.5.3)
            references = min(references + 1, max(params.max_num_ref_frames, 1))
            frame_num = (frame_header.frame_num + 1) % (1 << params.log2_max_frame_num)

    for index, (offset, unit) in enumerate(units):
        starts = starts_picture(unit)
        if starts:
            close_frame()
            frames.append(False)
            frame_ok, expected_mb, frame_mbs, frame_header = True, 0, 0, None
            if unit[0] & 0x1F == NAL_IDR:
                references, frame_num = 0, 0
        if not frames:
            problem(offset, "a slice before the first frame's first macroblock")
            continue
        if max_frames is not None and len(frames) > max_frames:
            if starts and len(frames) == max_frames + 1:
                problem(offset, f"more than the profile's {max_frames} frames")
            frame_ok = False
            continue
        context = FrameContext(references, frame_num)
        result = parse_slice(params, unit, offset, context)
        if result.problem:
            problem(result.problem_offset, f"frame {len(frames) - 1}: {result.problem}")
            if result.unit_ended and index == len(units) - 1 and frame_ok:
                continue  # a stream cut inside its last macroblock: counted below as unwritten, not as garbage
            frame_ok = False
            expected_mb = max(expected_mb, (result.header.first_mb if result.header else expected_mb)) + 1
            continue
        head = result.header
        assert head is not None
        reason = ""
        if head.first_mb != expected_mb:
            reason = f"slice of macroblock {head.first_mb} where macroblock {expected_mb} comes next"
        elif frame_header is None and len(frames) == 1 and head.nal_type != NAL_IDR:
            reason = "the first frame is not an IDR picture"
        elif frame_header is not None and (head.nal_type, head.frame_num, head.idr_pic_id, bool(head.nal_ref_idc)) != (
                frame_header.nal_type, frame_header.frame_num, frame_header.idr_pic_id, bool(frame_header.nal_ref_idc)):
            reason = "slice header fields (NAL type, frame_num, idr_pic_id, nal_ref_idc) differ within the frame"
        elif (frame_header is not None and frame_header.raw_slice_type >= 5
              and head.slice_type != frame_header.slice_type):
            reason = f"slice_type {head.raw_slice_type} after slice_type {frame_header.raw_slice_type} in one frame"
        if frame_header is None:
            frame_header = head
        expected_mb = max(expected_mb, head.first_mb) + 1
        if reason:
            problem(offset, f"frame {len(frames) - 1}: {reason}")
            frame_ok = False
            continue
        frame_mbs += 1
        clean_mbs += 1
        if not problems:  # still the clean prefix: it grows by this slice
            end = units[index + 1][0] if index + 1 < len(units) else len(stream)
            if expected_mb == macroblocks:
                prefix = CleanPrefix(end, prefix.whole_frames + 1, end)
            else:
                prefix = CleanPrefix(end, prefix.whole_frames, prefix.whole_frames_end, expected_mb, frame_header,
                                     units[index][1][0], context.references)
    unwritten = macroblocks - expected_mb if frames and frame_ok and expected_mb < macroblocks else 0
    close_frame()
    return AvcCheck(macroblocks, tuple(frames), clean_mbs, tuple(problems), first_offset, unwritten, prefix,
                    len(units))
