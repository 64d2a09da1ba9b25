"""The AVC stream as a byte automaton that parses every slice down to the last bit of its macroblock.

A byte is allowed only if the stream can still be completed into one that FFmpeg's H.264 decoder decodes
with no error or concealment, every frame, under the profile's SPS and PPS. Tracked, byte by byte:

- NAL units: start codes (00 00 01 or 00 00 00 01), the NAL header (forbidden bit 0, nonzero nal_ref_idc
  so every picture is a reference, type 5 for an IDR frame, the first frame IDR, the same type for all
  slices of a frame), emulation prevention (after 00 00 only 03 or a byte >= 04; after 00 00 03 only a
  byte <= 03, and an 03 only where such a byte can follow); at most the profile's frames;
- the slice header, bit by bit, with the widths and values the SPS/PPS fix: ``first_mb_in_slice`` = the
  slice's macroblock (one per slice), slice_type 7 (I) or 5 (P, only with a reference frame), one type
  per frame, ``frame_num`` = frames since the IDR, ``idr_pic_id`` one per IDR frame and different from
  the previous IDR's, the active reference count within the decoded reference frames (up to the SPS's
  ``max_num_ref_frames``), no list modification or adaptive marking, the slice QP in 0..51 and the
  deblocking fields in range;
- the macroblock the encoder can emit (x264 baseline with ``partitions=none``): ``mb_skip_run`` 0 or 1
  (the slice's one macroblock), P_L0_16x16 (te(v) reference index, motion vector differences within the
  level's motion vector range; the prediction is 0 since no neighbour is available), I_NxN (the sixteen
  Intra_4x4 modes, only those whose neighbours are inside the macroblock), Intra_16x16 with DC
  prediction, I_PCM (alignment and 384 samples), chroma DC prediction, ``coded_block_pattern``,
  ``mb_qp_delta`` in -26..25;
- CAVLC residual blocks: ``coeff_token`` in the table nC selects (nC from blocks of the same macroblock),
  at most the block's coefficients, trailing-one signs, levels with suffix-length adaptation (level_prefix
  <= 15, the Baseline limit), ``total_zeros`` within the coefficients left, ``run_before`` within the
  zeros left; then ``rbsp_trailing_bits``, after which the NAL unit ends.

Every element is decoded through a table of its allowed codes and their prefixes, and every allowed value
leads to a syntax position with an allowed continuation, so constrained sampling never dead-ends; EOS is
allowed only after a frame's last slice. ``avc.syntax.check_stream`` is the independent judge: the slice syntax
is written twice on purpose (tests/test_avc_grammar.py holds the two together; see ``avc/__init__.py``).

A state is ``(frame context, local)``. The local part holds the position in the NAL unit: emulation
prevention (zero run, escape pending), the syntax position with what it needs (the header's slice and
frame facts, or in a macroblock only its slice type and active references, the Intra_4x4 modes and the
block coefficient counts nC needs) and the bits of the element being read. Transitions inside a NAL unit
depend only on the local part and are cached on it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Protocol

from shared.codec.avc.bytestream import NAL_IDR, SLICE_TYPES
from shared.codec.avc.syntax import parse_header, se_code, ue_code
from shared.codec.avc.tables import (
    CBP_INTER,
    CBP_INTRA,
    CHROMA_DC_TOTAL_ZEROS,
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

I_KIND, P_KIND = 7, 5  # slice_type values x264 writes: "all slices of the picture are I / P"
SC, NH, RB = 0, 1, 2  # local phases: start code, NAL header byte, RBSP bytes
MAX_IDR_PIC_ID = 15
CACHE_LIMIT = 1 << 20  # entries per transition cache
I16_DC_TYPES = (3, 7, 11, 15, 19, 23)  # I slice mb_types of Intra_16x16 with DC prediction
I_NXN, I_PCM = 0, 25
# the bytes that may come in a start code, and as a NAL header (forbidden bit 0, nal_ref_idc > 0, a slice)
START_CODE_BYTES = (0, 1)
NAL_HEADER_BYTES = tuple(byte for byte in range(256)
                         if not byte & 0x80 and (byte >> 5) & 3 and (byte & 0x1F) in SLICE_TYPES)
NO_VALUE = object()  # a code that is no allowed element's, nor a prefix of one
PREFIX = object()  # a code that is a proper prefix of an allowed element's


# ---------------------------------------------------------------------------------------------------
# Element code tables: every allowed code and every proper prefix of one
# ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Codes:
    values: dict[str, object]  # complete code -> value
    prefixes: frozenset[str]  # proper prefixes of allowed codes (the empty one included)

    def lookup(self, code: str) -> object:
        """The value ``code`` codes, PREFIX when it is a proper prefix of an allowed code, else NO_VALUE."""
        value = self.values.get(code, NO_VALUE)
        return PREFIX if value is NO_VALUE and code in self.prefixes else value


def _codes(values: dict[str, object]) -> Codes:
    if not values:
        raise ValueError("an element with no allowed value would dead-end the grammar")
    return Codes(values, frozenset(code[:cut] for code in values for cut in range(len(code))))


# Elements with thousands of codes (motion vector differences, level suffixes) are judged by their code's
# structure instead of tables listing every code and prefix: building those cost a fresh process ~0.3 s.


@dataclass(frozen=True)
class SignedGolomb:
    """se(v) restricted to ``low..high`` (which holds 0)."""

    low: int
    high: int
    most: int = field(init=False)  # leading zeros of the longest allowed code

    def __post_init__(self) -> None:
        object.__setattr__(self, "most", (max(2 * self.high - 1, -2 * self.low) + 1).bit_length() - 1)

    def lookup(self, code: str) -> object:
        zeros = len(code) - len(code.lstrip("0"))
        if zeros == len(code):
            return PREFIX if zeros <= self.most else NO_VALUE
        size = 2 * zeros + 1
        if len(code) > size:  # past a whole code
            return NO_VALUE
        if len(code) == size:
            value = se_value(int(code[zeros:], 2) - 1)
            return value if self.low <= value <= self.high else NO_VALUE
        # a proper prefix: the codes below it are the codeNums first..last
        rest, head = size - len(code), int(code[zeros:], 2)
        first, last = (head << rest) - 1, ((head + 1) << rest) - 2
        return PREFIX if self._holds(first, last) else NO_VALUE

    def _holds(self, first: int, last: int) -> bool:
        """Whether some codeNum in first..last codes a value in low..high (odd k: (k + 1) / 2, even: -k / 2)."""
        odd = first | 1
        if odd <= last and (odd + 1) // 2 <= self.high:
            return True
        even = first + (first & 1)
        return even <= last and -(even // 2) >= self.low


@dataclass(frozen=True)
class AnyBits:
    """u(n) with every value allowed."""

    size: int

    def lookup(self, code: str) -> object:
        if len(code) == self.size:
            return int(code, 2)
        return PREFIX if len(code) < self.size else NO_VALUE


def se_value(code_num: int) -> int:
    """The se(v) value of an Exp-Golomb codeNum (9.1.1)."""
    return (code_num + 1) // 2 if code_num % 2 else -(code_num // 2)


_READS: dict[tuple, tuple[int, object] | None] = {}


def read_code(codes: Codes | SignedGolomb | AnyBits, code: str, bits: int, count: int) -> tuple[int, object] | None:
    """An element's code read on from ``code`` (its bits so far) through the ``count`` bits of ``bits`` (most
    significant first): (bits used, value), (count, PREFIX) when the code goes on past them, or None when
    no allowed code starts so. Cached: tables are few (``element_codes``), and the same reads recur in every
    macroblock whatever else the parser holds."""
    key = (id(codes), code, bits, count)
    found = _READS.get(key, NO_VALUE)
    if found is NO_VALUE:
        found = None
        for used in range(1, count + 1):
            code += "1" if bits >> (count - used) & 1 else "0"
            value = codes.lookup(code)
            if value is NO_VALUE:
                break
            if value is not PREFIX or used == count:
                found = used, value
                break
        if len(_READS) >= CACHE_LIMIT:
            _READS.clear()
        _READS[key] = found
    return found


_BRANCHES: dict[tuple, tuple[tuple[int, int, object], ...]] = {}


def code_branches(codes: Codes | SignedGolomb | AnyBits, code: str, count: int) -> tuple[tuple[int, int, object], ...]:
    """Every way an element's code goes on from ``code`` through at most ``count`` bits: (bits used, those
    bits, value) for each allowed code that ends within them, and (count, bits, PREFIX) for each one that
    goes on past them. Cached, as ``read_code``."""
    key = (id(codes), code, count)
    found = _BRANCHES.get(key)
    if found is None:
        branches = []
        stack = [(0, 0, code)]
        while stack:
            used, bits, so_far = stack.pop()
            for bit in (0, 1):
                longer = so_far + ("1" if bit else "0")
                value = codes.lookup(longer)
                if value is NO_VALUE:
                    continue
                if value is not PREFIX or used + 1 == count:
                    branches.append((used + 1, bits << 1 | bit, value))
                else:
                    stack.append((used + 1, bits << 1 | bit, longer))
        if len(_BRANCHES) >= CACHE_LIMIT:
            _BRANCHES.clear()
        found = _BRANCHES[key] = tuple(branches)
    return found


@lru_cache(maxsize=None)
def element_codes(key: tuple) -> Codes | SignedGolomb | AnyBits:
    """The codes of one syntax element, by key: ("ue", allowed values), ("se", low, high), ("bits", n),
    ("u", n, allowed values),
    ("te", active), ("i4", predicted mode, left available, top available), ("coeff", table, max),
    ("zeros", total, max, chroma DC), ("run", zeros left), ("prefix",)."""
    kind = key[0]
    if kind == "ue":
        return _codes({ue_code(value): value for value in key[1]})
    if kind == "se":
        if not key[1] <= 0 <= key[2]:
            return _codes({se_code(value): value for value in range(key[1], key[2] + 1)})
        return SignedGolomb(key[1], key[2])
    if kind == "bits":
        return AnyBits(key[1]) if key[1] else _codes({"": 0})
    if kind == "u":  # u(n) restricted to some values
        return _codes({format(value, f"0{key[1]}b"): value for value in key[2]})
    if kind == "te":  # te(v): one inverted bit for two references, ue(v) for more
        active = key[1]
        if active == 2:
            return _codes({"1": 0, "0": 1})
        return _codes({ue_code(value): value for value in range(active)})
    if kind == "i4":
        predicted, left, top = key[1:]
        allowed = {mode for mode in range(9) if (left or mode not in INTRA4X4_NEEDS_LEFT)
                   and (top or mode not in INTRA4X4_NEEDS_TOP)}
        codes = {"1": predicted} if predicted in allowed else {}
        for rem in range(8):
            mode = rem if rem < predicted else rem + 1
            if mode in allowed:
                codes["0" + format(rem, "03b")] = mode
        return _codes(codes)
    if kind == "coeff":
        table, most = key[1:]
        return _codes({code: value for code, value in COEFF_TOKEN[table].items() if value[0] <= most})
    if kind == "zeros":
        total, most, chroma_dc = key[1:]
        table = CHROMA_DC_TOTAL_ZEROS[total - 1] if chroma_dc else TOTAL_ZEROS[total - 1]
        return _codes({code: value for code, value in table.items() if value <= most - total})
    if kind == "run":
        left = key[1]
        return _codes({code: value for code, value in RUN_BEFORE[min(left, 7) - 1].items() if value <= left})
    if kind == "prefix":  # level_prefix: leading zeros then a one, at most 15 zeros (Baseline)
        return _codes({"0" * zeros + "1": zeros for zeros in range(16)})
    raise ValueError(f"unknown element {key!r}")


# ---------------------------------------------------------------------------------------------------
# Residual layouts
# ---------------------------------------------------------------------------------------------------

# A residual block: (kind, index, coefficients); kinds: "dc" Intra16x16 DC, "luma" 4x4 (index 0..15),
# "cdc" chroma DC (index = plane), "cac" chroma AC (index = 4 * plane + block).
Block = tuple[str, int, int]


@lru_cache(maxsize=None)
def residual_layout(intra16: bool, luma_cbp: int, chroma_cbp: int) -> tuple[Block, ...]:
    """The residual blocks of a macroblock in bitstream order (7.3.5.3)."""
    blocks: list[Block] = [("dc", 0, 16)] if intra16 else []
    blocks += [("luma", index, 15 if intra16 else 16) for index in range(16) if luma_cbp >> (index // 4) & 1]
    if chroma_cbp:
        blocks += [("cdc", plane, 4) for plane in range(2)]
    if chroma_cbp == 2:
        blocks += [("cac", 4 * plane + index, 15) for plane in range(2) for index in range(4)]
    return tuple(blocks)


_LAYOUTS: dict[tuple, tuple[Block, ...]] = {}


def blocks_of(layout: tuple) -> tuple[Block, ...]:
    """``residual_layout`` of a (Intra_16x16?, luma cbp, chroma cbp) tuple: a dictionary lookup, as the
    grammar asks it for every residual element."""
    blocks = _LAYOUTS.get(layout)
    if blocks is None:
        blocks = _LAYOUTS[layout] = residual_layout(*layout)
    return blocks


def block_nc(block: Block, counts: tuple[int, ...]) -> int:
    """nC of a block from the counts of the same macroblock's blocks (luma 0..15, chroma AC 16..23)."""
    kind, index, _ = block
    if kind == "cdc":
        return -1
    if kind == "dc":
        return 0  # block 0's neighbours lie outside the macroblock
    if kind == "luma":
        x, y = LUMA_XY[index]
        left = counts[LUMA_INDEX[(x - 1, y)]] if x else None
        top = counts[LUMA_INDEX[(x, y - 1)]] if y else None
    else:
        base, block_index = 16 + 4 * (index // 4), index % 4
        left = counts[base + block_index - 1] if block_index % 2 else None
        top = counts[base + block_index - 2] if block_index >= 2 else None
    if left is not None and top is not None:
        return (left + top + 1) >> 1
    return left if left is not None else top if top is not None else 0


# ---------------------------------------------------------------------------------------------------
# The grammar
# ---------------------------------------------------------------------------------------------------


class ClipLayout(Protocol):
    """What the grammar needs of a profile (``AvcProfile`` is one): its parameter sets and clip size."""

    @property
    def name(self) -> str: ...
    @property
    def header(self) -> bytes: ...  # the SPS and PPS, Annex-B
    @property
    def macroblocks(self) -> int: ...  # per frame: one slice each
    @property
    def max_frames(self) -> int: ...


@dataclass
class AvcGrammar:
    profile: ClipLayout
    _cache: dict = field(default_factory=dict, repr=False)  # (local state, byte) -> local state
    _bytes: dict = field(default_factory=dict, repr=False)  # (parser, RBSP byte) -> (ended, parser)
    _next: dict = field(default_factory=dict, repr=False)  # local state -> {allowed byte: local state}

    def __post_init__(self) -> None:
        params = parse_header(self.profile.header)
        if params.poc_type != 2 or not params.deblocking_control or params.redundant_pic_cnt:
            raise ValueError(f"{self.profile.name}: the grammar knows x264's baseline parameter sets "
                             "(POC type 2, deblocking control, no redundant pictures)")
        self.params = params
        self.slices = self.profile.macroblocks
        if params.macroblocks != self.slices:
            raise ValueError(f"{self.profile.name}: the SPS has {params.macroblocks} macroblocks, the profile "
                             f"{self.slices}")
        self.frames = self.profile.max_frames
        self.frame_num_bits = params.log2_max_frame_num
        self.max_refs = max(1, params.max_num_ref_frames)
        self.mv_vertical = params.max_mv_vertical

    # --- the ByteGrammar interface -------------------------------------------------------------------
    # glob: (frame, slice, frame NAL type, frame slice_type, idr_pic_id of the latest IDR, frames since it)

    def start(self) -> tuple:
        return (0, -1, 0, 0, -1, 0), (SC, 0, None)

    def is_done(self, state: tuple) -> bool:
        glob, local = state
        return local[0] == SC and local[1] == 0 and self._following(glob) is None

    def can_end(self, state: tuple) -> bool:
        glob, local = state
        return local[0] == SC and local[1] == 0 and glob[1] == self.slices - 1

    def cache_key(self, state: tuple) -> tuple:
        return state

    def mask_is_cheap(self, state: tuple) -> bool:
        """A hint for samplers: between slices and in slice headers few tokens can follow (the header's
        values are mostly fixed), so a whole mask is cheap there; inside a macroblock it is not."""
        local = state[1]
        return local[0] != RB or local[3][1][0] in HEADER_ELEMENTS

    def step(self, state: tuple, byte: int) -> tuple | None:
        glob, local = state
        if local[0] == RB:
            key = (local, byte)
            cached = self._cache.get(key, False)
            if cached is False:
                cached = self._rbsp_byte(local, byte)
                self._remember(self._cache, key, cached)
            return None if cached is None else (glob, cached)
        if local[0] == SC:
            zeros = local[1]
            if byte == 0:
                return (glob, (SC, zeros + 1, local[2])) if zeros < 3 else None
            if byte == 1 and zeros >= 2 and self._following(glob) is not None:
                return self._begin_unit(glob, local[2]), (NH,)
            return None
        return self._nal_header(glob, byte)

    # --- NAL units -----------------------------------------------------------------------------------

    def _following(self, glob: tuple) -> tuple[int, int] | None:
        """(frame, slice) of the next NAL unit, or None when the clip is full."""
        frame, slice_ = glob[0], glob[1]
        if slice_ < 0:
            return 0, 0
        if slice_ + 1 < self.slices:
            return frame, slice_ + 1
        return (frame + 1, 0) if frame + 1 < self.frames else None

    def _begin_unit(self, glob: tuple, facts: tuple | None) -> tuple:
        """The frame context for the next slice; the facts of a frame's first slice become the frame's."""
        frame, slice_, nal_type, kind, idr_id, since = glob
        if slice_ == 0 and facts is not None:
            kind = facts[0]
            idr_id = facts[1] if facts[1] >= 0 else idr_id  # a P or I frame keeps the latest IDR's id
        next_frame, next_slice = self._following(glob)
        return next_frame, next_slice, nal_type, kind, idr_id, since

    def _nal_header(self, glob: tuple, byte: int) -> tuple | None:
        frame, slice_, nal_type, kind, idr_id, since = glob
        unit_type, ref_idc = byte & 0x1F, byte >> 5 & 3
        if byte & 0x80 or unit_type not in SLICE_TYPES or ref_idc == 0:
            return None
        if slice_ == 0:  # a frame's first slice sets the frame's type
            if frame == 0 and unit_type != NAL_IDR:
                return None
            nal_type, kind = unit_type, 0
            since = 0 if unit_type == NAL_IDR else since + 1
        elif unit_type != nal_type:
            return None
        glob = frame, slice_, nal_type, kind, idr_id, since
        refs = 0 if nal_type == NAL_IDR else min(since, self.max_refs)
        # idr_pic_id: the frame's own after its first slice; a new one, unlike the last IDR's, in it
        idr_rule = (idr_id, slice_ > 0) if nal_type == NAL_IDR else None
        header = (slice_, nal_type, kind if slice_ else 0, since % (1 << self.frame_num_bits), refs, idr_rule)
        return glob, (RB, 0, False, (header, ("first",), ""))

    # --- RBSP bytes: emulation prevention, then eight bits --------------------------------------------
    # A parser state is (context, position, bits of the element so far). Most states of a macroblock are
    # met once, so the transition caches are cleared when they grow past CACHE_LIMIT entries.

    def _remember(self, cache: dict, key: object, value: object) -> None:
        if len(cache) >= CACHE_LIMIT:
            cache.clear()
        cache[key] = value

    def _rbsp_byte(self, local: tuple, byte: int) -> tuple | None:
        _, zeros, escaped, parser = local
        if escaped:
            if byte > 3:
                return None
        elif zeros >= 2:
            if byte == 3:  # an emulation prevention byte: only where a byte <= 03 can follow
                if all(self._byte(parser, value) is None for value in range(4)):
                    return None
                return RB, 0, True, parser
            if byte < 3:
                return None
        after = self._byte(parser, byte)
        if after is None:
            return None
        ended, parser = after
        if ended:  # rbsp_trailing_bits are complete: the NAL unit ends here
            context = parser[0]
            return SC, 0, (context[0], context[2])
        return RB, zeros + 1 if byte == 0 else 0, False, parser

    def _byte(self, parser: tuple, byte: int) -> tuple[bool, tuple] | None:
        """(NAL unit ends, parser) after an RBSP byte, or None."""
        key = (parser, byte)
        cached = self._bytes.get(key, False)
        if cached is False:
            cached = self._walk_byte(parser, byte)
            self._remember(self._bytes, key, cached)
        return cached

    def _walk_byte(self, parser: tuple, byte: int) -> tuple[bool, tuple] | None:
        """The eight bits of an RBSP byte, element by element: each element's code is read from the byte's
        bits at once (``read_code``, cached on the element's table and the bits, not on the parser), so a
        byte costs a few element steps, not eight bit steps, also the first time a parser state is met."""
        context, position, code = parser
        left = 8
        while left:
            tag = position[0]
            if tag == "align" or tag == "pcm_align":  # zero bits up to the byte boundary
                if byte & ((1 << left) - 1):
                    return None
                break
            if tag == "pcm":  # raw samples: any bits (they start at a byte boundary)
                rest = position[1] - left
                context, position, code, left = context, (("pcm", rest) if rest else ("trail",)), "", 0
                break
            read = read_code(element_codes(self._element(context, position)), code, byte & ((1 << left) - 1), left)
            if read is None:
                return None
            used, value = read
            if value is PREFIX:  # the element goes on into the next byte
                return self._byte_done(context, position, code + format(byte & ((1 << left) - 1), f"0{left}b"))
            context, position = self._after(context, position, value)
            code, left = "", left - used
        return self._byte_done(context, position, code)

    def _byte_done(self, context: tuple, position: tuple, code: str) -> tuple[bool, tuple]:
        """(the NAL unit ends, parser) at a byte boundary."""
        if position[0] == "pcm_align":  # at a byte boundary the samples begin
            return False, (context, ("pcm", 8 * 384), "")
        return position[0] == "align", (context, position, code)

    def _byte_walks(self, parser: tuple) -> dict[int, tuple[bool, tuple]]:
        """Every RBSP byte the parser allows, with what it leads to: element by element, each element's
        codes that fit in the bits left (``code_branches``, cached without the parser's context), so a
        forbidden prefix rules out all the bytes that share it at once."""
        found: dict[int, tuple[bool, tuple]] = {}
        context, position, code = parser
        stack = [(8, 0, context, position, code)]
        while stack:
            left, high, context, position, code = stack.pop()
            tag = position[0]
            if not left or tag == "align" or tag == "pcm_align":  # the byte is full, or zero bits fill it
                found[high << left] = self._byte_done(context, position, code)
                continue
            if tag == "pcm":  # raw samples: any bits (they start at a byte boundary)
                rest = position[1] - left
                after = self._byte_done(context, ("pcm", rest) if rest else ("trail",), "")
                found.update(dict.fromkeys(range(high << left, (high + 1) << left), after))
                continue
            for used, bits, value in code_branches(element_codes(self._element(context, position)), code, left):
                if value is PREFIX:  # the element goes on into the next byte (used == left)
                    found[high << left | bits] = self._byte_done(context, position, code + format(bits, f"0{used}b"))
                else:
                    stack.append((left - used, high << used | bits, *self._after(context, position, value), ""))
        return found

    def next_bytes(self, state: tuple, among: Iterable[int] = range(256)) -> dict[int, tuple]:
        """The bytes of ``among`` allowed after ``state``, with the states they lead to (what ``step`` gives
        byte by byte, for a fraction of the work inside a NAL unit); cached on the local part, like ``step``."""
        glob, local = state
        if local[0] != RB:  # a start code's or a NAL header's byte: only a few can be allowed
            return {byte: after for byte in (START_CODE_BYTES if local[0] == SC else NAL_HEADER_BYTES)
                    if byte in among and (after := self.step(state, byte)) is not None}
        cached = self._next.get(local)
        if cached is None:
            cached = self._rbsp_bytes(local)
            self._remember(self._next, local, cached)
        return {byte: (glob, cached[byte]) for byte in among if byte in cached}

    def _rbsp_bytes(self, local: tuple) -> dict[int, tuple]:
        """``_rbsp_byte`` for every byte at once."""
        _, zeros, escaped, parser = local
        walks = self._byte_walks(parser)
        found = {}
        for byte, (ended, after) in walks.items():
            if (escaped and byte > 3) or (not escaped and zeros >= 2 and byte < 4):
                continue
            if ended:
                context = after[0]
                found[byte] = SC, 0, (context[0], context[2])
            else:
                found[byte] = RB, zeros + 1 if byte == 0 else 0, False, after
        if not escaped and zeros >= 2 and any(byte < 4 for byte in walks):  # an emulation prevention byte
            found[3] = RB, 0, True, parser
        return found

    # --- syntax: which element comes at a position, and where its value leads ----------------------------

    def _element(self, context: tuple, position: tuple) -> tuple:
        tag = position[0]
        if tag in HEADER_ELEMENTS:
            return self._header_element(context, tag)
        if tag == "skip":
            return "ue", (0, 1)
        if tag == "mb_type":
            return "ue", ((0, 5, *(5 + t for t in I16_DC_TYPES), 30) if context[0] == P_KIND
                          else (I_NXN, *I16_DC_TYPES, I_PCM))
        if tag == "ref":
            return "te", context[1]
        if tag == "mvd_x":
            return "se", -8192, 8191
        if tag == "mvd_y":
            return "se", -self.mv_vertical, self.mv_vertical - 1
        if tag == "i4":
            block, modes = position[1], position[2]
            x, y = LUMA_XY[block]
            predicted = DC_PRED if x == 0 or y == 0 else min(modes[LUMA_INDEX[(x - 1, y)]],
                                                              modes[LUMA_INDEX[(x, y - 1)]])
            return "i4", predicted, x > 0, y > 0
        if tag == "chroma":
            return "ue", (0,)
        if tag == "cbp":
            return "ue", tuple(range(48))
        if tag == "qp_delta":
            return "se", -26, 25
        if tag == "trail":  # the stop bit
            return "ue", (0,)
        if tag == "res":
            return self._residual_element(position)
        raise AssertionError(f"no element at {position!r}")

    def _header_element(self, context: tuple, tag: str) -> tuple:
        slice_, nal_type, kind, frame_num, refs, idr_rule = context
        if tag == "first":
            return "ue", (slice_,)
        if tag == "type":
            if nal_type == NAL_IDR:
                return "ue", (I_KIND,)
            return "ue", (kind,) if kind else (P_KIND, I_KIND)
        if tag == "pps":
            return "ue", (0,)
        if tag == "frame_num":
            return "u", self.frame_num_bits, (0 if nal_type == NAL_IDR else frame_num,)
        if tag == "idr":
            idr_id, fixed = idr_rule
            return "ue", (idr_id,) if fixed else tuple(v for v in range(MAX_IDR_PIC_ID + 1) if v != idr_id)
        if tag == "override":  # the PPS's default count of active references, or fewer
            return "u", 1, (1,) if self.params.num_ref_idx_default > refs else (0, 1)
        if tag == "active":
            return "ue", tuple(range(refs))
        if tag in ("modification", "marking"):
            return "u", 1 if tag == "modification" or nal_type != NAL_IDR else 2, (0,)
        if tag == "qp":
            return "se", -self.params.pic_init_qp, 51 - self.params.pic_init_qp
        if tag == "deblock":
            return "ue", (0, 1, 2)
        return "se", -6, 6  # alpha, beta

    def _after(self, context: tuple, position: tuple, value: object) -> tuple[tuple, tuple]:
        tag = position[0]
        if tag in HEADER_ELEMENTS:
            return self._after_header(context, position, value)
        if tag == "skip":
            return (context, ("trail",)) if value else (context, ("mb_type",))
        if tag == "mb_type":
            return context, self._after_mb_type(context, value)
        if tag == "ref":
            return context, ("mvd_x",)
        if tag == "mvd_x":
            return context, ("mvd_y",)
        if tag == "mvd_y":
            return context, ("cbp", False)
        if tag == "i4":
            block, modes = position[1], position[2] + (value,)
            return context, (("i4", block + 1, modes) if block < 15 else ("chroma", None))
        if tag == "chroma":
            return context, (("cbp", True) if position[1] is None else ("qp_delta", position[1]))
        if tag == "cbp":
            cbp = (CBP_INTRA if position[1] else CBP_INTER)[value]
            if not cbp:
                return context, ("trail",)
            return context, ("qp_delta", (False, cbp & 15, cbp >> 4))
        if tag == "qp_delta":
            return context, self._first_block(position[1])
        if tag == "trail":
            return context, ("align",)
        if tag == "res":
            return context, self._after_residual(position, value)
        raise AssertionError(f"no element at {position!r}")

    def _after_header(self, context: tuple, position: tuple, value: object) -> tuple[tuple, tuple]:
        tag = position[0]
        slice_, nal_type, kind, frame_num, refs, idr_rule = context
        facts = position[1] if len(position) > 1 else (0, -1)  # (slice_type, idr_pic_id) so far
        if tag == "type":
            facts = (value, -1)
        elif tag == "idr":
            facts = (facts[0], value)
        elif tag == "active":
            facts = facts + (value + 1,)
        elif tag == "override" and value == 0:
            facts = facts + (self.params.num_ref_idx_default,)
        following = {"first": "type", "type": "pps", "pps": "frame_num",
                     "frame_num": "idr" if nal_type == NAL_IDR else "override" if facts[0] == P_KIND else "marking",
                     "idr": "marking", "override": "active" if value else "modification", "active": "modification",
                     "modification": "marking", "marking": "qp", "qp": "deblock",
                     "deblock": "alpha" if value != 1 else None, "alpha": "beta", "beta": None}[tag]
        if following is not None:
            return context, (following, facts)
        # the slice data: the macroblock context is (slice_type, active references, idr_pic_id)
        slice_type, idr_id = facts[0], facts[1]
        active = facts[2] if len(facts) > 2 else 0
        return (slice_type, active, idr_id), (("skip",) if slice_type == P_KIND else ("mb_type",))

    def _after_mb_type(self, context: tuple, mb_type: int) -> tuple:
        if context[0] == P_KIND:
            if mb_type == 0:  # P_L0_16x16
                return ("ref",) if context[1] > 1 else ("mvd_x",)
            mb_type -= 5
        if mb_type == I_NXN:
            return "i4", 0, ()
        if mb_type == I_PCM:
            return ("pcm_align",)
        return "chroma", (True, 15 if mb_type > 12 else 0, (mb_type - 1) // 4 % 3)

    # --- residual blocks -------------------------------------------------------------------------------
    # position: ("res", layout, block, counts, sub); layout: (Intra_16x16?, luma cbp, chroma cbp), whose
    # blocks ``residual_layout`` lists; sub one of ("token",), ("signs", total, ones),
    # ("prefix", total, ones, k, suffix_length), ("suffix", total, ones, k, suffix_length, prefix),
    # ("zeros", total), ("run", runs left, zeros left); counts: TotalCoeff of luma 0..15, chroma AC 16..23.

    def _first_block(self, layout: tuple) -> tuple:
        return ("res", layout, 0, (0,) * 24, ("token",)) if blocks_of(layout) else ("trail",)

    def _residual_element(self, position: tuple) -> tuple:
        _, layout, index, counts, sub = position
        block = blocks_of(layout)[index]
        stage = sub[0]
        if stage == "token":
            return "coeff", coeff_token_table(block_nc(block, counts)), block[2]
        if stage == "signs":
            return "bits", sub[2]
        if stage == "prefix":
            return ("prefix",)
        if stage == "suffix":
            return "bits", suffix_size(sub[5], sub[4])
        if stage == "zeros":
            return "zeros", sub[1], block[2], block[0] == "cdc"
        return "run", sub[2]

    def _after_residual(self, position: tuple, value: object) -> tuple:
        _, layout, index, counts, sub = position
        block = blocks_of(layout)[index]
        stage = sub[0]
        if stage == "token":
            total, ones = value
            if block[0] == "luma":
                counts = counts[:block[1]] + (total,) + counts[block[1] + 1:]
            elif block[0] == "cac":
                counts = counts[:16 + block[1]] + (total,) + counts[17 + block[1]:]
            if not total:
                return self._next_block(layout, index, counts)
            if ones:
                return "res", layout, index, counts, ("signs", total, ones)
            return self._levels(layout, index, counts, total, ones, ones, 1 if total > 10 and ones < 3 else 0)
        if stage == "signs":
            total, ones = sub[1], sub[2]
            return self._levels(layout, index, counts, total, ones, ones, 1 if total > 10 and ones < 3 else 0)
        if stage == "prefix":
            _, total, ones, k, suffix_length = sub
            if suffix_size(value, suffix_length):
                return "res", layout, index, counts, ("suffix", total, ones, k, suffix_length, value)
            return self._level_done(layout, index, counts, total, ones, k, suffix_length, value, 0)
        if stage == "suffix":
            _, total, ones, k, suffix_length, prefix = sub
            return self._level_done(layout, index, counts, total, ones, k, suffix_length, prefix, value)
        if stage == "zeros":
            total, zeros = sub[1], value
            if zeros and total > 1:
                return "res", layout, index, counts, ("run", total - 1, zeros)
            return self._next_block(layout, index, counts)
        runs, zeros = sub[1] - 1, sub[2] - value
        if runs and zeros:
            return "res", layout, index, counts, ("run", runs, zeros)
        return self._next_block(layout, index, counts)

    def _levels(self, layout: tuple, index: int, counts: tuple, total: int, ones: int, k: int,
                suffix_length: int) -> tuple:
        if k < total:
            return "res", layout, index, counts, ("prefix", total, ones, k, suffix_length)
        if total < blocks_of(layout)[index][2]:
            return "res", layout, index, counts, ("zeros", total)
        return self._next_block(layout, index, counts)

    def _level_done(self, layout: tuple, index: int, counts: tuple, total: int, ones: int, k: int,
                    suffix_length: int, prefix: int, suffix: int) -> tuple:
        """9.2.2.1: the level's magnitude decides the next suffix length."""
        code = (min(15, prefix) << suffix_length) + suffix
        if prefix >= 15 and suffix_length == 0:
            code += 15
        if k == ones and ones < 3:
            code += 2
        magnitude = (code + 2) >> 1
        suffix_length = max(suffix_length, 1)
        if magnitude > 3 << (suffix_length - 1) and suffix_length < 6:
            suffix_length += 1
        return self._levels(layout, index, counts, total, ones, k + 1, suffix_length)

    def _next_block(self, layout: tuple, index: int, counts: tuple) -> tuple:
        if index + 1 < len(blocks_of(layout)):
            return "res", layout, index + 1, counts, ("token",)
        return ("trail",)


def suffix_size(prefix: int, suffix_length: int) -> int:
    """levelSuffixSize (9.2.2.1)."""
    if prefix == 14 and suffix_length == 0:
        return 4
    return prefix - 3 if prefix >= 15 else suffix_length


HEADER_ELEMENTS = frozenset({"first", "type", "pps", "frame_num", "idr", "override", "active", "modification",
                             "marking", "qp", "deblock", "alpha", "beta"})
