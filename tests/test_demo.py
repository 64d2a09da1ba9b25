"""The README's main command, shortened: the tiny Jpeg-LM learns something that carries to photos it never saw.

The dataset is split by source photo (the embedded sample's default), so the held-out loss is measured on
crops of photos that no training crop came from. "Before" is the model exactly as `python -m train.pretrain`
initialises it (same seed, same weight initialisation), scored on every held-out window.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
import yaml
from litgpt import GPT, Config
from litgpt.utils import chunked_cross_entropy

from preprocess.run import run
from shared.format.dataset import Dataset
from train.checkpoint import load_model
from train.parallel import init_weights

ROOT = Path(__file__).resolve().parents[1]
IN_MEMORY = ["--direct_running_mode", "in_memory", "--direct_num_workers", "1"]
CONFIG = ROOT / "train" / "jpeg-tiny.yaml"
TRAIN_TOKENS = 300_000
# Measured on the 2-core development machine (32-true, 2026-12-07): held-out loss 5.967 before and 5.415 after
# (a drop of 0.552 nats per token); a fifth of it leaves room for other machines' arithmetic and thread counts.
MARGIN = 0.1


@torch.inference_mode()
def held_out_loss(model: GPT, dataset: Path) -> float:
    """Mean cross-entropy (nats per token) over every window of the val split."""
    data = Dataset.open(str(dataset))
    windows = np.concatenate([data.read_windows(shard) for shard in data.shards("val")]).astype(np.int64)
    model.eval()
    losses = [chunked_cross_entropy(model(batch[:, :-1]), batch[:, 1:]).item()
              for batch in torch.from_numpy(windows).split(8)]
    return float(np.mean(losses))


def initial_model() -> GPT:
    """The model as `python -m train.pretrain` builds it before the first step (LitGPT's GPT-NeoX init, each
    weight drawn from the seed and its name)."""
    settings = yaml.safe_load(CONFIG.read_text())
    model = GPT(Config(**settings["model_config"]))
    init_weights(model, settings["seed"])
    return model


def test_the_tiny_model_learns_on_photos_it_never_saw(tmp_path: Path) -> None:
    dataset, out = tmp_path / "jpeg-tiny", tmp_path / "out"
    run(["--output", str(dataset), "--profile", "jpeg-64-q25", "--seq_len", "1023", "--val_fraction", "0.21",
         "--sample_size", "800", *IN_MEMORY])
    env = {**os.environ, "TORCH_COMPILE_DISABLE": "1"}  # a short run: compiling costs more than it saves
    # 32-true: as fast on every CPU (bf16-mixed is 1.6x slower where the CPU has no native bf16)
    subprocess.run([sys.executable, "-m", "train.pretrain", "--config", str(CONFIG), "--data.path", str(dataset),
                    "--out_dir", str(out), "--train.max_tokens", str(TRAIN_TOKENS), "--eval.interval", "10",
                    "--eval.max_iters", "4", "--precision", "32-true"], check=True, env=env, cwd=ROOT,
                   capture_output=True, timeout=1800)

    before = held_out_loss(initial_model(), dataset)
    after = held_out_loss(load_model(out / "final", torch.device("cpu")), dataset)
    print(f"held-out loss before {before:.3f}, after {after:.3f} nats/token")
    assert after < before - MARGIN, (before, after)

    plot = subprocess.run([sys.executable, "-m", "train.plot", str(out), "--dataset", str(dataset)],
                          check=True, cwd=ROOT, capture_output=True, text=True)
    assert "falling" in plot.stdout, plot.stdout
    picture = (out / "loss.png").read_bytes()
    assert picture.startswith(b"\x89PNG\r\n\x1a\n") and len(picture) > 10_000
