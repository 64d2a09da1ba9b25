"""Benchmark: what the codec grammars cost per sampled token, against a free sampling step, in one run.

Real streams (JPEG: sample photo crops; AVC: sample clips) are encoded by a profile, tokenized with a
tokenizer trained here on other streams of the same profile, and replayed token by token as
``train.generate`` asks the constraint: one ``try_advance`` on the drawn token (its verdict, and the walk
to the next state), and, per token, one ``try_advance`` on a random token as a rejected draw costs
(``--rejects`` of them). The baseline is a free sampling step of the profile's tiny model (random weights,
``--rows`` rows through the KV cache, filtered and drawn as ``train.generate`` draws), per row, timed in the
same run; the ratio printed is (free step + grammar) / free step, what constrained sampling would cost
against free sampling if every draw were judged once (plus ``--rejects`` rejections).

Cold is a fresh process replaying one stream (a short run: nothing cached, code tables included); warm is
the same process replaying the other streams after that first one.

    python -m bench.grammar [--codecs jpeg avc] [--streams 4] [--rows 8] [--rejects 1] [--repeats 3]
"""

from __future__ import annotations

import multiprocessing
import sys
import time
from dataclasses import dataclass

import numpy as np
import torch
from litgpt import GPT, Config

from shared.codec.profile import CodecProfile
from shared.codec.registry import get_profile
from shared.codec.token_constraint import TokenConstraint
from shared.format.tokenizer import ByteTokenizer
from shared.samples.clips import sample_clip
from shared.samples.photos import sample_crops
from shared.tools import cli


@dataclass(frozen=True)
class Setup:
    """A codec as the tiny configs sample it: profile, vocabulary and model shape (train/*-tiny.yaml)."""

    profile: str
    vocab_size: int
    n_layer: int
    n_head: int


SETUPS = {"jpeg": Setup("jpeg-64-q25", 320, 2, 1), "avc": Setup("avc-64x48-3fps-2s-qp37", 1024, 4, 4)}


def streams(profile: CodecProfile, count: int, offset: int) -> list[bytes]:
    if profile.kind == "jpeg":
        return [profile.encode(data) for _, data in sample_crops(count + offset)][offset:]
    return [profile.encode(sample_clip(1000 + offset + index)[1]) for index in range(count)]


def tokenizer_for(codec: str) -> tuple[CodecProfile, ByteTokenizer]:
    setup = SETUPS[codec]
    profile = get_profile(setup.profile)
    return profile, ByteTokenizer.train(streams(profile, 6, 100), setup.vocab_size, boundary=profile.token_boundary)


def replay(constraint: TokenConstraint, tokens: list[int], rejects: int, rng: np.random.Generator) -> float:
    """Seconds the constraint takes over ``tokens``: each judged and walked, plus ``rejects`` random draws
    judged per token."""
    others = rng.integers(0, constraint.vocab_size, size=(len(tokens), rejects)).tolist()
    state = constraint.start()
    started = time.perf_counter()
    for token, rejected in zip(tokens, others):
        for other in rejected:
            constraint.try_advance(state, other)
        state = constraint.try_advance(state, token)
    spent = time.perf_counter() - started
    assert state is not None and constraint.can_end(state), "a real stream must be accepted to its end"
    return spent


def grammar_costs(codec: str, count: int, rejects: int) -> dict[str, float]:
    """Microseconds per token cold (a first stream, in this process) and warm (the others after it)."""
    profile, tokenizer = tokenizer_for(codec)
    encoded = [tokenizer.encode(stream).tolist() for stream in streams(profile, count, 0)]
    rng = np.random.default_rng(0)
    started = time.perf_counter()
    constraint = TokenConstraint(profile.grammar(), tokenizer.token_bytes, tokenizer.eos_id)
    setup = time.perf_counter() - started
    cold = replay(constraint, encoded[0], rejects, rng)
    warm = sum(replay(constraint, tokens, rejects, rng) for tokens in encoded[1:])
    return {"setup_ms": setup * 1e3, "cold_us": cold / len(encoded[0]) * 1e6,
            "warm_us": warm / max(1, sum(map(len, encoded[1:]))) * 1e6,
            "tokens": sum(map(len, encoded)) / len(encoded)}


def cold_in_fresh_process(codec: str, count: int, rejects: int) -> dict[str, float]:
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(grammar_costs, (codec, count, rejects))


@torch.inference_mode()
def free_step_us(codec: str, rows: int, steps: int = 64) -> float:
    """A free sampling step of the codec's tiny model, per row: one token for ``rows`` rows through the KV
    cache, then temperature / top-k 50 and one draw per row from its own generator (as ``train.generate``)."""
    setup = SETUPS[codec]
    torch.manual_seed(0)
    config = Config(name="bench", block_size=4096, vocab_size=setup.vocab_size, padded_vocab_size=setup.vocab_size,
                    n_layer=setup.n_layer, n_head=setup.n_head, n_query_groups=setup.n_head, n_embd=128,
                    intermediate_size=352, rotary_percentage=1.0, parallel_residual=False, bias=False,
                    norm_class_name="RMSNorm", mlp_class_name="LLaMAMLP")
    model = GPT(config).eval()
    model.max_seq_length = 512
    model.set_kv_cache(batch_size=rows)
    generators = [torch.Generator().manual_seed(row) for row in range(rows)]
    tokens = torch.zeros(rows, 1, dtype=torch.long)
    logits = model(tokens, input_pos=torch.zeros(rows, 1, dtype=torch.long), input_pos_maxp1=1)[:, -1]
    started = 0.0
    for step in range(steps + 8):  # 8 warm-up steps
        if step == 8:
            started = time.perf_counter()
        kth = torch.topk(logits, 50, dim=-1).values[..., -1:]
        cumulative = torch.softmax(logits.masked_fill(logits < kth, float("-inf")), dim=-1).cumsum(dim=-1)
        uniform = torch.cat([torch.rand(1, generator=g) for g in generators])[:, None]
        chosen = torch.searchsorted(cumulative, uniform * cumulative[:, -1:], right=True).clamp(max=logits.size(-1) - 1)
        position = torch.full((rows, 1), step + 1)
        logits = model(chosen, input_pos=position, input_pos_maxp1=step + 2)[:, -1]
    return (time.perf_counter() - started) / steps / rows * 1e6


@cli.command("python -m bench.grammar")
def main(argv: list[str] | None = None) -> int:
    parser = cli.parser("python -m bench.grammar", __doc__)
    parser.add_argument("--codecs", nargs="+", choices=sorted(SETUPS), default=sorted(SETUPS))
    parser.add_argument("--streams", type=int, default=4, help="streams replayed per codec (the first cold)")
    parser.add_argument("--repeats", type=int, default=3, help="fresh processes per codec; the fastest counts")
    parser.add_argument("--rows", type=int, default=8, help="rows of the free sampling step")
    parser.add_argument("--rejects", type=int, default=1, help="rejected random draws judged per token")
    args = parser.parse_args(argv)
    for flag, value in (("--streams", args.streams), ("--repeats", args.repeats), ("--rows", args.rows)):
        if value < 1:
            raise cli.UsageError(f"{flag} must be positive, not {value}")
    if args.streams < 2:
        raise cli.UsageError("--streams must be 2 or more: one cold, the others warm")
    if args.rejects < 0:
        raise cli.UsageError(f"--rejects must be 0 or more, not {args.rejects}")
    torch.set_num_threads(1)
    for codec in args.codecs:
        # the fastest of a few: other work on the machine only ever adds time
        free = min(free_step_us(codec, args.rows) for _ in range(args.repeats))
        runs = [cold_in_fresh_process(codec, args.streams, args.rejects) for _ in range(args.repeats)]
        cold, warm = min(runs, key=lambda run: run["cold_us"]), min(runs, key=lambda run: run["warm_us"])
        print(f"{codec} ({SETUPS[codec].profile}, {warm['tokens']:,.0f} tokens a stream, 1 + {args.rejects} "
              f"verdicts a token): free step {free:.1f} us/token/row ({args.rows} rows, 1 thread)", flush=True)
        for label, spent, setup in (("cold (fresh process)", cold["cold_us"], cold["setup_ms"]),
                                    ("warm", warm["warm_us"], warm["setup_ms"])):
            print(f"  grammar {label:21s} {spent:7.1f} us/token  -> constrained/free {(free + spent) / free:.3f}x"
                  f"  (constraint built in {setup:.0f} ms)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
