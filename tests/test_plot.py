"""train.plot on a LitGPT CSV log: train and validation loss against tokens seen, in nats and bits per byte."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import yaml
from PIL import Image

from preprocess.run import run
from shared.format.dataset import Dataset
from train.plot import bytes_per_token, main, read_metrics

# the header `litgpt pretrain` writes (logger_name: csv), copied from a real run
HEADER = ("batches,device/batches_per_sec,device/flops_per_sec,device/items_per_sec,device/samples_per_sec,epoch,"
          "iter,iter_time,learning_rate,lengths,loss,remaining_time,samples,step,time,tokens,total_tokens,val_loss,"
          "val_ppl")


def metrics_row(**values: float | int) -> str:
    return ",".join(str(values.get(name, "")) for name in HEADER.split(","))


def test_plot_of_a_run_with_a_resumed_log(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    data = tmp_path / "data"
    run(["--output", str(data), "--profile", "jpeg-64-q25", "--seq-len", "255", "--sample-size", "8",
         "--direct_running_mode", "in_memory", "--direct_num_workers", "1"])
    out = tmp_path / "out"
    (out / "final").mkdir(parents=True)
    (out / "final" / "hyperparameters.yaml").write_text(yaml.safe_dump({"data": {"init_args": {"path": str(data)}}}))
    first, resumed = out / "logs/csv/version_0", out / "logs/csv/version_1"
    first.mkdir(parents=True)
    resumed.mkdir(parents=True)
    (first / "metrics.csv").write_text("\n".join([
        HEADER, metrics_row(step=-1, val_loss=5.77), metrics_row(step=9, loss=5.6, total_tokens=1000),
        metrics_row(step=19, loss=5.4, total_tokens=2000), metrics_row(step=19, val_loss=5.5)]) + "\n")
    (resumed / "metrics.csv").write_text("\n".join([  # a resumed run logs the same step again: the later wins
        HEADER, metrics_row(step=19, loss=5.3, total_tokens=2000), metrics_row(step=29, loss=5.1, total_tokens=3000),
        metrics_row(step=29, val_loss=5.2)]) + "\n")
    curves = read_metrics(out)
    assert list(curves.train_loss) == [5.6, 5.3, 5.1] and list(curves.val_loss) == [5.77, 5.5, 5.2]
    assert list(curves.val_tokens) == [0.0, 2000.0, 3000.0]

    assert main([str(out)]) == 0
    printed = capsys.readouterr().out
    per_token = bytes_per_token(Dataset.open(str(data)))
    assert 0.5 < per_token < 2.0
    assert f"-> 5.200 nats/token = {5.2 / math.log(2) / per_token:.2f} bits/byte" in printed
    assert "(falling)" in printed and "8.0 bits/byte" in printed and "last evaluation in metrics.csv" not in printed
    with Image.open(out / "loss.png") as picture:  # a real, non-empty PNG
        assert picture.format == "PNG" and picture.size[0] > 400

    with (resumed / "metrics.csv").open("a") as log:  # training went on, its final evaluation never flushed
        log.write(metrics_row(step=39, loss=5.0, total_tokens=4000) + "\n")
    assert main([str(out)]) == 0
    assert "last evaluation in metrics.csv is at 3,000 of 4,000 tokens" in capsys.readouterr().out

    # usage errors (status 2), one line each; a missing folder is named before anything else
    missing = tmp_path / "missing"
    assert main([str(missing), "--dataset", str(tmp_path / "no-dataset")]) == 2
    assert capsys.readouterr().err == f"python -m train.plot: error: RUN_DIR {missing}: no such folder\n"
    assert main([str(out), "--dataset", str(missing)]) == 2
    assert capsys.readouterr().err == f"python -m train.plot: error: --dataset {missing}: no such folder\n"
    (tmp_path / "empty").mkdir()
    assert main([str(tmp_path / "empty")]) == 2
    (error,) = capsys.readouterr().err.splitlines()
    assert error.startswith("python -m train.plot: error: ") and "logger_name: csv" in error
    # --out: the PNG, anywhere
    assert main([str(out), "--dataset", str(data), "--out", str(tmp_path / "plots" / "loss.png")]) == 0
    assert (tmp_path / "plots" / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
