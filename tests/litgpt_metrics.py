"""Reading what a training run logged (shared by the training tests)."""

from __future__ import annotations

import csv
from pathlib import Path


def losses(out: Path) -> dict[int, float]:
    """The training loss of every logged step, from the run's CSV logger (metrics.csv): by optimizer step for
    `python -m train.pretrain`, by iteration (micro-batch) for `litgpt pretrain`."""
    found = {}
    for metrics in out.rglob("metrics.csv"):
        for row in csv.DictReader(metrics.open()):
            if row.get("loss"):
                found[int(row.get("iter") or row["step"])] = float(row["loss"])
    return found
