"""Benchmark: the training data module against in-memory baselines, measured in the same run.

1. Loader throughput: tokens/s of ``CodecShards``' train loader (byte-range reads of each rank's own
   members, their tar and npy header checks, epoch order, batching, worker processes) vs. slicing the same
   arrays already in memory; as one process, and as rank 0 of ``--world`` ranks (which takes every
   ``--world``-th micro-batch of the global order and reads only those members).
2. Bytes read per rank: rank 0 of W = 1, 2, 4, 8 ranks through ``--epochs`` epochs in one process (no
   workers, so its reader's counts are at hand): its bytes per epoch, their ratio to the dataset's train
   bytes / W (the ideal), the requests per shard visit, and all W ranks' bytes together against the train
   bytes (the loader it replaced read every shard whole on every rank: W).
3. Training iteration: the tiny Jpeg-LM's forward + backward + optimizer step (its config's optimizer) fed
   by our loader vs. fed by an in-memory synthetic loader (ratio near 1.0 means the loader costs the
   training loop nothing).

    python -m bench.loader [--dataset DIR] [--batches 200] [--steps 30] [--workers 2] [--world 8] [--epochs 4]

Without --dataset it builds the tiny config's dataset from the embedded sample photos first.
"""

from __future__ import annotations

import gc
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import yaml
from litgpt import GPT, Config
from litgpt.utils import CycleIterator, chunked_cross_entropy, instantiate_torch_optimizer

from bench import job_flags
from preprocess.run import run
from shared.format.dataset import Dataset
from shared.tools import cli
from train.data import CodecShards, ResumableLoader

ROOT = Path(__file__).resolve().parents[1]


def loader_tokens_per_second(path: str, batch_size: int, batches: int, workers: int, world: int = 1) -> float:
    """Rank 0's train loader of ``world`` ranks (built as each rank's ``train_dataloader()`` builds it)."""
    data = CodecShards(path=path, num_workers=workers)
    data.connect(batch_size=batch_size)
    data.setup()
    iterator = CycleIterator(ResumableLoader(data.train_stream(0, world), workers))
    next(iterator)  # worker start-up is paid once per run, not per batch
    start, tokens = time.perf_counter(), 0
    for _ in range(batches):
        tokens += next(iterator).numel()
    return tokens / (time.perf_counter() - start)


def bytes_per_rank(path: str, batch_size: int, world: int, epochs: int) -> tuple[float, float, float, float]:
    """Rank 0 of ``world`` through ``epochs`` epochs: (its bytes per epoch, their ratio to the train bytes /
    ``world``, requests per shard visit, all ranks' bytes / the train bytes)."""
    data = CodecShards(path=path, num_workers=0)
    data.connect(batch_size=batch_size)
    data.setup()
    train_bytes = sum(s["bytes"] for s in data.opened().shards("train"))
    shards = len(data.opened().shards("train"))
    per_rank = []
    for rank in range(world):
        loader = ResumableLoader(data.train_stream(rank, world), num_workers=0)
        iterator = iter(loader)
        for _ in range(epochs * loader.dataset.examples // (world * batch_size)):  # the last one ends in the epochs
            next(iterator)
        counts = loader.dataset.reader.counts
        per_rank.append((counts.bytes / (counts.visits / shards), counts.requests / counts.visits))
    per_epoch, requests = per_rank[0]
    return per_epoch, per_epoch / (train_bytes / world), requests, sum(b for b, _ in per_rank) / train_bytes


def memory_tokens_per_second(path: str, batch_size: int, batches: int) -> float:
    dataset = Dataset.open(path)
    windows = np.concatenate([dataset.read_windows(s) for s in dataset.shards("train")])
    order = np.random.default_rng(0).permutation(len(windows))
    start, tokens = time.perf_counter(), 0
    for index in range(batches):
        rows = order[(index * batch_size) % len(order):][:batch_size]
        batch = torch.from_numpy(windows[rows].astype(np.int64))
        tokens += batch.numel()
    return tokens / (time.perf_counter() - start)


def step_seconds(model: GPT, optimizer: torch.optim.Optimizer, batches, steps: int, bf16: bool) -> float:
    def step(batch: torch.Tensor) -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):  # what precision: bf16-mixed does
            logits = model(batch[:, :-1])
        loss = chunked_cross_entropy(logits, batch[:, 1:])
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()

    step(next(batches))  # warm-up
    start = time.perf_counter()
    for _ in range(steps):
        step(next(batches))
    return (time.perf_counter() - start) / steps


@cli.command("python -m bench.loader")
def main(argv: list[str] | None = None) -> int:
    parser = cli.parser("python -m bench.loader", __doc__)
    parser.add_argument("--dataset", help="a dataset made for train/jpeg-tiny.yaml (default: build one)")
    parser.add_argument("--batches", type=int, default=200)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--world", type=int, default=8, help="ranks, for the rank-0 loader measurement (default 8)")
    parser.add_argument("--epochs", type=int, default=4, help="epochs, for the bytes per rank (default 4)")
    cli.deprecated(parser, "--data", "--dataset")
    args = parser.parse_args(argv)
    if args.dataset:
        cli.existing_dir(args.dataset, "--dataset")
    for flag, value in (("--batches", args.batches), ("--steps", args.steps), ("--world", args.world),
                        ("--epochs", args.epochs)):
        if value < 1:
            raise cli.UsageError(f"{flag} must be positive, not {value}")
    if args.workers < 0:
        raise cli.UsageError(f"--workers must be 0 or more, not {args.workers}")

    settings = yaml.safe_load((ROOT / "train" / "jpeg-tiny.yaml").read_text())
    batch_size = settings["train"]["micro_batch_size"]
    bf16 = settings["precision"].startswith("bf16")  # the config's precision, as the demo trains
    with tempfile.TemporaryDirectory(prefix="codec-lm-loader-") as scratch:
        path = args.dataset or str(Path(scratch) / "jpeg-tiny")
        if not args.dataset:
            run(job_flags(output=path, profile="jpeg-64-q25", seq_len=1023, val_fraction=0.05,
                          direct_running_mode="in_memory", direct_num_workers=1))
        ours = loader_tokens_per_second(path, batch_size, args.batches, args.workers)
        gc.collect()  # its worker processes end before the next loader forks its own
        ranked = loader_tokens_per_second(path, batch_size, args.batches, args.workers, args.world)
        memory = memory_tokens_per_second(path, batch_size, args.batches)
        train_bytes = sum(s["bytes"] for s in Dataset.open(path).shards("train"))
        table = {world: bytes_per_rank(path, batch_size, world, args.epochs) for world in (1, 2, 4, 8)}

        torch.manual_seed(0)
        model = GPT(Config(**settings["model_config"]))
        optimizer = instantiate_torch_optimizer(settings["optimizer"], model.parameters())  # as litgpt pretrain does
        data = CodecShards(path=path, num_workers=args.workers)
        data.connect(batch_size=batch_size)
        data.setup()
        with_ours = step_seconds(model, optimizer, CycleIterator(data.train_dataloader()), args.steps, bf16)
        width = settings["model_config"]["block_size"] + 1
        synthetic = iter(lambda: torch.randint(0, 320, (batch_size, width)), None)
        with_synthetic = step_seconds(model, optimizer, synthetic, args.steps, bf16)

    print(f"\nloader, batches of {batch_size} x {width} tokens, {args.workers} workers:")
    print(f"  CodecShards {ours:12,.0f} tokens/s | same arrays in memory {memory:12,.0f} tokens/s | "
          f"ratio {ours / memory:.3f}x")
    print(f"  rank 0 of {args.world}: {ranked:12,.0f} tokens/s | ratio {ranked / memory:.3f}x")
    print(f"  (a 7B model on one H100 consumes ~7,000 tokens/s: the loader is {ours / 7000:,.0f}x faster, "
          f"{ranked / 7000:,.0f}x as one of {args.world} ranks)")
    print(f"\nbytes read per rank, micro-batch {batch_size}, {args.epochs} epochs, no workers "
          f"(train split: {train_bytes:,} bytes):")
    print(f"  {'W':>3} | {'rank 0 bytes/epoch':>18} | {'/ (train bytes / W)':>19} | {'requests/shard visit':>20} | "
          f"{'all ranks / train bytes':>23}")
    for world, (per_epoch, ratio, requests, together) in table.items():
        print(f"  {world:>3} | {per_epoch:>18,.0f} | {ratio:>18.3f}x | {requests:>20.1f} | {together:>22.3f}x")
    print(f"tiny model training step ({settings['precision']}, eager): "
          f"{with_ours * 1000:.0f} ms with CodecShards | {with_synthetic * 1000:.0f} ms "
          f"with in-memory synthetic batches | ratio {with_ours / with_synthetic:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
