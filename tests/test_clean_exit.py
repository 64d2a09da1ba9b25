"""Commands that read documents.parquet / inputs.parquet exit 0, every time (issue: SIGABRT after finishing).

pyarrow used to be handed Python file objects; its worker threads could release one while the
interpreter was shutting down, which ends in std::terminate (exit 134) in up to half of the runs
(see ``shared.format.files.arrow_source``). Each command runs RUNS times, two at a time (load made the
abort likelier): a command that aborts half the time passes all RUNS runs with probability 0.5**RUNS.
``train.evaluate`` on a dataset folder reads it through the same ``Dataset.rows`` as ``--prompt-val``.
"""

from __future__ import annotations

import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pyarrow.parquet as pq

RUNS = 5  # a command that aborts half the time passes 5 runs with probability 3%; all 7 commands read through
# the same arrow_source, so a regression there passes all 35 runs with probability 0.5**35


def test_dataset_commands_never_abort_on_exit(tiny_run: Path, tmp_path: Path) -> None:
    data = tiny_run.parent / "data"
    source = pq.read_table(data / "inputs.parquet", columns=["source"])["source"][0].as_py()
    python = [sys.executable, "-m"]
    commands = {
        "read a column": [sys.executable, "-c", "from shared.format.dataset import Dataset; "
                          f"Dataset.open({str(data)!r}).column('complete')"],
        "summary": [*python, "shared.tools.codec_shards", "summary", str(data)],
        "show": [*python, "shared.tools.codec_shards", "show", str(data), "--shard", "train/shard-000000",
                 "--index", "0"],
        "decode": [*python, "shared.tools.codec_shards", "decode", str(data), "--out", str(tmp_path / "decoded"),
                   "--limit", "4"],
        "trace": [*python, "shared.tools.codec_shards", "trace", str(data), source],
        "verify": [*python, "shared.tools.codec_shards", "verify", str(data), "--no-decode", "--workers", "1"],
        "generate --prompt-val": [*python, "train.generate", "--checkpoint", str(tiny_run / "final"), "--prompt-val",
                                  "1", "--num-samples", "1", "--max-new-tokens", "4", "--device", "cpu",
                                  "--out", str(tmp_path / "samples")],
    }

    def exit_status(name: str) -> tuple[str, int, str]:
        done = subprocess.run(commands[name], capture_output=True, text=True)
        return name, done.returncode, done.stderr[-600:]

    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(exit_status, [name for name in commands for _ in range(RUNS)]))
    failed = [(name, status, err) for name, status, err in results if status != 0]
    assert not failed, f"{len(failed)} of {len(results)} runs failed; first: {failed[0]}"
