"""Live progress of a local run.

Beam metrics counters feed the runner's own UI (Dataflow's job page); a local DirectRunner only reports
them at the end. So on local runs each DoFn instance also writes its counts, at most once a second, to a
small JSON file in a progress folder, and the launching process sums those files into a status line.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
import uuid
from collections import Counter
from pathlib import Path

from apache_beam.metrics import Metrics

from shared.format.files import write_atomic

SHOWN = ("read", "encoded", "rejected", "duplicates", "tokenized", "tokens", "shards")  # the job's counters


class Progress:
    """Counters of one DoFn instance: Beam metrics always, progress files when ``directory`` is set."""

    def __init__(self, directory: str | None) -> None:
        self.directory = directory
        self.counts: Counter[str] = Counter()
        self.path = Path(directory) / f"{uuid.uuid4().hex}.json" if directory else None
        self.flushed = 0.0

    def add(self, name: str, amount: int = 1) -> None:
        Metrics.counter("codec-lm", name).inc(amount)
        if self.path is not None:
            self.counts[name] += amount
            if time.monotonic() - self.flushed > 1.0:
                self.flush()

    def flush(self) -> None:
        if self.path is None or not self.counts:
            return
        write_atomic(self.path, json.dumps(self.counts))
        self.flushed = time.monotonic()


def read_counts(directory: str) -> Counter[str]:
    total: Counter[str] = Counter()
    for path in Path(directory).glob("*.json"):
        try:
            total.update(json.loads(path.read_text()))
        except (OSError, ValueError):
            continue  # being replaced right now: next time
    return total


def status_line(counts: Counter[str], elapsed: float, shown: tuple[str, ...] = SHOWN, rate_of: str = "encoded") -> str:
    parts = [f"{name} {counts.get(name, 0):,}" for name in shown]
    rate = counts.get(rate_of, 0) / elapsed if elapsed > 0 else 0.0
    return f"[{elapsed:6.0f}s] " + " | ".join(parts) + f" | {rate:.1f} {rate_of}/s"


class ProgressWatcher:
    """Prints the summed counts while the pipeline runs: in place on a terminal, a line every 10 s otherwise."""

    def __init__(self, directory: str, interval: float | None = None, shown: tuple[str, ...] = SHOWN,
                 rate_of: str = "encoded") -> None:
        self.directory, self.shown, self.rate_of = directory, shown, rate_of
        self.tty = sys.stderr.isatty()
        self.interval = interval or (0.5 if self.tty else 10.0)
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self.loop, daemon=True)
        self.started = time.monotonic()

    def __enter__(self) -> ProgressWatcher:
        os.makedirs(self.directory, exist_ok=True)
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_event.set()
        self.thread.join()
        self.show(final=True)

    def loop(self) -> None:
        while not self.stop_event.wait(self.interval):
            self.show()

    def show(self, final: bool = False) -> None:
        line = status_line(read_counts(self.directory), time.monotonic() - self.started, self.shown, self.rate_of)
        if self.tty:
            sys.stderr.write("\r" + line + ("\n" if final else ""))
        else:
            sys.stderr.write(line + "\n")
        sys.stderr.flush()
