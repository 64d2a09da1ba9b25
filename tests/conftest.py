"""Fixtures shared by several test files: a tiny trained Jpeg-LM checkpoint (trained once per session)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

# Before anything imports gcsfs, which reads this once at import: gcsfs 2026.x otherwise asks the Storage Control
# gRPC API (which the tests' GCS emulator lacks) for each bucket's layout, 60 s per call (tests/stores.py).
os.environ["GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT"] = "false"

from preprocess.run import run  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Jpeg-LM trained for 6 steps on the sample photos (64x64, 1023-token context), with step
    checkpoints after steps 3 and 6 and the final one. Returns the run's out_dir; the data sits beside it."""
    root = tmp_path_factory.mktemp("tiny-run")
    data = root / "data"
    run(["--output", str(data), "--profile", "jpeg-64-q25", "--seq_len", "1023", "--sample_size", "60",
         "--val_fraction", "0.2", "--direct_running_mode", "in_memory", "--direct_num_workers", "1"])
    done = subprocess.run(["litgpt", "pretrain", "--config", str(ROOT / "train" / "jpeg-tiny.yaml"), "--data.path",
                           str(data), "--out_dir", str(root / "out"), "--train.max_tokens", str(6 * 8 * 1023),
                           "--train.micro_batch_size", "8", "--train.global_batch_size", "8", "--precision", "32-true",
                           "--train.save_interval", "3", "--eval.final_validation", "false", "--data.num_workers", "0"],
                          cwd=ROOT, capture_output=True, text=True, env={**os.environ, "TORCH_COMPILE_DISABLE": "1"})
    assert done.returncode == 0, done.stderr[-4000:]
    return root / "out"


@pytest.fixture(scope="session")
def checkpoint(tiny_run: Path) -> Path:
    return tiny_run / "final"
