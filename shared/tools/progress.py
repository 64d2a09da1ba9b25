"""Progress for long work: a tqdm bar on a terminal, plain periodic lines in a log or a pipe."""

from __future__ import annotations

import io
import os
import sys
from collections.abc import Iterable
from typing import Any

from tqdm import tqdm

LOG_INTERVAL = 30.0  # seconds between progress lines when stderr is a log or a pipe, not a terminal


class LogLines(io.TextIOBase):
    """Where a progress bar draws when stderr is not a terminal: each redraw becomes one whole line (tqdm
    redraws in place with carriage returns, which a log file shows as one ever longer line)."""

    def __init__(self, stream: Any) -> None:
        self.stream = stream

    def write(self, text: str) -> int:
        line = text.replace("\r", "").strip()
        if line:  # tqdm's clearing writes (blanks, a lone newline) are dropped
            self.stream.write(line + "\n")
            self.stream.flush()
        return len(text)

    def flush(self) -> None:
        self.stream.flush()


def progress_bar(total: float | None, desc: str, unit: str, iterable: Iterable[Any] | None = None,
                 postfix: str | None = None) -> tqdm:
    """A tqdm bar on stderr, drawn at most every tenth of a second on a terminal; in a log or a pipe a plain
    line every LOG_INTERVAL seconds (``TQDM_MININTERVAL``) and one at the end. ``TQDM_DISABLE=1``: none."""
    stderr = sys.stderr
    scaled = unit == "tok" and (total or 0) >= 10_000  # many tokens read best as 59.4k; the rest as they are
    if getattr(stderr, "isatty", lambda: False)():
        return tqdm(iterable, total=total, desc=desc, unit=unit, unit_scale=scaled, dynamic_ncols=True, file=stderr,
                    postfix=postfix)
    interval = float(os.environ.get("TQDM_MININTERVAL", LOG_INTERVAL))
    return tqdm(iterable, total=total, desc=desc, unit=unit, unit_scale=scaled, file=LogLines(stderr), postfix=postfix,
                mininterval=interval, maxinterval=interval,
                bar_format="{desc}: {percentage:3.0f}% {n_fmt}/{total_fmt} {unit} [{elapsed}<{remaining}, "
                           "{rate_fmt}{postfix}]")
