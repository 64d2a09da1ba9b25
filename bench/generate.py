"""Benchmark: grammar-constrained vs. free sampling from one checkpoint, in the same run.

Prints, for each: the share of samples that decode cleanly (strict entropy-level check), the share of
MCUs that entropy-decode (tolerant decode), how many stopped by EOS, and sampling tokens/s; then the
speed ratio (constrained / free). A small model trained for minutes on a CPU writes mostly noise,
which is where the constraint matters most.

    python -m bench.generate --checkpoint out/jpeg-tiny/final [--samples 16] [--max-new-tokens N]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from train.checkpoint import load_for_sampling
from train.generate import SamplingSettings, avc_clean_shares, sample


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--dataset", help="default: the one the checkpoint records")
    parser.add_argument("--samples", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, help="default: the model's whole context")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    sampler = load_for_sampling(args.checkpoint, dataset=args.dataset, device=torch.device("cpu"))
    profile = sampler.profile
    settings = SamplingSettings(seed=args.seed, max_new_tokens=args.max_new_tokens)  # top-k 50, temperature 1
    rates = {}
    print(f"{args.samples} unconditional samples from {args.checkpoint} ({profile.name}), top-k 50, temperature 1:")
    for label, rule in (("free", None), ("constrained", sampler.constraint)):
        started = time.perf_counter()
        samples = sample(sampler.model, sampler.tokenizer, b"", args.samples, settings=settings, constraint=rule)
        seconds = time.perf_counter() - started
        rates[label] = sum(s.tokens for s in samples) / seconds
        decoded = [profile.decode(s.stream) for s in samples]
        clean = sum(d.complete for d in decoded)
        valid, total = sum(d.valid_units for d in decoded), sum(d.total_units for d in decoded)
        units = f"{valid}/{total} {profile.unit}s valid ({valid / max(1, total):.1%})"
        facts = [d.facts for d in decoded]
        if all("macroblocks_announced" in f for f in facts):  # AVC: the strict check's shares
            shares, whole = avc_clean_shares(facts), sum(f["frames_whole"] for f in facts)
            cut = sum(f["frames_whole"] < f["frames_announced"] for f in facts)
            units += (f" | frames clean {shares['frames_clean_share']:.1%}, of the {whole} whole frames"
                      f" {shares['whole_frames_clean_share']:.1%} | macroblocks clean"
                      f" {shares['macroblocks_clean_share']:.1%}, of those written"
                      f" {shares['written_macroblocks_clean_share']:.1%} | cut short by the token budget {cut}")
        eos = sum(s.stopped == "eos" for s in samples)
        print(f"  {label:11s} decode cleanly {clean}/{len(samples)} | {units} | stopped by EOS {eos}/{len(samples)}"
              f" | {rates[label]:,.0f} tokens/s")
    print(f"  speed ratio constrained / free: {rates['constrained'] / rates['free']:.2f}x")


if __name__ == "__main__":
    main()
