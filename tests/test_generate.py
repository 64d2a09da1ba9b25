"""Generation: the constraint automata on real and hand-made tokens, and sampling from a tiny checkpoint."""

from __future__ import annotations

import dataclasses
import io
import json
import random
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from shared.codec.avc import AvcProfile
from shared.codec.avc_grammar import AvcGrammar
from shared.codec.jpeg import JpegProfile
from shared.codec.jpeg_entropy import check_stream
from shared.codec.jpeg_grammar import JpegGrammar
from shared.codec.token_constraint import TokenConstraint
from shared.samples.clips import sample_clip
from shared.samples.photos import sample_crops
from train.checkpoint import load_for_sampling
from train.generate import GenerateSettings, SamplingSettings, generate, main, sample_rows

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
    settings = GenerateSettings(checkpoint=checkpoint, out=tmp_path / "a", prompts=[prompt], unconditional=True,
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
    assert (tmp_path / "a" / "prompt" / "original.jpg").is_file() and (tmp_path / "a" / "prompt" / "prompt.jpg").is_file()
    generate(dataclasses.replace(settings, out=tmp_path / "b"))
    generate(dataclasses.replace(settings, out=tmp_path / "c", unconditional=False, prompt_val=0, seed=8))
    first, again, other = (tmp_path / d / "prompt" / "sample-000.jpg" for d in "abc")
    assert first.read_bytes() == again.read_bytes() and first.read_bytes() != other.read_bytes()


def test_unconstrained_generation_reports_and_never_crashes(checkpoint: Path, tmp_path: Path) -> None:
    results = generate(GenerateSettings(checkpoint=checkpoint, out=tmp_path, unconditional=True, num_samples=4, seed=1,
                                        constrained=False, max_new_tokens=300))
    record = json.loads((tmp_path / "unconditional" / "samples.json").read_text())
    assert len(record["samples"]) == 4 and results["unconditional"]["samples"] == 4
    for sample in record["samples"]:
        assert sample["stopped_by"] in ("eos", "length") and 0 <= sample["mcus_valid"] <= 16
        with Image.open(io.BytesIO((tmp_path / "unconditional" / sample["file"]).read_bytes())) as image:
            image.load()  # the tolerant decoder's repaired stream is a valid file


def test_generate_cli(checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    main(["--checkpoint", str(checkpoint), "--unconditional", "--num-samples", "2", "--max-new-tokens", "50",
          "--no-constrained", "--out", str(tmp_path)])
    assert "sheet:" in capsys.readouterr().out
    with pytest.raises(SystemExit) as refused:
        main(["--checkpoint", str(checkpoint), "--out", str(tmp_path)])
    assert refused.value.code == 2 and "--unconditional" in capsys.readouterr().err


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
    too_long = bytes(range(256)) * 8  # ~2K byte tokens: more than the 1023-token context
    mixed = sample_rows(model, tokenizer, [too_long, prompts[0]], [5, 11], settings=settings, constraint=constraint)
    assert (mixed[0].stopped, mixed[0].stream, mixed[0].tokens) == ("context", too_long, 0)
    assert mixed[1].stream == together[0].stream
