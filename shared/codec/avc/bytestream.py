"""The H.264 Annex-B byte stream (ITU-T H.264 Annex B, 7.3.1, 7.4.1): start codes, NAL units and their
types, emulation prevention, and which unit starts a picture. Every AVC module frames streams through here.

A stream is NAL units, each after a 00 00 01 start code (00 00 00 01 where a zero byte precedes it). A
unit is given either *with* its start code (``nal_units``: what a stream is cut and counted in) or as its
*payload*, the NAL header byte and the escaped RBSP after the start code (``nal_payloads``: what a parser
reads).
"""

from __future__ import annotations

START_CODE = b"\x00\x00\x01"

# NAL unit types (H.264 table 7-1) that occur in libx264's output.
NAL_SLICE = 1  # a slice of a non-IDR picture
NAL_IDR = 5  # a slice of an IDR (key) picture
NAL_SEI = 6
NAL_SPS = 7
NAL_PPS = 8
NAL_AUD = 9
SLICE_TYPES = (NAL_SLICE, NAL_IDR)
# Removed from the model's stream: invariant parameter sets (a profile's header) and units that carry no picture.
STRIPPED_TYPES = (NAL_SEI, NAL_SPS, NAL_PPS, NAL_AUD)


def unit_starts(data: bytes) -> list[int]:
    """Where each NAL unit begins: at its start code, or at the zero byte before it (a 4-byte start code).

    A NAL unit never ends in a zero byte (its RBSP ends with a stop bit), so a zero right before 00 00 01
    belongs to the next unit; emulation prevention guarantees 00 00 01 never occurs inside a unit.
    """
    starts = []
    position = data.find(START_CODE)
    while position >= 0:
        starts.append(position - 1 if position > 0 and data[position - 1] == 0 else position)
        position = data.find(START_CODE, position + 3)
    return starts


def nal_units(data: bytes) -> list[tuple[int, bytes]]:
    """Split an Annex-B byte stream into ``(offset, unit)`` pairs, each unit starting with its start code.
    Bytes before the first start code are not a unit and are left out."""
    starts = unit_starts(data)
    return [(start, data[start:end]) for start, end in zip(starts, [*starts[1:], len(data)])]


def payload(unit: bytes) -> bytes:
    """A unit's payload: what follows its start code (the NAL header byte, then the escaped RBSP)."""
    return unit[unit.find(START_CODE) + 3:]


def nal_payloads(data: bytes) -> list[tuple[int, bytes]]:
    """``(offset of the unit, payload without trailing zero bytes)`` for every NAL unit of ``data``."""
    return [(offset, payload(unit).rstrip(b"\x00")) for offset, unit in nal_units(data)]


def nal_type(unit: bytes) -> int:
    """The type of a NAL unit given with its start code (-1 when it is only a start code)."""
    data = payload(unit)
    return data[0] & 0x1F if data else -1


def starts_picture(data: bytes) -> bool:
    """Whether a payload is the first slice of a picture: a slice whose ``first_mb_in_slice`` is 0.

    The slice header begins with ``first_mb_in_slice`` as an unsigned Exp-Golomb number, and 0 is coded as
    the single bit 1, so this is the top bit of the byte after the NAL header.
    """
    return len(data) > 1 and data[0] & 0x1F in SLICE_TYPES and bool(data[1] & 0x80)


def starts_frame(unit: bytes) -> bool:
    """``starts_picture`` of a unit given with its start code."""
    return starts_picture(payload(unit))


def escape(rbsp: bytes) -> bytes:
    """Emulation prevention (7.4.1): an 03 after every two zero bytes that a byte <= 03 follows."""
    out, zeros = bytearray(), 0
    for byte in rbsp:
        if zeros >= 2 and byte <= 3:
            out.append(3)
            zeros = 0
        out.append(byte)
        zeros = zeros + 1 if byte == 0 else 0
    return bytes(out)
