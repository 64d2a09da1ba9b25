"""Reading what a `litgpt pretrain` run logged (shared by the training tests)."""

from __future__ import annotations

import csv
from pathlib import Path


def losses(out: Path) -> dict[int, float]:
    """The training loss of every logged iteration, from the run's CSV logger (metrics.csv)."""
    found = {}
    for metrics in out.rglob("metrics.csv"):
        for row in csv.DictReader(metrics.open()):
            if row.get("loss"):
                found[int(row["iter"])] = float(row["loss"])
    return found
