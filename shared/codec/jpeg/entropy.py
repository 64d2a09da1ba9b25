"""Entropy-level checks of baseline JPEG scans: what "this stream really decodes" means.

libjpeg (and so Pillow) "decodes" almost anything: corrupt entropy-coded data only raises warnings
and fills grey. A model's output is therefore judged here, with the profile's own Huffman tables:
each restart interval must Huffman-decode to exactly its MCUs (every block's coefficients within
the 64-entry zig-zag), end in 1-bit padding, and contain no stray markers.

The scanner works on one restart interval at a time with a 16-bit lookup table per Huffman table,
so checking a 256x256 image costs a few milliseconds of Python.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

RESTART_MARKER = re.compile(rb"\xff[\xd0-\xd7]")
EOI = b"\xff\xd9"


@dataclass(frozen=True)
class HuffmanTable:
    lookup: tuple[int, ...]  # next 16 bits -> (symbol << 8) | code length, or -1 for no code
    codes: dict[int, tuple[int, int]]  # symbol -> (code, length), for writing


@dataclass(frozen=True)
class ScanLayout:
    """What the scanner needs from a JPEG header (SOF0 + DHT + DRI + SOS)."""

    width: int
    height: int
    mcus: int  # MCUs in the whole image
    restart_interval: int  # MCUs per restart interval; 0 = no restart markers
    blocks: tuple[tuple[HuffmanTable, HuffmanTable], ...]  # (DC, AC) table of each block of an MCU

    @property
    def intervals(self) -> int:
        return -(-self.mcus // self.restart_interval) if self.restart_interval else 1

    def interval_mcus(self, index: int) -> int:
        """MCUs in restart interval ``index`` (the last one may be short)."""
        if not self.restart_interval:
            return self.mcus
        return min(self.restart_interval, self.mcus - index * self.restart_interval)


def _build_table(counts: bytes, symbols: bytes) -> HuffmanTable:
    lookup = [-1] * 65536
    codes: dict[int, tuple[int, int]] = {}
    code, position = 0, 0
    for length in range(1, 17):
        for _ in range(counts[length - 1]):
            symbol = symbols[position]
            position += 1
            codes[symbol] = (code, length)
            start = code << (16 - length)
            span = 1 << (16 - length)
            lookup[start:start + span] = [(symbol << 8) | length] * span
            code += 1
        code <<= 1
    return HuffmanTable(tuple(lookup), codes)


@lru_cache(maxsize=16)
def parse_header(header: bytes) -> ScanLayout:
    """Parse a baseline JPEG header (SOI … SOS) into the layout the scanner needs."""
    if header[:2] != b"\xff\xd8":
        raise ValueError("JPEG header must start with SOI (FF D8)")
    tables: dict[tuple[int, int], HuffmanTable] = {}
    frame_components: dict[int, tuple[int, int]] = {}
    restart_interval = 0
    width = height = 0
    position = 2
    while position < len(header):
        if header[position] != 0xFF:
            raise ValueError(f"expected a marker at header byte {position}")
        marker = header[position + 1]
        length = int.from_bytes(header[position + 2:position + 4], "big")
        body = header[position + 4:position + 2 + length]
        if marker == 0xC4:  # DHT: one or more tables
            offset = 0
            while offset < len(body):
                table_class, table_id = body[offset] >> 4, body[offset] & 15
                counts = body[offset + 1:offset + 17]
                symbols = body[offset + 17:offset + 17 + sum(counts)]
                tables[(table_class, table_id)] = _build_table(counts, symbols)
                offset += 17 + sum(counts)
        elif marker == 0xC0:  # SOF0: baseline frame
            height = int.from_bytes(body[1:3], "big")
            width = int.from_bytes(body[3:5], "big")
            for index in range(body[5]):
                component_id, sampling = body[6 + 3 * index], body[7 + 3 * index]
                frame_components[component_id] = (sampling >> 4, sampling & 15)
        elif marker in (0xC1, 0xC2, 0xC3):
            raise ValueError("only baseline (SOF0) JPEG is supported")
        elif marker == 0xDD:
            restart_interval = int.from_bytes(body[0:2], "big")
        elif marker == 0xDA:  # SOS: the scan's components and their tables; the header ends here
            max_h = max(h for h, _ in frame_components.values())
            max_v = max(v for _, v in frame_components.values())
            mcus = -(-width // (8 * max_h)) * -(-height // (8 * max_v))
            blocks = []
            for index in range(body[0]):
                component_id, selectors = body[1 + 2 * index], body[2 + 2 * index]
                h, v = frame_components[component_id]
                dc, ac = tables[(0, selectors >> 4)], tables[(1, selectors & 15)]
                blocks += [(dc, ac)] * (h * v)
            if body[0] != len(frame_components):
                raise ValueError("only interleaved scans of all components are supported")
            return ScanLayout(width, height, mcus, restart_interval, tuple(blocks))
        position += 2 + length
    raise ValueError("JPEG header has no SOS segment")


def interval_is_valid(layout: ScanLayout, data: bytes, mcus: int) -> bool:
    """True when one restart interval's bytes Huffman-decode to exactly ``mcus`` MCUs.

    ``data`` excludes the restart marker. Byte stuffing must be exact (every FF followed by 00),
    the decode must end inside the last byte and the remaining bits must be the 1-bit padding.
    """
    if data.count(b"\xff") != data.count(b"\xff\x00"):
        return False
    bits = data.replace(b"\xff\x00", b"\xff")
    total_bits = 8 * len(bits)
    padded = bits + b"\x00\x00\x00"
    position = 0

    def peek16(at: int) -> int:
        byte = at >> 3
        window = (padded[byte] << 16) | (padded[byte + 1] << 8) | padded[byte + 2]
        return (window >> (8 - (at & 7))) & 0xFFFF

    for _ in range(mcus):
        for dc, ac in layout.blocks:
            entry = dc.lookup[peek16(position)]
            if entry < 0 or (entry >> 8) > 11:
                return False
            position += (entry & 0xFF) + (entry >> 8)
            k = 1
            while k < 64:
                if position > total_bits:
                    return False
                entry = ac.lookup[peek16(position)]
                if entry < 0:
                    return False
                position += entry & 0xFF
                run, size = (entry >> 12) & 15, (entry >> 8) & 15
                if size == 0:
                    if run != 15:
                        break  # end of block
                    k += 16  # sixteen zeros
                    continue
                k += run
                if k > 63:
                    return False
                position += size
                k += 1
            if k > 64 or position > total_bits:
                return False
    left = total_bits - position
    if left >= 8:
        return False
    return left == 0 or (bits[-1] & ((1 << left) - 1)) == (1 << left) - 1


def neutral_interval(layout: ScanLayout, mcus: int) -> bytes:
    """Entropy-coded bytes of ``mcus`` all-zero MCUs: mid-grey, a valid filler for missing data.

    Every restart interval resets the DC predictors, so a zero DC difference is grey whatever came before.
    """
    code, length = 0, 0
    for _ in range(mcus):
        for dc, ac in layout.blocks:
            for symbol_code, symbol_length in (dc.codes[0], ac.codes[0]):  # DC category 0, end of block
                code = (code << symbol_length) | symbol_code
                length += symbol_length
    padding = -length % 8
    code = (code << padding) | ((1 << padding) - 1)
    raw = code.to_bytes((length + padding) // 8, "big")
    return raw.replace(b"\xff", b"\xff\x00")


@dataclass(frozen=True)
class ScanCheck:
    """The result of checking a whole stream: which intervals are valid and what else is wrong."""

    intervals: tuple[bytes, ...]  # the stream's restart intervals (markers removed), as many as the image has at most
    valid: tuple[bool, ...]  # per interval above
    valid_mcus: int
    problems: tuple[str, ...]  # human-readable, empty for a perfect stream

    @property
    def ok(self) -> bool:
        return not self.problems


def check_stream(layout: ScanLayout, stream: bytes) -> ScanCheck:
    """Split a stream at its restart markers and check every interval against the layout."""
    problems: list[str] = []
    end = stream.find(EOI)
    if end >= 0:
        problems.append(f"EOI inside the stream at byte {end}; data after it ignored")
        stream = stream[:end]
    if layout.restart_interval:
        markers = list(RESTART_MARKER.finditer(stream))
        starts, ends = [0] + [m.end() for m in markers], [m.start() for m in markers] + [len(stream)]
        pieces = [stream[a:b] for a, b in zip(starts, ends)]
        for index, match in enumerate(markers):
            if match.group()[1] != 0xD0 + index % 8:
                problems.append(f"restart marker {index} is RST{match.group()[1] - 0xD0}, expected RST{index % 8}")
                break
    else:
        pieces = [stream]
    if pieces and not pieces[-1] and len(pieces) - 1 < layout.intervals:
        pieces.pop()  # a stream cut right after a marker (a prompt) has no partial interval
    if len(pieces) > layout.intervals:
        problems.append(f"{len(pieces) - layout.intervals} restart intervals beyond the image's {layout.intervals}")
        pieces = pieces[:layout.intervals]
    valid = tuple(interval_is_valid(layout, piece, layout.interval_mcus(i)) for i, piece in enumerate(pieces))
    valid_mcus = sum(layout.interval_mcus(i) for i, ok in enumerate(valid) if ok)
    bad = [i for i, ok in enumerate(valid) if not ok]
    if bad:
        problems.append(f"{len(bad)} restart intervals fail to entropy-decode (first: interval {bad[0]})")
    if len(pieces) < layout.intervals:
        problems.append(f"stream ends after {len(pieces)} of {layout.intervals} restart intervals")
    return ScanCheck(tuple(pieces), valid, valid_mcus, tuple(problems))
