"""Benchmark: the two hot paths of `train.evaluate`, each against a baseline measured in the same run.

1. Prompted completion: prompts of different lengths sampled as one batch (`sample_rows`, per-row
   positions) vs. the same prompts one at a time. Same rows, same seeds, so the same samples.
2. The Fréchet distance at Inception's 2048 dimensions: symmetric eigendecompositions (train/fid.py)
   vs. scipy.linalg.sqrtm of the covariance product (the pytorch-fid way).

    python -m bench.evaluate --checkpoint out/jpeg-tiny/final [--prompts 16] [--ratio 0.5]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import scipy.linalg
import torch

from shared.samples.photos import sample_crops
from train.checkpoint import load_for_sampling
from train.fid import frechet_distance
from train.generate import SamplingSettings, sample_rows


def sqrtm_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    root = scipy.linalg.sqrtm(sigma1 @ sigma2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(root))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--dataset", help="default: the one the checkpoint records")
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--ratio", type=float, default=0.5)
    args = parser.parse_args()

    sampler = load_for_sampling(args.checkpoint, dataset=args.dataset, device=torch.device("cpu"))
    model, tokenizer, profile, constraint = sampler.model, sampler.tokenizer, sampler.profile, sampler.constraint
    settings = SamplingSettings(max_new_tokens=4096)  # constrained, top-k 50, temperature 1
    prompts = [profile.prompt(profile.encode(png), args.ratio) for _, png in sample_crops(args.prompts, seed=77)]
    seeds = list(range(len(prompts)))
    print(f"{len(prompts)} prompts of {min(map(len, prompts))}-{max(map(len, prompts))} bytes "
          f"({args.ratio:.0%} of {profile.name} images), constrained, top-k 50, {torch.get_num_threads()} threads:")
    rates = {}
    for label in ("one at a time", "one batch"):
        started = time.perf_counter()
        if label == "one batch":
            samples = sample_rows(model, tokenizer, prompts, seeds, settings=settings, constraint=constraint)
        else:
            samples = [sample_rows(model, tokenizer, [p], [s], settings=settings, constraint=constraint)[0]
                       for p, s in zip(prompts, seeds)]
        seconds = time.perf_counter() - started
        rates[label] = len(samples) / seconds
        tokens = sum(s.tokens for s in samples)
        print(f"  {label:13s} {rates[label]:6.2f} completions/s, {tokens / seconds:8,.0f} tokens/s")
    print(f"  speed ratio batched / one at a time: {rates['one batch'] / rates['one at a time']:.2f}x")

    rng = np.random.default_rng(0)
    features = [rng.normal(size=(4096, 2048)) @ rng.normal(size=(2048, 2048)) / 45 for _ in range(2)]
    stats = [(f.mean(0), np.cov(f, rowvar=False)) for f in features]
    timings = {}
    for label, function in (("scipy sqrtm", sqrtm_distance), ("eigh", frechet_distance)):
        started = time.perf_counter()
        value = function(*stats[0], *stats[1])
        timings[label] = time.perf_counter() - started
        print(f"  Fréchet distance, 2048 dims, {label:11s}: {timings[label]:6.2f} s  (FID {value:.4f})")
    print(f"  speed ratio eigh / scipy sqrtm: {timings['scipy sqrtm'] / timings['eigh']:.2f}x")


if __name__ == "__main__":
    main()
