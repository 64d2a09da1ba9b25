"""Benchmark: the two hot paths of `train.evaluate`, each against a baseline measured in the same run.

1. Prompted completion through the sampling engine (`train.engine`): prompts of different lengths in static
   batches of --max-batch rows (a batch's finished rows idle until its longest ends) vs. continuous batching
   over as many slots (a finished row's slot takes the next prompt at once). Same jobs, same seeds, so the
   same samples: tokens/s and utilization (tokens generated / slot-steps; for continuous batching while
   prompts wait, and over the whole run).
2. The Fréchet distance at Inception's 2048 dimensions: symmetric eigendecompositions (train/fid.py)
   vs. scipy.linalg.sqrtm of the covariance product (the pytorch-fid and clean-fid way) and vs. the
   eigenvalues of that product (the torchmetrics way, the fastest of the usual ones).

    python -m bench.evaluate --checkpoint out/jpeg-tiny/final [--num-images 16] [--prompt-ratio 0.5] [--max-batch 4]
"""

from __future__ import annotations

import sys
import time

import numpy as np
import scipy.linalg
import torch

from shared.samples.photos import sample_crops
from shared.tools import cli
from train.checkpoint import existing_checkpoint, load_for_sampling, place
from train.engine import Engine, Job, SamplingSettings
from train.fid import frechet_distance


def sqrtm_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    root = scipy.linalg.sqrtm(sigma1 @ sigma2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(root))


def eigvals_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """torchmetrics' FID: tr (S1 S2)^½ as the sum of the square roots of S1 S2's eigenvalues, no matrix root."""
    trace_of_root = np.sqrt(np.linalg.eigvals(sigma1 @ sigma2).astype(complex)).real.sum()
    return float(((mu1 - mu2) ** 2).sum() + np.trace(sigma1) + np.trace(sigma2) - 2 * trace_of_root)


@cli.command("python -m bench.evaluate")
def main(argv: list[str] | None = None) -> int:
    parser = cli.parser("python -m bench.evaluate", __doc__)
    parser.add_argument("--checkpoint", type=place, required=True, help="a litgpt pretrain checkpoint folder")
    parser.add_argument("--dataset", help="the training dataset (default: the one the checkpoint records)")
    parser.add_argument("--num-images", type=int, default=16,
                        help="prompt images (embedded sample crops) to complete (default 16)")
    parser.add_argument("--prompt-ratio", type=float, default=0.5,
                        help="share of each image's MCUs the model is given (default 0.5)")
    parser.add_argument("--max-batch", type=int, default=4, metavar="SLOTS",
                        help="KV-cache slots, for both static batches and continuous batching (default 4)")
    cli.deprecated(parser, "--prompts", "--num-images", type=int)
    cli.deprecated(parser, "--ratio", "--prompt-ratio", type=float)
    args = parser.parse_args(argv)
    existing_checkpoint(args.checkpoint)
    if args.dataset:
        cli.existing_dir(args.dataset, "--dataset")
    if args.num_images < 1:
        raise cli.UsageError(f"--num-images must be positive, not {args.num_images}")
    if args.max_batch < 1:
        raise cli.UsageError(f"--max-batch must be at least 1, not {args.max_batch}")
    if not 0.0 <= args.prompt_ratio <= 1.0:
        raise cli.UsageError(f"--prompt-ratio must be in [0, 1], not {args.prompt_ratio}")

    sampler = load_for_sampling(args.checkpoint, dataset=args.dataset, device=torch.device("cpu"))
    model, tokenizer, profile, constraint = sampler.model, sampler.tokenizer, sampler.profile, sampler.constraint
    settings = SamplingSettings(max_new_tokens=4096)  # constrained, top-k 50, temperature 1
    prompts = [profile.prompt(profile.encode(png), args.prompt_ratio)
               for _, png in sample_crops(args.num_images, seed=77)]
    jobs = [Job(prompt, seed) for seed, prompt in enumerate(prompts)]
    print(f"{len(prompts)} prompts of {min(map(len, prompts))}-{max(map(len, prompts))} bytes "
          f"({args.prompt_ratio:.0%} of {profile.name} images), constrained, top-k 50, {args.max_batch} slots, "
          f"{torch.get_num_threads()} threads:")
    rates, streams = {}, {}
    for label in ("static", "continuous"):
        engine = Engine(model, tokenizer, jobs, settings=settings, constraint=constraint, max_batch=args.max_batch,
                        static=label == "static")
        started = time.perf_counter()
        done = dict(engine.run())
        seconds = time.perf_counter() - started
        stats = engine.stats
        rates[label] = stats.tokens / seconds
        streams[label] = [done[i].stream for i in range(len(jobs))]
        utilization = (f"utilization {stats.overall_utilization:.1%}" if label == "static" else
                       f"utilization while prompts wait {stats.utilization:.1%}, over the whole run "
                       f"{stats.overall_utilization:.1%}")
        print(f"  {label:10s} {len(jobs) / seconds:6.2f} completions/s, {rates[label]:8,.0f} tokens/s | {utilization}"
              f" ({stats.steps} steps, {stats.tokens} tokens)")
    print(f"  speed ratio continuous / static: {rates['continuous'] / rates['static']:.2f}x; every completion the "
          f"same: {'yes' if streams['static'] == streams['continuous'] else 'NO'}")

    rng = np.random.default_rng(0)
    features = [rng.normal(size=(4096, 2048)) @ rng.normal(size=(2048, 2048)) / 45 for _ in range(2)]
    stats = [(f.mean(0), np.cov(f, rowvar=False)) for f in features]
    timings = {}
    for label, function in (("scipy sqrtm", sqrtm_distance), ("eigvals", eigvals_distance), ("eigh", frechet_distance)):
        started = time.perf_counter()
        value = function(*stats[0], *stats[1])
        timings[label] = time.perf_counter() - started
        print(f"  Fréchet distance, 2048 dims, {label:11s}: {timings[label]:6.2f} s  (FID {value:.4f})")
    print(f"  speed ratio eigh / scipy sqrtm: {timings['scipy sqrtm'] / timings['eigh']:.2f}x, "
          f"eigh / eigvals (torchmetrics): {timings['eigvals'] / timings['eigh']:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
