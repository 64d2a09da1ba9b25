"""The JPEG scan as a byte automaton: which next bytes keep a stream entropy-decodable.

Tracks the decoder at the bit level with the profile's Huffman tables — the MCU and block within the
restart interval, the coefficient index, the partial Huffman code, pending magnitude bits, 1-bit
padding after an interval's last MCU, byte stuffing after FF, and the restart marker (RST0…RST7 in
order) that must follow — exactly the rules `shared.codec.jpeg.entropy.check_stream` judges streams by. A
stream this automaton accepts to the end passes that check; every state has a continuation (the
Huffman tables' prefixes always extend), so constrained sampling never dead-ends.

States are small tuples ``(interval, local)``; transitions are cached on ``(interval % 8, last
interval?, local, byte)``, since every restart interval repeats the same local states.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from shared.codec.jpeg.entropy import HuffmanTable, ScanLayout

# Local phases
DATA, STUFF, MARKER_FF, MARKER_RST, DONE = range(5)


@dataclass(frozen=True)
class CodeTable:
    """A Huffman table as complete codes and proper prefixes, keyed by (code, length).

    A prefix is only worth entering if some code below it is valid *here*: late in a block, AC codes
    whose zero run would pass coefficient 63 are not. So each prefix records what lies below it: a
    DC category <= 11, an end-of-block, a ZRL, and the shortest run of a nonzero coefficient.
    """

    symbols: dict[tuple[int, int], int]
    below: dict[tuple[int, int], tuple[bool, bool, bool, int]]  # prefix -> (dc ok, eob, zrl, min run)

    @classmethod
    def of(cls, table: HuffmanTable) -> CodeTable:
        symbols = {(code, length): symbol for symbol, (code, length) in table.codes.items()}
        below: dict[tuple[int, int], tuple[bool, bool, bool, int]] = {}
        for (code, length), symbol in symbols.items():
            run, size = symbol >> 4, symbol & 15
            for cut in range(1, length):
                prefix = (code >> (length - cut), cut)
                dc, eob, zrl, least = below.get(prefix, (False, False, False, 99))
                below[prefix] = (dc or symbol <= 11, eob or (size == 0 and run != 15), zrl or symbol == 0xF0,
                                 min(least, run) if size else least)
        return cls(symbols, below)

    def live(self, prefix: tuple[int, int], k: int) -> bool:
        """Whether some code below ``prefix`` is valid at coefficient ``k`` (0 = DC)."""
        info = self.below.get(prefix)
        if info is None:
            return False
        dc, eob, zrl, least = info
        if k == 0:
            return dc
        return eob or least <= 63 - k or (zrl and k + 16 <= 64)


@dataclass
class JpegGrammar:
    layout: ScanLayout
    _step_cache: dict = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self.tables = [(CodeTable.of(dc), CodeTable.of(ac)) for dc, ac in self.layout.blocks]
        self.intervals = self.layout.intervals
        self.has_markers = bool(self.layout.restart_interval)

    # The local data state: (phase, mcu, block, k, code, code_length, pending_bits, complete)
    START = (DATA, 0, 0, 0, 0, 0, 0, False)

    def start(self) -> tuple[int, tuple]:
        return 0, self.START

    def is_done(self, state: tuple[int, tuple]) -> bool:
        return state[1][0] == DONE

    def cache_key(self, state: tuple[int, tuple]) -> tuple:
        interval, local = state
        return interval % 8, interval == self.intervals - 1, local

    def step(self, state: tuple[int, tuple], byte: int) -> tuple[int, tuple] | None:
        """The state after ``byte``, or None when no valid stream continues with it."""
        interval, local = state
        key = (interval % 8, interval == self.intervals - 1, local, byte)
        cached = self._step_cache.get(key, False)
        if cached is False:
            cached = self._step_local(interval % 8, interval == self.intervals - 1, local, byte)
            self._step_cache[key] = cached
        if cached is None:
            return None
        advance, new_local = cached
        return interval + advance, new_local

    def _step_local(self, rst: int, last: bool, local: tuple, byte: int) -> tuple[int, tuple] | None:
        phase = local[0]
        if phase == DONE:
            return None
        if phase == MARKER_FF:
            return (0, (MARKER_RST,)) if byte == 0xFF else None
        if phase == MARKER_RST:
            return (1, self.START) if byte == 0xD0 + rst else None
        if phase == STUFF:  # after a data FF only the stuffed 00 may come
            return (0, self._after_byte(local[1:], last)) if byte == 0x00 else None
        data = local[1:]
        layout = self.layout
        mcus = layout.interval_mcus(self.intervals - 1) if last else (layout.restart_interval or layout.mcus)
        for shift in range(7, -1, -1):
            data = self._step_bit(data, (byte >> shift) & 1, mcus)
            if data is None:
                return None
        if byte == 0xFF:
            return 0, (STUFF,) + data
        return 0, self._after_byte(data, last)

    def _after_byte(self, data: tuple, last: bool) -> tuple:
        """At a byte boundary: a finished interval hands over to its marker (or to the end)."""
        if not data[-1]:
            return (DATA,) + data
        if last or not self.has_markers:
            return (DONE,)
        return (MARKER_FF,)

    def _step_bit(self, data: tuple, bit: int, mcus: int) -> tuple | None:
        mcu, block, k, code, length, pending, complete = data
        if complete:  # padding after the interval's last MCU is all ones
            return data if bit else None
        if pending:
            pending -= 1
            if pending:
                return mcu, block, k, code, length, pending, False
            return self._after_coefficient(mcu, block, k, mcus)
        table = self.tables[block][0 if k == 0 else 1]
        code, length = (code << 1) | bit, length + 1
        symbol = table.symbols.get((code, length))
        if symbol is None:
            return (mcu, block, k, code, length, 0, False) if table.live((code, length), k) else None
        if k == 0:  # DC: a category 0..11, then that many magnitude bits
            if symbol > 11:
                return None
            k = 1
            if symbol:
                return mcu, block, k, 0, 0, symbol, False
            return mcu, block, k, 0, 0, 0, False
        run, size = symbol >> 4, symbol & 15
        if size == 0:
            if run != 15:  # end of block
                return self._next_block(mcu, block, mcus)
            k += 16  # sixteen zeros
            if k > 64:
                return None
            return self._next_block(mcu, block, mcus) if k == 64 else (mcu, block, k, 0, 0, 0, False)
        k += run
        if k > 63:
            return None
        return mcu, block, k + 1, 0, 0, size, False

    def _after_coefficient(self, mcu: int, block: int, k: int, mcus: int) -> tuple:
        if k >= 64:
            return self._next_block(mcu, block, mcus)
        return mcu, block, k, 0, 0, 0, False

    def _next_block(self, mcu: int, block: int, mcus: int) -> tuple:
        block += 1
        if block == len(self.tables):
            block, mcu = 0, mcu + 1
            if mcu == mcus:
                return mcu, block, 0, 0, 0, 0, True
        return mcu, block, 0, 0, 0, 0, False
