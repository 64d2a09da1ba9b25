"""Benchmark: the strict AVC check (``avc_syntax.check_stream``) against FFmpeg's H.264 decoder.

Real clips are encoded by the profile and checked by both (both must say clean); then each stream is
corrupted at random bytes (seeded) and both judge it: clean (every announced frame decodes with no error
and no concealment) or not. Prints the agreement rate, the disagreements in each direction, and the
check's speed.

    python -m bench.avc_check [--profile avc-128x72-3fps-5s-qp37] [--num-videos 4] [--trials 100] [--bytes 1]
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass

import numpy as np

from shared.codec.avc.profile import AvcProfile, ffmpeg_verdict
from shared.codec.avc.syntax import check_stream
from shared.samples.clips import sample_clip
from shared.tools import cli


@dataclass
class Agreement:
    trials: int = 0
    both_clean: int = 0
    both_broken: int = 0
    only_check_broken: int = 0  # the check finds an error FFmpeg does not report
    only_ffmpeg_broken: int = 0  # FFmpeg reports an error the check misses
    examples: list[str] = None  # type: ignore[assignment]

    @property
    def rate(self) -> float:
        return (self.both_clean + self.both_broken) / max(1, self.trials)


def judge(profile: AvcProfile, stream: bytes) -> tuple[bool, bool, str]:
    """(check says clean, FFmpeg says clean, the check's first problem)."""
    check = check_stream(profile.header, stream, profile.max_frames)
    verdict = ffmpeg_verdict(profile.restore(stream), profile.max_frames + 2)
    return check.ok, verdict.clean(profile.frame_count(stream)), check.problems[0] if check.problems else ""


def corrupt(stream: bytes, rng: np.random.Generator, count: int) -> bytes:
    data = bytearray(stream)
    for _ in range(count):
        data[int(rng.integers(len(data)))] = int(rng.integers(256))
    return bytes(data)


def agreement(profile: AvcProfile, streams: list[bytes], trials: int, count: int, seed: int = 0) -> Agreement:
    """Both verdicts on ``trials`` corruptions (``count`` random bytes each) of the streams."""
    rng = np.random.default_rng(seed)
    result = Agreement(examples=[])
    for trial in range(trials):
        broken = corrupt(streams[trial % len(streams)], rng, count)
        ours, theirs, problem = judge(profile, broken)
        result.trials += 1
        if ours and theirs:
            result.both_clean += 1
        elif not ours and not theirs:
            result.both_broken += 1
        elif ours:
            result.only_ffmpeg_broken += 1
            result.examples.append(f"FFmpeg only (trial {trial})")
        else:
            result.only_check_broken += 1
            result.examples.append(f"check only (trial {trial}): {problem}")
    return result


@cli.command("python -m bench.avc_check")
def main(argv: list[str] | None = None) -> int:
    parser = cli.parser("python -m bench.avc_check", __doc__)
    parser.add_argument("--profile", default="avc-128x72-3fps-5s-qp37")
    parser.add_argument("--num-videos", type=int, default=4, help="real clips (embedded samples) to corrupt")
    parser.add_argument("--trials", type=int, default=100)
    parser.add_argument("--bytes", type=int, default=1, help="random bytes replaced per corrupted stream")
    parser.add_argument("--seed", type=int, default=0)
    cli.deprecated(parser, "--clips", "--num-videos", type=int)
    args = parser.parse_args(argv)
    for flag, value in (("--num-videos", args.num_videos), ("--trials", args.trials), ("--bytes", args.bytes)):
        if value < 1:
            raise cli.UsageError(f"{flag} must be positive, not {value}")
    try:
        profile = AvcProfile.from_name(args.profile)
    except ValueError as error:
        raise cli.UsageError(f"--profile: {error}") from None

    streams = [profile.encode(sample_clip(index)[1]) for index in range(args.num_videos)]
    started = time.perf_counter()
    checks = [check_stream(profile.header, stream) for stream in streams]
    seconds = time.perf_counter() - started
    macroblocks = sum(check.macroblocks for check in checks)
    real = [judge(profile, stream)[:2] for stream in streams]
    print(f"{profile.name}: {len(streams)} real clips, {macroblocks} macroblocks; clean by the check "
          f"{sum(ours for ours, _ in real)}/{len(streams)}, by FFmpeg {sum(theirs for _, theirs in real)}/"
          f"{len(streams)}; check speed {macroblocks / seconds:,.0f} macroblocks/s")
    result = agreement(profile, streams, args.trials, args.bytes, args.seed)
    print(f"{result.trials} streams with {args.bytes} random byte(s) replaced: agreement {result.rate:.1%} "
          f"(both clean {result.both_clean}, both broken {result.both_broken}, only the check finds an error "
          f"{result.only_check_broken}, only FFmpeg {result.only_ffmpeg_broken})")
    for example in result.examples[:10]:
        print("  " + example)
    return 0


if __name__ == "__main__":
    sys.exit(main())
