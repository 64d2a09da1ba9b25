"""Training and validation loss of a run (`python -m train.pretrain` or `litgpt pretrain`) against tokens seen,
as a PNG (and in bits per byte).

    python -m train.plot out/jpeg-tiny                 # writes out/jpeg-tiny/loss.png, prints the figures
    python -m train.plot out/jpeg7b --dataset gs://bucket/jpeg-lm --out loss.png

RUN_DIR is the folder a run wrote (its ``--out_dir``); ``--out`` is the PNG this writes. Reads the CSV log
both write (RUN_DIR/logs/csv/version_*/metrics.csv, Lightning's CSVLogger; a resumed run's versions are joined,
later ones winning), so it works on any run with `logger_name: csv`. Bits per byte need the dataset's
bytes per token: the dataset the run records in its hyperparameters.yaml, or --dataset. A uniform guess over
256 byte values scores 8.0 bits per byte.
"""

from __future__ import annotations

import csv
import io
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import matplotlib
import numpy as np
import yaml

from shared.format.dataset import Dataset, DatasetError
from shared.format.files import write_atomic
from shared.tools import cli

matplotlib.use("Agg")  # files only: no display needed
import matplotlib.pyplot as plt  # noqa: E402 — after choosing the backend

PROG = "python -m train.plot"
UNIFORM_BITS_PER_BYTE = 8.0


@dataclass(frozen=True)
class Curves:
    train_tokens: np.ndarray
    train_loss: np.ndarray  # nats per token
    val_tokens: np.ndarray
    val_loss: np.ndarray


def read_metrics(out_dir: Path) -> Curves:
    """Train and val loss by step from every metrics.csv of the run; val steps placed at the tokens seen then."""
    files = sorted(out_dir.glob("logs/csv/version_*/metrics.csv"), key=lambda p: int(p.parent.name.split("_")[1]))
    if not files:
        raise FileNotFoundError(f"no {out_dir}/logs/csv/version_*/metrics.csv: was the run made with logger_name: csv?")
    train: dict[int, tuple[float, float]] = {}
    val: dict[int, float] = {}
    for path in files:
        for row in csv.DictReader(path.open()):
            if row.get("loss") and row.get("total_tokens"):
                train[int(row["step"])] = (float(row["total_tokens"]), float(row["loss"]))
            if row.get("val_loss"):
                val[int(row["step"])] = float(row["val_loss"])
    steps = sorted(train)
    tokens = np.array([train[s][0] for s in steps])
    val_steps = sorted(val)
    # a validation logged at step s saw the weights the training row of step s was logged after (train.pretrain
    # logs both at the optimizer steps done; `litgpt pretrain` at the iteration index): the tokens seen then.
    # Step 0 (or below) is the initial validation, before any token.
    val_tokens = np.interp(val_steps, steps, tokens) if steps else np.zeros(len(val_steps))
    val_tokens[np.array(val_steps) <= 0] = 0.0
    return Curves(tokens, np.array([train[s][1] for s in steps]), val_tokens, np.array([val[s] for s in val_steps]))


def bytes_per_token(dataset: Dataset) -> float:
    """Codec-stream bytes per model token over all documents (BOS and EOS count as tokens: they are predicted too)."""
    table = dataset.documents_table(["stream_bytes", "tokens"])
    return float(np.sum(table["stream_bytes"].to_numpy())) / float(np.sum(table["tokens"].to_numpy()))


def run_dataset(out_dir: Path) -> str | None:
    """The dataset path a run's checkpoints record (hyperparameters.yaml: data.init_args.path)."""
    for hyperparameters in sorted(out_dir.glob("*/hyperparameters.yaml"), reverse=True):
        config = yaml.safe_load(hyperparameters.read_text()) or {}
        path = ((config.get("data") or {}).get("init_args") or {}).get("path")
        if path:
            return str(path)
    return None


def to_bits_per_byte(nats_per_token: np.ndarray | float, per_token: float) -> np.ndarray | float:
    return np.asarray(nats_per_token) / math.log(2) / per_token


def plot(curves: Curves, per_token: float | None, title: str) -> bytes:
    figure, axis = plt.subplots(figsize=(8, 4.5), dpi=110)
    axis.plot(curves.train_tokens, curves.train_loss, label="train", color="tab:blue", alpha=0.7)
    axis.plot(curves.val_tokens, curves.val_loss, "o-", label="validation (held out)", color="tab:orange")
    axis.set_xlabel("tokens seen")
    axis.set_ylabel("loss (nats per token)")
    if per_token:
        secondary = axis.secondary_yaxis("right", functions=(lambda n: to_bits_per_byte(n, per_token),
                                                             lambda b: np.asarray(b) * math.log(2) * per_token))
        secondary.set_ylabel("bits per byte")
        uniform = UNIFORM_BITS_PER_BYTE * math.log(2) * per_token
        axis.axhline(uniform, color="grey", linestyle="--", linewidth=1, label="uniform byte guess (8.0 bits/byte)")
    axis.set_title(title)
    axis.grid(alpha=0.3)
    axis.legend()
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    plt.close(figure)
    return buffer.getvalue()


def summary(curves: Curves, per_token: float | None) -> str:
    if not len(curves.val_loss):
        return "no validation loss logged (eval.interval / eval.final_validation)"

    def both(nats: float) -> str:
        return f"{nats:.3f} nats/token" + (f" = {to_bits_per_byte(nats, per_token):.2f} bits/byte" if per_token else "")

    trend = ("falling" if all(b <= a for a, b in zip(curves.val_loss, curves.val_loss[1:]))
             else "falling overall" if curves.val_loss[-1] < curves.val_loss[0] else "NOT falling")
    lines = [f"held-out validation loss: {both(curves.val_loss[0])} -> {both(curves.val_loss[-1])} "
             f"over {len(curves.val_loss)} evaluations ({trend})"]
    if len(curves.train_tokens) and curves.val_tokens[-1] < curves.train_tokens[-1]:
        # LitGPT's CSV logger writes every log_interval steps and is not flushed when the run ends
        lines.append(f"the last evaluation in metrics.csv is at {curves.val_tokens[-1]:,.0f} of "
                     f"{curves.train_tokens[-1]:,.0f} tokens: a final one logged between two flushes of the CSV "
                     "(every train.log_interval steps) is not in it")
    if per_token:
        lines.append(f"a uniform guess over byte values scores {UNIFORM_BITS_PER_BYTE:.1f} bits/byte; "
                     f"{per_token:.3f} bytes per token")
    if len(curves.train_loss):
        lines.append(f"training loss: {curves.train_loss[0]:.3f} -> {curves.train_loss[-1]:.3f} nats/token")
    return "\n".join(lines)


@cli.command(PROG)
def main(argv: list[str] | None = None) -> int:
    parser = cli.parser(PROG, __doc__)
    parser.add_argument("run", type=Path, metavar="RUN_DIR",
                        help="the folder a litgpt pretrain run wrote (its --out_dir)")
    parser.add_argument("--dataset", help="the training dataset (default: the one the run records)")
    parser.add_argument("--out", type=Path, help="the PNG to write (default: RUN_DIR/loss.png)")
    args = parser.parse_args(argv)
    cli.existing_dir(args.run, "RUN_DIR")
    if args.dataset is not None:
        cli.existing_dir(args.dataset, "--dataset")
    out = args.out or args.run / "loss.png"
    cli.writable(out, "--out", folder=False)
    try:
        curves = read_metrics(args.run)
    except FileNotFoundError as error:
        raise cli.UsageError(str(error)) from None
    dataset_path = args.dataset or run_dataset(args.run)
    per_token = None
    if dataset_path:
        try:
            per_token = bytes_per_token(Dataset.open(dataset_path))
        except DatasetError as error:
            print(f"{PROG}: warning: no bits per byte ({error})", file=sys.stderr)
    write_atomic(out, plot(curves, per_token, f"{args.run.name}: loss against tokens seen"))
    print(summary(curves, per_token))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
