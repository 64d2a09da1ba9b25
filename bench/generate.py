"""Benchmark: grammar-constrained vs. free sampling from one checkpoint, in the same run.

Prints, for each: the share of samples that decode cleanly (strict entropy-level check), the share of
MCUs that entropy-decode (tolerant decode), how many stopped by EOS, and sampling tokens/s; then the
speed ratio (constrained / free). A small model trained for minutes on a CPU writes mostly noise,
which is where the constraint matters most.

    python bench/generate.py --checkpoint out/jpeg-tiny/final [--samples 16] [--max-new-tokens N]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from shared.token_constraint import TokenConstraint
from train.checkpoint import open_dataset
from train.generate import grammar_for, load_model, sample


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--dataset", help="default: the one the checkpoint records")
    parser.add_argument("--samples", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, help="default: the model's whole context")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    data = open_dataset(args.checkpoint, args.dataset)
    profile, tokenizer = data.profile, data.tokenizer
    model = load_model(args.checkpoint, torch.device("cpu"))
    constraint = TokenConstraint(grammar_for(profile), tokenizer.token_bytes, tokenizer.eos_id)
    rates = {}
    print(f"{args.samples} unconditional samples from {args.checkpoint} ({profile.name}), top-k 50, temperature 1:")
    for label, rule in (("free", None), ("constrained", constraint)):
        started = time.perf_counter()
        budget = args.max_new_tokens or model.config.block_size
        samples = sample(model, tokenizer, b"", args.samples, budget, 1.0, 50, 1.0, args.seed, rule)
        seconds = time.perf_counter() - started
        rates[label] = sum(s.tokens for s in samples) / seconds
        if profile.kind == "jpeg":
            decoded = [profile.decode(s.stream) for s in samples]
            clean = sum(d.complete for d in decoded)
            units = f"{sum(d.valid_mcus for d in decoded) / (len(decoded) * profile.total_mcus):.1%} of MCUs valid"
        else:
            decoded = [profile.decode(s.stream) for s in samples]
            clean = sum(d.complete for d in decoded)
            units = f"{sum(d.valid_frames for d in decoded)} frames decoded"
        eos = sum(s.stopped == "eos" for s in samples)
        print(f"  {label:11s} decode cleanly {clean}/{len(samples)} | {units} | stopped by EOS {eos}/{len(samples)}"
              f" | {rates[label]:,.0f} tokens/s")
    print(f"  speed ratio constrained / free: {rates['constrained'] / rates['free']:.2f}x")


if __name__ == "__main__":
    main()
