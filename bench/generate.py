"""Benchmark: grammar-constrained vs. free sampling from one checkpoint, in the same run.

Prints, for each: the share of samples that are whole, valid files as sampled (the whole-file decode
rate), the share of the files made from them (the valid part, the rest filled) that pass the strict check
from their own bytes (FFmpeg at its strictest too, for AVC), the share of units that decode, the units
filled and dropped, how many stopped by EOS, and sampling tokens/s; then the speed ratio (constrained /
free) and, since free samples stop sooner, where steps are cheaper, the cost ratio at the same positions:
a constrained step against the same step without the time it spends judging draws. Both paths are warmed
up first (a 32-token batch each). For AVC also what the files keep when the frame a sample stops inside
is filled or dropped. A small model trained for minutes on a CPU writes mostly noise, which is where the
constraint matters most.

    python -m bench.generate --checkpoint out/jpeg-tiny/final [--unconditional 16] [--max-new-tokens N] [--seed 0]
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

from shared.codec.profile import CodecProfile, file_problems, view
from shared.tools import cli
from train.checkpoint import existing_checkpoint, load_for_sampling
from train.generate import (
    Sample,
    SamplingSettings,
    avc_clean_shares,
    fill_counts,
    sample,
)


def compare_partial_frames(profile: CodecProfile, samples: list[Sample]) -> None:
    """AVC: what the files keep when the frame a sample stops inside is filled, or dropped."""
    for mode in ("fill", "drop"):
        decoded = [profile.decode(s.stream, partial_frame=mode) for s in samples]
        kept = sum(d.finished.kept for d in decoded)
        written = sum(d.facts["macroblocks_written"] for d in decoded)
        frames = sum(len(d.frames) for d in decoded)
        filled = sum(len(d.finished.filled) for d in decoded)
        print(f"    partial frame {mode}: files keep {kept}/{written} written macroblocks, {frames} frames,"
              f" {filled} macroblocks filled")


@cli.command("python -m bench.generate")
def main(argv: list[str] | None = None) -> int:
    parser = cli.parser("python -m bench.generate", __doc__)
    parser.add_argument("--checkpoint", type=Path, required=True, help="a litgpt pretrain checkpoint folder")
    parser.add_argument("--dataset", help="the training dataset (default: the one the checkpoint records)")
    parser.add_argument("--unconditional", type=int, default=16, metavar="N",
                        help="N samples from BOS alone, sampled as one batch, as train.generate's (default 16)")
    parser.add_argument("--max-new-tokens", type=int, help="default: the model's whole context")
    parser.add_argument("--seed", type=int, default=0)
    cli.deprecated(parser, "--samples", "--unconditional", type=int)
    args = parser.parse_args(argv)
    existing_checkpoint(args.checkpoint)
    if args.dataset:
        cli.existing_dir(args.dataset, "--dataset")
    if args.unconditional < 1:
        raise cli.UsageError(f"--unconditional N must be positive, not {args.unconditional}")
    if args.max_new_tokens is not None and args.max_new_tokens < 1:
        raise cli.UsageError(f"--max-new-tokens must be positive, not {args.max_new_tokens}")

    sampler = load_for_sampling(args.checkpoint, dataset=args.dataset, device=torch.device("cpu"))
    profile = sampler.profile
    settings = SamplingSettings(seed=args.seed, max_new_tokens=args.max_new_tokens)  # top-k 50, temperature 1
    rates, step_costs = {}, {}
    print(f"{args.unconditional} unconditional samples from {args.checkpoint} ({profile.name}), top-k 50,"
          " temperature 1:")
    warm_up = SamplingSettings(seed=args.seed + 1000, max_new_tokens=32)  # first calls of the model and grammar
    for rule in (None, sampler.constraint):
        sample(sampler.model, sampler.tokenizer, b"", args.unconditional, settings=warm_up, constraint=rule)
    for label, rule in (("free", None), ("constrained", sampler.constraint)):
        started = time.perf_counter()
        samples = sample(sampler.model, sampler.tokenizer, b"", args.unconditional, settings=settings, constraint=rule)
        seconds = time.perf_counter() - started
        rates[label] = sum(s.tokens for s in samples) / seconds
        step_costs[label] = (seconds / samples[0].steps, samples[0].judging_seconds / samples[0].steps)
        views = [view(profile, s.stream) for s in samples]
        decoded = [v.decoded for v in views]
        whole = sum(d.complete for d in decoded)
        valid, total = sum(d.valid_units for d in decoded), sum(d.total_units for d in decoded)
        units = f"{valid}/{total} {profile.unit}s valid ({valid / max(1, total):.1%})"
        facts = [d.facts for d in decoded]
        if all("macroblocks_announced" in f for f in facts):  # AVC: the strict check's shares
            shares, frames_whole = avc_clean_shares(facts), sum(f["frames_whole"] for f in facts)
            cut = sum(f["frames_whole"] < f["frames_announced"] for f in facts)
            units += (f" | frames clean {shares['frames_clean_share']:.1%}, of the {frames_whole} whole frames"
                      f" {shares['whole_frames_clean_share']:.1%} | macroblocks clean"
                      f" {shares['macroblocks_clean_share']:.1%}, of those written"
                      f" {shares['written_macroblocks_clean_share']:.1%} | cut short by the token budget {cut}")
        # the files: every one must pass the strict check from its own bytes, filled or not
        sound = sum(not file_problems(profile, v.file) for v in views)
        eos = sum(s.stopped == "eos" for s in samples)
        print(f"  {label:11s} whole files as sampled {whole}/{len(samples)}"
              f" | files strictly valid {sound}/{len(samples)}"
              f" | {units} | {fill_counts(facts)} | stopped by EOS {eos}/{len(samples)} | {rates[label]:,.0f} tokens/s"
              f" | {samples[0].steps} steps of {1e3 * step_costs[label][0]:.2f} ms, judging"
              f" {1e3 * step_costs[label][1]:.2f} ms of them"
              f" ({1e6 * step_costs[label][1] / args.unconditional:.0f} us a token)")
        if profile.kind == "avc":
            compare_partial_frames(profile, samples)
    print(f"  speed ratio constrained / free, tokens/s: {rates['constrained'] / rates['free']:.2f}x (free samples "
          "stop by EOS sooner, at shorter contexts where a step is cheaper)")
    step, judging = step_costs["constrained"]
    print(f"  constrained cost / free cost at the same positions: {step / (step - judging):.3f}x (a constrained"
          " step against the same step without its judging: the rest of the work is the same)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
