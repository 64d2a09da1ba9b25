"""The AVC stream as a byte automaton: NAL units that a decoder can at least split and order.

What is tracked (the slice *data* inside a NAL unit is not parsed):
- every NAL unit starts with a start code (00 00 01 or 00 00 00 01) and a legal header: forbidden bit
  0, type 5 (IDR slice) for the first frame, type 1 or 5 after it, the same type for all slices of a
  frame, and a nonzero nal_ref_idc for IDR slices;
- slice ``j`` of a frame begins with ``first_mb_in_slice = j`` (its Exp-Golomb bits are fixed), so
  each frame has exactly one slice per macroblock (the profile's ``slice-max-mbs=1``);
- inside a NAL unit, emulation prevention holds: 00 00 is followed by 03 or a byte >= 04 (or by 01,
  ending the unit with the next start code), and a unit never ends in a zero byte;
- at most the profile's number of frames; EOS only at the end of a frame's last slice.

States are ``(frame, slice, phase, zeros, ue_byte, frame_type)``; transitions are cached.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # avc.py imports this module
    from shared.codec.avc import AvcProfile

START, HEADER, UE, PAYLOAD = range(4)
IDR, NON_IDR = 5, 1


def ue_bytes(value: int) -> list[tuple[int, int]]:
    """(mask, bits) that the first payload bytes must match to code ``value`` as Exp-Golomb ue(v)."""
    code = value + 1
    width = 2 * code.bit_length() - 1  # leading zeros, then the code itself
    constraints = []
    for first in range(0, width, 8):
        used = min(8, width - first)
        bits = (code >> (width - first - used)) & ((1 << used) - 1)
        constraints.append((((1 << used) - 1) << (8 - used), bits << (8 - used)))
    return constraints


@dataclass
class AvcGrammar:
    profile: AvcProfile
    _cache: dict = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self.slices = self.profile.macroblocks
        self.frames = self.profile.max_frames
        self.patterns = [ue_bytes(j) for j in range(self.slices)]

    def start(self) -> tuple:
        return 0, -1, START, 0, 0, 0  # before the first NAL unit: frame 0, no slice yet

    def is_done(self, state: tuple) -> bool:
        return False  # a slice's data has no fixed length: the model decides when to stop

    def can_end(self, state: tuple) -> bool:
        frame, slice_, phase, zeros, _, _ = state
        return phase == PAYLOAD and zeros == 0 and slice_ == self.slices - 1

    def cache_key(self, state: tuple) -> tuple:
        return state

    def next_slice(self, frame: int, slice_: int) -> tuple[int, int] | None:
        """(frame, slice) of the NAL unit after this one, or None when the clip is full."""
        if slice_ + 1 < self.slices:
            return frame, slice_ + 1
        if frame + 1 < self.frames:
            return frame + 1, 0
        return None

    def step(self, state: tuple, byte: int) -> tuple | None:
        key = (state, byte)
        cached = self._cache.get(key, False)
        if cached is False:
            cached = self._cache[key] = self._step(state, byte)
        return cached

    def _step(self, state: tuple, byte: int) -> tuple | None:
        frame, slice_, phase, zeros, ue_index, frame_type = state
        if phase == START:  # the very first start code
            if byte == 0x00:
                return (frame, slice_, START, zeros + 1, 0, frame_type) if zeros < 3 else None
            return self._header_next(frame, slice_, frame_type) if byte == 0x01 and zeros >= 2 else None
        if phase == HEADER:
            nal_type, ref_idc = byte & 0x1F, (byte >> 5) & 3
            if byte & 0x80 or nal_type not in (IDR, NON_IDR) or (nal_type == IDR and ref_idc == 0):
                return None
            if slice_ == 0:  # a frame's first slice sets the frame's type
                if frame == 0 and nal_type != IDR:
                    return None
                frame_type = nal_type
            elif nal_type != frame_type:
                return None
            return frame, slice_, UE, 0, 0, frame_type
        if phase == UE:
            mask, bits = self.patterns[slice_][ue_index]
            if byte & mask != bits:
                return None
            ue_index += 1
            zeros = zeros + 1 if byte == 0 else 0
            return frame, slice_, UE if ue_index < len(self.patterns[slice_]) else PAYLOAD, zeros, ue_index, frame_type
        # PAYLOAD: emulation prevention, or the next start code
        following = self.next_slice(frame, slice_)
        if zeros >= 2:
            if byte == 0x03 and zeros == 2:
                return frame, slice_, PAYLOAD, 0, 0, frame_type
            if byte == 0x01 and following is not None:
                return self._header_next(frame, slice_, frame_type)
            if byte == 0x00 and zeros == 2 and following is not None:
                return frame, slice_, PAYLOAD, 3, 0, frame_type
            if byte >= 0x04 and zeros == 2:
                return frame, slice_, PAYLOAD, 0, 0, frame_type
            return None
        if byte == 0x00:
            return frame, slice_, PAYLOAD, zeros + 1, 0, frame_type
        return frame, slice_, PAYLOAD, 0, 0, frame_type

    def _header_next(self, frame: int, slice_: int, frame_type: int) -> tuple | None:
        following = (0, 0) if slice_ < 0 else self.next_slice(frame, slice_)
        if following is None:
            return None
        return following[0], following[1], HEADER, 0, 0, frame_type
