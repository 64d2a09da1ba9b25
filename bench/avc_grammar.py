"""Benchmark: what the macroblock-level AVC grammar costs per sampled token, without a model, and
whether constrained random walks decode.

Real clips encoded by the profile are tokenized with a dataset's tokenizer and replayed token by token
(teacher forcing), as a sampler would step through them. At each step the constraint answers in one of
three ways: as ``train.generate`` asks it (draw first, judge after: one verdict on the sampled token,
which is also the walk to the next state), with top-k verdicts in logit order until k allowed tokens are
found (the logits are random here; what top-p sampling needs), and with the whole vocabulary mask.
Prints microseconds per token for each, cold (a fresh grammar, first clip; the process's element code
tables, built once, are timed apart) and warm (later clips, caches filled by earlier ones).
Compare with a model's step: ``bench.generate`` prints tokens/s free and constrained.

With ``--walks N``: N constrained random walks (random logits) per profile, each stream judged by FFmpeg
and by the strict check (every frame clean, the announced frame count decoded).

    python -m bench.avc_grammar --dataset data/avc-tiny [--num-videos 4] [--top-k 50]
    python -m bench.avc_grammar --walks 20 [--profiles avc-128x72-3fps-5s-qp37 avc-64x48-3fps-2s-qp37]
"""

from __future__ import annotations

import sys
import time

import numpy as np

from shared.codec.avc.profile import AvcProfile, ffmpeg_verdict
from shared.codec.avc.syntax import check_stream
from shared.codec.token_constraint import TokenConstraint
from shared.format.dataset import Dataset
from shared.samples.clips import sample_clip
from shared.tools import cli

# single bytes, and multi-byte tokens like a BPE vocabulary's: start codes with NAL headers, zero runs
WALK_VOCAB = [bytes([value]) for value in range(256)] + [
    b"\x00\x00\x01", b"\x00\x00\x00\x01", b"\x00\x00\x01\x65\x88", b"\x00\x00\x01\x41", b"\x00\x00",
    b"\x00\x00\x03", b"\xff\xff", b"\x80", b"\x9a\x21", b"\x42\x21\x0f", b"\x00\x03\x00"]
WALK_EOS = len(WALK_VOCAB)
WAYS = ("sampled token", "top-k verdicts", "whole mask")


def walk(profile: AvcProfile, seed: int, stop: float) -> bytes:
    """A constrained random walk: random logits each step, the best allowed token; EOS, where allowed,
    with probability ``stop`` (always once the clip is full). Every state must allow something."""
    rng = np.random.default_rng(seed)
    constraint = TokenConstraint(profile.grammar(), [*WALK_VOCAB, b""], WALK_EOS)
    state, out = constraint.start(), bytearray()
    while True:
        if constraint.can_end(state) and (rng.random() < stop or constraint.grammar.is_done(state)):
            return bytes(out)
        ranked = [int(token) for token in rng.permutation(WALK_EOS)]
        chosen = constraint.first_allowed(state, ranked, 1)
        if not chosen:
            raise AssertionError(f"dead end after {len(out)} bytes")
        out += WALK_VOCAB[chosen[0]]
        state = constraint.advance(state, chosen[0])


def judge_walks(profile: AvcProfile, seeds: range, stop: float) -> dict[str, int]:
    """Counts over random walks: streams, frames, and those FFmpeg and the check find clean."""
    counts = dict(streams=0, frames=0, bytes=0, ffmpeg_clean_streams=0, check_clean_streams=0, ffmpeg_clean_frames=0)
    for seed in seeds:
        stream = walk(profile, seed, stop)
        frames = profile.frame_count(stream)
        verdict = ffmpeg_verdict(profile.restore(stream), profile.max_frames + 2)
        check = check_stream(profile.header, stream, profile.max_frames)
        counts["streams"] += 1
        counts["frames"] += frames
        counts["bytes"] += len(stream)
        counts["ffmpeg_clean_streams"] += verdict.clean(frames)
        counts["check_clean_streams"] += check.ok and check.clean_frames == frames
        counts["ffmpeg_clean_frames"] += verdict.frames - verdict.corrupt_frames if not verdict.errors else 0
    return counts


def replay(constraint: TokenConstraint, tokens: np.ndarray, top_k: int, rng: np.random.Generator,
           way: str) -> float:
    """Seconds spent in the constraint over one stream's tokens, asked one of ``WAYS``."""
    state, spent = constraint.start(), 0.0
    for token in tokens.tolist():
        ranked = [int(t) for t in rng.permutation(constraint.vocab_size)] if way == "top-k verdicts" else []
        started = time.perf_counter()
        if way == "sampled token":
            state = constraint.try_advance(state, token)
            assert state is not None
        else:
            if way == "whole mask":
                assert constraint.allowed(state)[token]
            else:
                constraint.first_allowed(state, ranked, top_k)
                assert constraint.is_allowed(state, token)
            state = constraint.advance(state, token)
        spent += time.perf_counter() - started
    assert constraint.can_end(state)
    return spent


@cli.command("python -m bench.avc_grammar")
def main(argv: list[str] | None = None) -> int:
    parser = cli.parser("python -m bench.avc_grammar", __doc__)
    parser.add_argument("--dataset", help="an AVC dataset (its tokenizer and profile are used)")
    parser.add_argument("--walks", type=int, default=0, help="random walks per profile instead of replaying clips")
    parser.add_argument("--profiles", nargs="+", default=["avc-128x72-3fps-5s-qp37", "avc-64x48-3fps-2s-qp37"])
    parser.add_argument("--stop", type=float, default=0.05, help="EOS probability where a walk may stop")
    parser.add_argument("--num-videos", type=int, default=4, help="held-out clips (embedded samples) to replay")
    parser.add_argument("--top-k", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    cli.deprecated(parser, "--clips", "--num-videos", type=int)
    args = parser.parse_args(argv)
    if args.dataset:
        cli.existing_dir(args.dataset, "--dataset")
    for flag, value in (("--num-videos", args.num_videos), ("--top-k", args.top_k)):
        if value < 1:
            raise cli.UsageError(f"{flag} must be positive, not {value}")
    if args.walks < 0:
        raise cli.UsageError(f"--walks must be 0 or more, not {args.walks}")
    if args.walks:
        try:
            profiles = [AvcProfile.from_name(name) for name in args.profiles]
        except ValueError as error:
            raise cli.UsageError(f"--profiles: {error}") from None
        for name, profile in zip(args.profiles, profiles):
            counts = judge_walks(profile, range(args.seed, args.seed + args.walks), args.stop)
            print(f"{name}: {counts}", flush=True)
        return 0
    if not args.dataset:
        raise cli.UsageError("--dataset is needed to replay clips (or pass --walks)")
    dataset = Dataset.open(args.dataset)
    profile, tokenizer = dataset.profile, dataset.tokenizer
    if profile.kind != "avc":
        raise cli.UsageError(f"--dataset {args.dataset} is a {profile.name} dataset: pass an AVC one")
    streams = [profile.encode(sample_clip(1000 + index)[1]) for index in range(args.num_videos)]
    encoded = [tokenizer.encode(stream) for stream in streams]
    print(f"{profile.name}, vocabulary {tokenizer.vocab_size}, {args.num_videos} clips of "
          f"{sum(map(len, encoded)) / len(encoded):,.0f} tokens on average:", flush=True)
    # the element code tables are built once per process (module-level caches): time that apart
    started = time.perf_counter()
    replay(TokenConstraint(profile.grammar(), tokenizer.token_bytes, tokenizer.eos_id),
           tokenizer.encode(profile.encode(sample_clip(999)[1])), args.top_k, np.random.default_rng(0), "sampled token")
    print(f"  once per process: code tables and a first clip, {time.perf_counter() - started:.2f} s", flush=True)
    for way in WAYS:
        constraint = TokenConstraint(profile.grammar(), tokenizer.token_bytes, tokenizer.eos_id)
        rng = np.random.default_rng(args.seed)
        times = [replay(constraint, tokens, args.top_k, rng, way) for tokens in encoded]
        cold = times[0] / len(encoded[0]) * 1e6
        warm = sum(times[1:]) / max(1, sum(map(len, encoded[1:]))) * 1e6
        label = f"top-{args.top_k} verdicts" if way == "top-k verdicts" else way
        print(f"  {label:16s} {cold:8.1f} us/token cold (first clip), {warm:8.1f} us/token warm (the others)",
              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
