"""Benchmark: what the macroblock-level AVC grammar costs per sampled token, without a model.

Real clips encoded by the profile are tokenized with a dataset's tokenizer and replayed token by token
(teacher forcing), as a sampler would step through them. At each step the constraint answers as
``train.generate`` asks it (top-k: verdicts in logit order until k allowed tokens are found; the logits
are random here) and, separately, with the whole vocabulary mask. Prints microseconds per token for
both, cold (a fresh grammar, first clip) and warm (later clips, caches filled by earlier ones).
Compare with a model's step: ``bench.generate`` prints tokens/s free and constrained.

    python -m bench.avc_grammar --dataset data/avc-tiny [--clips 4] [--top-k 50]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from shared.codec.token_constraint import TokenConstraint
from shared.format.dataset import Dataset
from shared.samples.clips import sample_clip


def replay(constraint: TokenConstraint, tokens: np.ndarray, top_k: int, rng: np.random.Generator,
           full_mask: bool) -> float:
    """Seconds spent in the constraint over one stream's tokens."""
    state, spent = constraint.start(), 0.0
    for token in tokens:
        ranked = [int(t) for t in rng.permutation(constraint.vocab_size)]
        started = time.perf_counter()
        if full_mask:
            assert constraint.allowed(state)[token]
        else:
            constraint.first_allowed(state, ranked, top_k)
            assert constraint.is_allowed(state, int(token))
        state = constraint.advance(state, int(token))
        spent += time.perf_counter() - started
    assert constraint.can_end(state)
    return spent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", required=True, help="an AVC dataset (its tokenizer and profile are used)")
    parser.add_argument("--clips", type=int, default=4)
    parser.add_argument("--top-k", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    dataset = Dataset(args.dataset)
    profile, tokenizer = dataset.profile, dataset.tokenizer
    streams = [profile.encode(sample_clip(1000 + index)[1]) for index in range(args.clips)]
    encoded = [tokenizer.encode(stream) for stream in streams]
    print(f"{profile.name}, vocabulary {tokenizer.vocab_size}, {args.clips} clips of "
          f"{sum(map(len, encoded)) / len(encoded):,.0f} tokens on average:")
    for full_mask in (False, True):
        constraint = TokenConstraint(profile.grammar(), tokenizer.token_bytes, tokenizer.eos_id)
        rng = np.random.default_rng(args.seed)
        times = [replay(constraint, tokens, args.top_k, rng, full_mask) for tokens in encoded]
        cold = times[0] / len(encoded[0]) * 1e6
        warm = sum(times[1:]) / max(1, sum(map(len, encoded[1:]))) * 1e6
        label = "whole mask" if full_mask else f"top-{args.top_k} verdicts"
        print(f"  {label:16s} {cold:8.1f} us/token cold (first clip), {warm:8.1f} us/token warm (the others)")


if __name__ == "__main__":
    main()
