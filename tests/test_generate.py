"""Generation: the constraint automata on real and hand-made tokens, and sampling from a tiny checkpoint."""

from __future__ import annotations

import dataclasses
import io
import json
import os
import random
import re
import shutil
import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from PIL import Image

from shared.codec.avc.grammar import AvcGrammar
from shared.codec.avc.profile import AvcProfile
from shared.codec.jpeg.entropy import check_stream
from shared.codec.jpeg.grammar import JpegGrammar
from shared.codec.jpeg.profile import JpegProfile
from shared.codec.token_constraint import TokenConstraint
from shared.samples.clips import sample_clip
from shared.samples.photos import sample_crops
from train.checkpoint import load_for_sampling
from train.engine import EngineError, SamplingSettings, filter_logits, inverse_cdf, judge_draws, sample_rows
from train.generate import GenerateSettings, generate, main

SMALL = JpegProfile.from_name("jpeg-64-q25")
# Byte tokens plus merges that make the constraint's life hard: FF inside tokens, stuffing, markers
# split over two tokens or glued to data, and a BOS/EOS pair standing for no bytes.
TRICKY = [b"\xff\x00", b"\xff", b"\x00\xff", b"\xff\xd0", b"\xd0", b"\xa2\x8a\x00\xff\xd1", b"\xff\x00\xff",
          b"\x00\x00", b"\xfe\x00", b"\xd7\x80"]
TOKENS = [bytes([b]) for b in range(256)] + TRICKY + [b"", b""]
EOS = len(TOKENS) - 1


def streams(count: int = 6) -> list[bytes]:
    return [SMALL.encode(png) for _, png in sample_crops(count, seed=3)]


def test_grammar_accepts_real_streams_and_nothing_after_them() -> None:
    grammar = JpegGrammar(SMALL.layout)
    for stream in streams():
        state = grammar.start()
        for byte in stream:
            state = grammar.step(state, byte)
            assert state is not None
        assert grammar.is_done(state) and all(grammar.step(state, b) is None for b in range(256))


def test_masks_equal_byte_by_byte_verdicts_on_hand_made_tokens() -> None:
    constraint = TokenConstraint(JpegGrammar(SMALL.layout), TOKENS, EOS)
    grammar = constraint.grammar
    for stream in streams(3):
        state = grammar.start()
        for position, byte in enumerate(stream):
            if position % 7 == 0:
                mask = constraint.allowed(state)
                for token, data in enumerate(TOKENS[:-2]):
                    at = state
                    for b in data:
                        at = None if at is None else grammar.step(at, b)
                    assert mask[token] == (at is not None) == constraint.is_allowed(state, token), (position, data)
                assert not mask[EOS - 1]  # BOS never
            state = grammar.step(state, byte)
        assert constraint.allowed(state).tolist() == [t == EOS for t in range(len(TOKENS))]  # EOS forced


def test_a_marker_split_across_tokens_is_followed() -> None:
    constraint = TokenConstraint(JpegGrammar(SMALL.layout), TOKENS, EOS)
    stream = streams(1)[0]
    cut = stream.index(b"\xff\xd0")
    state = constraint.feed(constraint.start(), stream[:cut])
    ff = len(TOKENS) - 2 - len(TRICKY) + TRICKY.index(b"\xff")  # the merged FF token, not byte 255
    assert constraint.allowed(state)[ff] and not constraint.allowed(state)[TOKENS.index(b"\xff\x00")]
    state = constraint.advance(state, ff)
    spelled_d0 = {i for i, t in enumerate(TOKENS) if t == b"\xd0"}  # byte D0 and the merge standing for it
    assert set(constraint.allowed(state).nonzero()[0].tolist()) == spelled_d0  # only RST0 may follow
    with pytest.raises(ValueError, match="not a valid stream prefix"):
        constraint.feed(constraint.start(), stream[:cut] + b"\xff\xd3")


# jpeg-80-q25-422: 4:2:2 with a partial MCU column at the right edge (80 = 5 x 16)
@pytest.mark.parametrize("name", ["jpeg-64-q25", "jpeg-64-q25-ri3", "jpeg-64-q50-444-ri0", "jpeg-80-q25-422"])
def test_random_constrained_walks_always_entropy_decode(name: str) -> None:
    profile = JpegProfile.from_name(name)
    constraint = TokenConstraint(JpegGrammar(profile.layout), TOKENS, EOS)
    rng = random.Random(name)
    for _ in range(5):
        state, ids = constraint.start(), []
        while True:
            allowed = np.flatnonzero(constraint.allowed(state))
            token = int(rng.choice(allowed))
            ids.append(token)
            if token == EOS:
                break
            state = constraint.advance(state, token)
        stream = b"".join(TOKENS[t] for t in ids)
        assert check_stream(profile.layout, stream).ok
        assert profile.decode(stream, strict=True).valid_mcus == profile.total_mcus


def test_avc_grammar_follows_nal_structure() -> None:
    profile = AvcProfile.from_name("avc-128x72-3fps-5s-qp37")
    grammar = AvcGrammar(profile)
    stream = profile.encode(sample_clip(1)[1])

    def accepts(data: bytes) -> bool:
        state = grammar.start()
        for byte in data:
            state = grammar.step(state, byte)
            if state is None:
                return False
        return grammar.can_end(state)

    assert accepts(stream) and accepts(profile.cut_after_units(stream, 2))
    header = stream.index(b"\x00\x00\x01") + 3
    for bad in (stream[:header] + b"\x67" + stream[header + 1:],  # an SPS where a slice must be
                stream[:header] + b"\x41" + stream[header + 1:]):  # a P slice cannot open the clip
        assert not accepts(bad)
    second = stream.index(b"\x00\x00\x01", header)
    third = stream.index(b"\x00\x00\x01", second + 3)
    assert not accepts(stream[:second] + stream[third:])  # a missing slice breaks first_mb_in_slice
    assert not accepts(stream + b"\x00")  # a unit never ends in a zero byte
    assert not accepts(stream[:-1] + b"\x00\x00\x02\x05")  # emulation prevention


def test_constrained_generation_decodes_and_repeats_with_the_seed(checkpoint: Path, tmp_path: Path) -> None:
    prompt = tmp_path / "prompt.png"
    prompt.write_bytes(sample_crops(1, seed=9).__next__()[1])
    settings = GenerateSettings(checkpoint=checkpoint, out=tmp_path / "a", prompts=[prompt], unconditional=3,
                                num_samples=3, seed=7, prompt_val=1)
    results = generate(settings)
    assert len(results) == 3  # the file prompt, one val document, unconditional
    for name, summary in results.items():
        assert summary["decoded_cleanly"] == 3 and summary["stopped_by_eos"] == 3 and summary["mcus_valid_share"] == 1.0
        record = json.loads((tmp_path / "a" / name / "samples.json").read_text())
        for sample in record["samples"]:
            with Image.open(tmp_path / "a" / name / sample["file"]) as image:
                image.load()
                assert image.size == (64, 64)
            with av.open(str(tmp_path / "a" / name / sample["file"]), format="jpeg_pipe") as container:
                assert next(container.decode(video=0)).width == 64  # FFmpeg opens it too
        assert (tmp_path / "a" / name / "sheet.png").is_file()
    prompt_dir = tmp_path / "a" / "prompt"
    assert (prompt_dir / "original.jpg").is_file() and (prompt_dir / "prompt.jpg").is_file()
    generate(dataclasses.replace(settings, out=tmp_path / "b"))
    generate(dataclasses.replace(settings, out=tmp_path / "c", unconditional=0, prompt_val=0, seed=8))
    first, again, other = (tmp_path / d / "prompt" / "sample-000.jpg" for d in "abc")
    assert first.read_bytes() == again.read_bytes() and first.read_bytes() != other.read_bytes()


def test_unconstrained_generation_reports_and_never_crashes(checkpoint: Path, tmp_path: Path) -> None:
    results = generate(GenerateSettings(checkpoint=checkpoint, out=tmp_path, unconditional=4, seed=1,
                                        constrained=False, max_new_tokens=300))
    record = json.loads((tmp_path / "unconditional" / "samples.json").read_text())
    assert len(record["samples"]) == 4 and results["unconditional"]["samples"] == 4
    for sample in record["samples"]:
        assert sample["stopped_by"] in ("eos", "length") and 0 <= sample["mcus_valid"] <= 16
        with Image.open(io.BytesIO((tmp_path / "unconditional" / sample["file"]).read_bytes())) as image:
            image.load()  # the tolerant decoder's repaired stream is a valid file


PROGRESS = re.compile(r"^sampling: +(\d+)% (\S+)/(\S+) tok \[.*tok/s, (\d+)/(\d+) samples\]$")


def progress_lines(stderr: str) -> list[re.Match[str]]:
    return [match for match in map(PROGRESS.match, stderr.splitlines()) if match]


def samples_written(folder: Path) -> int:
    return len(json.loads((folder / "samples.json").read_text())["samples"])


def test_generate_cli(checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    common = ["--checkpoint", str(checkpoint), "--max-new-tokens", "50", "--no-constrained", "--device", "cpu"]
    assert main([*common, "--unconditional", "3", "--num-samples", "2", "--out", str(tmp_path / "count")]) == 0
    shown = capsys.readouterr()
    assert "sheet:" in shown.out and "warning" not in shown.err
    assert samples_written(tmp_path / "count" / "unconditional") == 3  # a count: --num-samples is per prompt
    # progress on stderr (not a terminal here: plain lines), the last one whole: tokens/s and samples done
    last = progress_lines(shown.err)[-1]
    assert last.group(1) == "100" and last.group(2) == last.group(3) and last.group(4, 5) == ("3", "3")

    # the old switch: --num-samples samples from BOS, with a warning (for one release)
    assert main([*common, "--unconditional", "--num-samples", "2", "--out", str(tmp_path / "switch")]) == 0
    error = capsys.readouterr().err
    assert error.startswith("python -m train.generate: warning: --unconditional without a count is deprecated")
    assert "use --unconditional N" in error
    assert samples_written(tmp_path / "switch" / "unconditional") == 2

    assert main(["--checkpoint", str(checkpoint), "--out", str(tmp_path / "nothing")]) == 2
    error = capsys.readouterr().err
    assert error.startswith("python -m train.generate: error: give --prompt") and "--unconditional N" in error
    with pytest.raises(SystemExit) as refused:  # argparse's own: not a count
        main([*common, "--unconditional", "-1", "--out", str(tmp_path / "negative")])
    assert refused.value.code == 2 and "--unconditional N: N must be >= 0" in capsys.readouterr().err


def test_progress_shows_as_it_goes(checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TQDM_MININTERVAL", "0")  # a line per update, not one every 30 seconds
    # the last tenth of a held-out image: constrained samples stop at EOS well before their 300-token budget
    results = generate(GenerateSettings(checkpoint=checkpoint, out=tmp_path, prompt_val=1, prompt_ratio=0.9,
                                        num_samples=3, max_new_tokens=300, seed=3, device="cpu"))
    (name, summary), = results.items()
    assert summary["stopped_by_eos"] == 3
    lines = progress_lines(capsys.readouterr().err)
    assert len(lines) > 10  # while sampling, not only at the end
    done = [int(line.group(4)) for line in lines]
    tokens = [float(line.group(2)) for line in lines]
    assert done == sorted(done) and tokens == sorted(tokens) and lines[0].group(4, 5) == ("0", "3")
    assert lines[-1].group(1) == "100" and lines[-1].group(4, 5) == ("3", "3")
    # the total starts at the budgets and shrinks by what samples stopping at EOS leave unused: the tokens generated
    record = json.loads((tmp_path / name / "samples.json").read_text())
    generated = sum(row["tokens_generated"] for row in record["samples"])
    assert float(lines[-1].group(3)) == generated < float(lines[0].group(3)) == 3 * 300  # small: no "k" suffix


def test_missing_paths_are_named_first(checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    def refused(*flags: str) -> str:
        assert main([*flags, "--out", str(tmp_path / "out")]) == 2
        error = capsys.readouterr().err
        assert error.count("\n") == 1 and error.startswith("python -m train.generate: error: ")
        return error.removeprefix("python -m train.generate: error: ").strip()

    absent = tmp_path / "absent"
    assert refused("--checkpoint", str(absent / "ckpt"), "--dataset", str(absent / "data"), "--unconditional", "2",
                   "--prompt", str(absent / "a.png")) == f"--checkpoint {absent / 'ckpt'}: no such folder"
    assert refused("--checkpoint", str(tmp_path), "--unconditional", "2").startswith(
        f"--checkpoint {tmp_path}: not a checkpoint folder (no lit_model.pth or sharded/)")
    assert refused("--checkpoint", str(checkpoint), "--dataset", str(absent / "data"), "--unconditional", "2") == \
        f"--dataset {absent / 'data'}: no such folder"
    prompt = tmp_path / "there.png"
    prompt.write_bytes(next(sample_crops(1, seed=9))[1])
    assert refused("--checkpoint", str(checkpoint), "--prompt", str(absent / "a.png"), str(prompt),
                   str(absent / "b.png")) == f"--prompt {absent / 'a.png'} {absent / 'b.png'}: no such files"
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    assert main(["--checkpoint", str(checkpoint), "--unconditional", "2", "--out", str(blocker / "out")]) == 2
    assert "--out " in capsys.readouterr().err
    assert not (tmp_path / "out").exists()  # the checks stopped before --out was made
    # as a command: the same line and exit status, before anything is loaded
    done = subprocess.run([sys.executable, "-m", "train.generate", "--checkpoint", "/no/such/folder", "--unconditional",
                           "2", "--out", str(tmp_path / "out")], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "TORCH_COMPILE_DISABLE": "1"})
    assert (done.returncode, done.stderr) == (
        2, "python -m train.generate: error: --checkpoint /no/such/folder: no such folder\n")


def test_a_row_samples_the_same_alone_or_batched_with_other_prompt_lengths(checkpoint: Path) -> None:
    import torch
    sampler = load_for_sampling(checkpoint, device=torch.device("cpu"))
    profile, tokenizer, model, constraint = sampler.profile, sampler.tokenizer, sampler.model, sampler.constraint
    settings = SamplingSettings(max_new_tokens=1000)
    stream = streams(1)[0]
    prompts = [profile.prompt(stream, 0.75), b"", profile.prompt(stream, 0.25)]  # three prompt lengths
    together = sample_rows(model, tokenizer, prompts, [11, 12, 13], settings=settings, constraint=constraint)
    for row, prompt in enumerate(prompts):
        alone = sample_rows(model, tokenizer, [prompt], [11 + row], settings=settings, constraint=constraint)[0]
        assert alone.stream == together[row].stream and alone.stream.startswith(prompt)
        assert alone.stopped == "eos" and profile.decode(alone.stream).complete
    too_long = bytes(range(256)) * 8  # ~2K byte tokens: more than the 1023-token context, refused before sampling
    with pytest.raises(EngineError, match=r"^a prompt of \d+ tokens leaves no room in the model's 1023-token context"):
        sample_rows(model, tokenizer, [too_long, prompts[0]], [5, 11], settings=settings, constraint=constraint)


class EvenBytes:
    """A toy grammar: bytes with an even value, up to three of them, then only EOS."""

    def start(self) -> int:
        return 0

    def step(self, state: int, byte: int) -> int | None:
        return state + 1 if byte % 2 == 0 and state < 3 else None

    def cache_key(self, state: int) -> int:
        return state

    def is_done(self, state: int) -> bool:
        return state == 3


class EvenBytesWithHint(EvenBytes):
    """The same, with the hint that a whole mask is cheap: rejected draws are masked at once."""

    def mask_is_cheap(self, state: int) -> bool:
        return True


@pytest.mark.parametrize("grammar", [EvenBytes(), EvenBytesWithHint()], ids=["redraws", "mask"])
@pytest.mark.parametrize(("top_k", "top_p"), [(3, 1.0), (10, 1.0), (None, 1.0), (None, 0.8), (10, 0.9)])
def test_judging_draws_samples_exactly_the_filtered_distribution_masked(top_k: int | None, top_p: float,
                                                                        grammar: EvenBytes) -> None:
    # tokens 0..19 spell their own byte (odd ones are forbidden), 20 spells two bytes, 21 is EOS; forbidden
    # tokens rank first, so the top-3 holds no allowed token at all (then top-k applies among the allowed)
    tokens = [bytes([value]) for value in range(20)] + [b"\x02\x04", b""]
    constraint = TokenConstraint(grammar, tokens, eos_id=21)
    logits = torch.tensor([4.0 - 0.3 * value if value % 2 else 1.0 - 0.25 * value for value in range(20)] + [0.45, 0.0])
    state = constraint.start()
    allowed = torch.tensor([constraint.try_advance(state, token) is not None for token in range(len(tokens))])
    # the reference: filter (top-k, top-p), mask what the grammar forbids, renormalise; when nothing is left,
    # mask first and filter among the allowed tokens
    filtered = filter_logits(logits, 1.0, top_k, top_p)
    masked = filtered.masked_fill(~allowed, float("-inf"))
    if torch.isneginf(masked).all():
        masked = filter_logits(logits.masked_fill(~allowed, float("-inf")), 1.0, top_k, top_p)
    expected = torch.softmax(masked, dim=0)
    draws = 10000
    generators = [torch.Generator().manual_seed(seed) for seed in range(draws)]
    rows = filter_logits(logits.expand(draws, -1), 1.0, top_k, top_p)
    chosen, states = judge_draws(constraint, [state] * draws, inverse_cdf(rows, generators), rows, generators,
                                 [False] * draws, logits=logits.expand(draws, -1), temperature=1.0, top_k=top_k,
                                 top_p=top_p)
    counts = torch.bincount(torch.tensor(chosen), minlength=len(tokens)).double()
    assert all(allowed[token] for token in chosen)
    assert all(after == len(tokens[token]) for token, after in zip(chosen, states))
    # every frequency within 4.5 standard deviations of its probability (a binomial's)
    spread = (draws * expected * (1 - expected)).sqrt()
    assert torch.all((counts - draws * expected).abs() <= 4.5 * spread + 1e-9), (counts / draws, expected)
    assert (counts > 0).sum() == (expected > 0).sum() > 1


def test_a_prompt_that_fills_the_context_is_a_one_line_error(tiny_run: Path, tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    short = tmp_path / "short"  # the checkpoint with a 40-token context: half a 64x64 image does not fit
    shutil.copytree(tiny_run / "final", short)
    config = short / "model_config.yaml"
    config.write_text(re.sub(r"block_size: \d+", "block_size: 40", config.read_text()))
    assert main(["--checkpoint", str(short), "--dataset", str(tiny_run.parent / "data"), "--prompt-val", "1",
                 "--unconditional", "4", "--out", str(tmp_path / "out")]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and error.startswith("python -m train.generate: error: the prompt of val-")
    assert "--prompt-frames" in error and "--prompt-ratio 0.5" in error and "40-token context" in error
    assert not any((tmp_path / "out").iterdir())  # refused before anything was sampled (--out was checked writable)


def test_a_slot_count_below_one_is_a_one_line_usage_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for value, why in (("0", "must be at least 1 slot, not 0"), ("many", "must be a number of slots or 'auto'")):
        with pytest.raises(SystemExit) as refused:  # argparse's own, before any path is looked at
            main(["--checkpoint", str(tmp_path / "absent"), "--unconditional", "2", "--max-batch", value,
                  "--out", str(tmp_path / "out")])
        error = capsys.readouterr().err
        assert refused.value.code == 2 and f"--max-batch: {why}" in error.splitlines()[-1]
