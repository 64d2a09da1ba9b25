"""The CAVLC code tables of H.264 (ITU-T H.264, 9.2) and the other fixed mappings the slice syntax uses.

Codes are written as in the standard, as bit strings; each table becomes a dict from code to value, which
both the strict check (``avc.syntax``) and the constrained-decoding grammar (``avc.grammar``) read.
"""

from __future__ import annotations

# Table 9-5, coeff_token: one row per TotalCoeff 0..16, in each row the codes for TrailingOnes 0..3
# ("-": no such combination). The four columns of the standard: 0 <= nC < 2, 2 <= nC < 4, 4 <= nC < 8.
_COEFF_TOKEN = (
    "1 - - - | 000101 01 - - | 00000111 000100 001 - | 000000111 00000110 0000101 00011 | 0000000111 000000110 "
    "00000101 000011 | 00000000111 0000000110 000000101 0000100 | 0000000001111 00000000110 0000000101 00000100 | "
    "0000000001011 0000000001110 00000000101 000000100 | 0000000001000 0000000001010 0000000001101 0000000100 | "
    "00000000001111 00000000001110 0000000001001 00000000100 | 00000000001011 00000000001010 00000000001101 "
    "0000000001100 | 000000000001111 000000000001110 00000000001001 00000000001100 | 000000000001011 "
    "000000000001010 000000000001101 00000000001000 | 0000000000001111 000000000000001 000000000001001 "
    "000000000001100 | 0000000000001011 0000000000001110 0000000000001101 000000000001000 | 0000000000000111 "
    "0000000000001010 0000000000001001 0000000000001100 | 0000000000000100 0000000000000110 0000000000000101 "
    "0000000000001000",
    "11 - - - | 001011 10 - - | 000111 00111 011 - | 0000111 001010 001001 0101 | 00000111 000110 000101 0100 | "
    "00000100 0000110 0000101 00110 | 000000111 00000110 00000101 001000 | 00000001111 000000110 000000101 "
    "000100 | 00000001011 00000001110 00000001101 0000100 | 000000001111 00000001010 00000001001 000000100 | "
    "000000001011 000000001110 000000001101 00000001100 | 000000001000 000000001010 000000001001 00000001000 | "
    "0000000001111 0000000001110 0000000001101 000000001100 | 0000000001011 0000000001010 0000000001001 "
    "0000000001100 | 0000000000111 00000000001011 0000000000110 0000000001000 | 00000000001001 00000000001000 "
    "00000000001010 0000000000001 | 00000000000111 00000000000110 00000000000101 00000000000100",
    "1111 - - - | 001111 1110 - - | 001011 01111 1101 - | 001000 01100 01110 1100 | 0001111 01010 01011 1011 | "
    "0001011 01000 01001 1010 | 0001001 001110 001101 1001 | 0001000 001010 001001 1000 | 00001111 0001110 "
    "0001101 01101 | 00001011 00001110 0001010 001100 | 000001111 00001010 00001101 0001100 | 000001011 000001110 "
    "00001001 00001100 | 000001000 000001010 000001101 00001000 | 0000001101 000000111 000001001 000001100 | "
    "0000001001 0000001100 0000001011 0000001010 | 0000000101 0000001000 0000000111 0000000110 | 0000000001 "
    "0000000100 0000000011 0000000010",
)
# Table 9-5, nC == -1 (chroma DC of 4:2:0): TotalCoeff 0..4.
_CHROMA_DC_COEFF_TOKEN = (
    "01 - - - | 000111 1 - - | 000100 000110 001 - | 000011 0000011 0000010 000101 | 000010 00000011 00000010 0000000"
)
# Tables 9-7 and 9-8, total_zeros for 4x4 blocks, one row per TotalCoeff 1..15: codes for 0, 1, 2, ...
_TOTAL_ZEROS = (
    "1 011 010 0011 0010 00011 00010 000011 000010 0000011 0000010 00000011 00000010 000000011 000000010 000000001",
    "111 110 101 100 011 0101 0100 0011 0010 00011 00010 000011 000010 000001 000000",
    "0101 111 110 101 0100 0011 100 011 0010 00011 00010 000001 00001 000000",
    "00011 111 0101 0100 110 101 100 0011 011 0010 00010 00001 00000",
    "0101 0100 0011 111 110 101 100 011 0010 00001 0001 00000",
    "000001 00001 111 110 101 100 011 010 0001 001 000000",
    "000001 00001 101 100 011 11 010 0001 001 000000",
    "000001 0001 00001 011 11 10 010 001 000000",
    "000001 000000 0001 11 10 001 01 00001",
    "00001 00000 001 11 10 01 0001",
    "0000 0001 001 010 1 011",
    "0000 0001 01 1 001",
    "000 001 1 01",
    "00 01 1",
    "0 1",
)
# Table 9-9 (a), total_zeros for chroma DC of 4:2:0, one row per TotalCoeff 1..3.
_CHROMA_DC_TOTAL_ZEROS = ("1 01 001 000", "1 01 00", "1 0")
# Table 9-10, run_before, one row per zerosLeft 1..6 and > 6: codes for run_before 0, 1, 2, ...
_RUN_BEFORE = (
    "1 0",
    "1 01 00",
    "11 10 01 00",
    "11 10 01 001 000",
    "11 10 011 010 001 000",
    "11 000 001 011 010 101 100",
    "111 110 101 100 011 010 001 0001 00001 000001 0000001 00000001 000000001 0000000001 00000000001",
)

# Table 9-4, coded_block_pattern from codeNum (chroma_format_idc 1): Intra_4x4 and Inter macroblocks.
CBP_INTRA = (47, 31, 15, 0, 23, 27, 29, 30, 7, 11, 13, 14, 39, 43, 45, 46, 16, 3, 5, 10, 12, 19, 21, 26, 28, 35,
             37, 42, 44, 1, 2, 4, 8, 17, 18, 20, 24, 6, 9, 22, 25, 32, 33, 34, 36, 40, 38, 41)
CBP_INTER = (0, 16, 1, 2, 4, 8, 32, 3, 5, 10, 12, 15, 47, 7, 11, 13, 14, 6, 9, 31, 35, 37, 42, 44, 33, 34, 36,
             40, 39, 43, 45, 46, 17, 18, 20, 24, 19, 21, 26, 28, 23, 27, 29, 30, 22, 25, 38, 41)

Vlc = dict[str, object]  # code (a bit string) -> value


def _token_table(text: str) -> dict[str, tuple[int, int]]:
    table = {}
    for total, row in enumerate(text.split("|")):
        for ones, code in enumerate(row.split()):
            if code != "-":
                table[code] = (total, ones)
    return table


def _value_table(text: str) -> dict[str, int]:
    return {code: value for value, code in enumerate(text.split())}


# coeff_token by nC class: 0 (0..1), 1 (2..3), 2 (4..7), 3 (8 and up: a 6-bit fixed-length code), 4 (nC == -1)
COEFF_TOKEN: tuple[dict[str, tuple[int, int]], ...] = (
    *(_token_table(text) for text in _COEFF_TOKEN),
    {"000011": (0, 0)} | {format((total - 1) << 2 | ones, "06b"): (total, ones)
                          for total in range(1, 17) for ones in range(min(total, 3) + 1)},
    _token_table(_CHROMA_DC_COEFF_TOKEN),
)
TOTAL_ZEROS: tuple[dict[str, int], ...] = tuple(_value_table(row) for row in _TOTAL_ZEROS)  # [TotalCoeff - 1]
CHROMA_DC_TOTAL_ZEROS: tuple[dict[str, int], ...] = tuple(_value_table(row) for row in _CHROMA_DC_TOTAL_ZEROS)
RUN_BEFORE: tuple[dict[str, int], ...] = tuple(_value_table(row) for row in _RUN_BEFORE)  # [min(zerosLeft, 7) - 1]


def coeff_token_table(nc: int) -> int:
    """Which coeff_token table a block with context ``nC`` uses (an index into ``COEFF_TOKEN``)."""
    if nc < 0:
        return 4
    return 0 if nc < 2 else 1 if nc < 4 else 2 if nc < 8 else 3


# Where the 16 luma 4x4 blocks sit (x, y in 4x4 units) in decoding order (6.4.3), and the 4 chroma blocks.
LUMA_XY = ((0, 0), (1, 0), (0, 1), (1, 1), (2, 0), (3, 0), (2, 1), (3, 1),
           (0, 2), (1, 2), (0, 3), (1, 3), (2, 2), (3, 2), (2, 3), (3, 3))
LUMA_INDEX = {xy: index for index, xy in enumerate(LUMA_XY)}
CHROMA_XY = ((0, 0), (1, 0), (0, 1), (1, 1))

# Intra 4x4 prediction modes (8.3.1.2) and the neighbours they read: left (A), top (B).
INTRA4X4_NEEDS_LEFT = frozenset({1, 4, 5, 6, 8})
INTRA4X4_NEEDS_TOP = frozenset({0, 3, 4, 5, 6, 7})
DC_PRED = 2  # Intra_4x4_DC / Intra_16x16_DC: the only luma modes with no neighbour at all
CHROMA_DC_PRED = 0  # intra_chroma_pred_mode 0 (DC); 1 horizontal, 2 vertical, 3 plane need neighbours
