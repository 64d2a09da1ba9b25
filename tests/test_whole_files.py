"""Every file a sample becomes is whole and strictly valid, wherever the sample stopped.

Streams are cut at every kind of place a token budget can stop a sampler (AVC: inside a slice header,
inside a CAVLC residual, right after a slice, right after a frame; JPEG: inside a Huffman code, right after
a restart marker), and the files made from them are judged from their own bytes: the strict check, and
FFmpeg at its strictest for AVC. Then the same through the sampler itself, with a small model.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from litgpt import GPT, Config

from shared.codec.avc.grammar import HEADER_ELEMENTS, RB, SC
from shared.codec.avc.profile import AvcProfile
from shared.codec.jpeg.entropy import RESTART_MARKER
from shared.codec.jpeg.profile import JpegProfile
from shared.codec.token_constraint import TokenConstraint
from shared.format.tokenizer import ByteTokenizer
from shared.samples.clips import sample_clip
from shared.samples.photos import sample_crops
from train.generate import GenerateSettings, SamplingSettings, generate, sample_rows, write_outputs

AVC = AvcProfile.from_name("avc-64x48-3fps-3s-qp43")
JPEG = JpegProfile.from_name("jpeg-64-q25")


def avc_cuts(stream: bytes, per_kind: int = 5) -> dict[str, list[int]]:
    """Offsets of ``stream`` by where the grammar stands after them, ``per_kind`` of each spread over it."""
    grammar = AVC.grammar()
    found: dict[str, list[int]] = {"slice header": [], "residual": [], "after a slice": [], "after a frame": []}
    state = grammar.start()
    for offset, byte in enumerate(stream, start=1):
        state = grammar.step(state, byte)
        glob, local = state
        if local[0] == SC and local[1] == 0:
            found["after a frame" if glob[1] == grammar.slices - 1 else "after a slice"].append(offset)
        elif local[0] == RB and local[3][1][0] in HEADER_ELEMENTS:
            found["slice header"].append(offset)
        elif local[0] == RB and local[3][1][0] == "res":
            found["residual"].append(offset)
    return {kind: offsets[:: max(1, len(offsets) // per_kind)][:per_kind] for kind, offsets in found.items()}


@pytest.fixture(scope="module")
def clip() -> bytes:
    return AVC.encode(sample_clip(5)[1])


def test_an_avc_file_is_whole_and_strictly_valid_wherever_its_stream_stops(clip: bytes) -> None:
    whole = AVC.decode(clip)
    per_frame = AVC.macroblocks
    cuts = avc_cuts(clip)
    assert all(len(offsets) >= 3 for offsets in cuts.values()), {k: len(v) for k, v in cuts.items()}
    for kind, offsets in cuts.items():
        for offset in offsets[:-1] if kind == "after a frame" else offsets:  # the last is the whole clip
            cut = clip[:offset]
            written = AVC.frame_count(cut)
            for mode in ("fill", "drop"):
                decoded = AVC.decode(cut, partial_frame=mode)
                if decoded.finished.frames:  # dropping a clip's only, partial frame leaves nothing to write
                    assert AVC.check_viewable(AVC.viewable(decoded.stream)) == (), (kind, offset, mode)
                facts, finished = decoded.facts, decoded.finished
                inside = int(kind in ("slice header", "residual"))  # the macroblock being written is dropped
                assert len(decoded.frames) == finished.frames
                if mode == "fill":  # every macroblock written whole is kept, the frame it stops inside finished
                    assert finished.kept == facts["macroblocks_written"] and finished.dropped == inside
                    assert finished.kept + len(finished.filled) == finished.frames * per_frame
                else:  # the file ends after the last whole frame
                    assert finished.kept == facts["frames_whole"] * per_frame and not finished.filled
                    assert finished.dropped == facts["macroblocks_written"] - finished.kept + inside
                if kind == "after a frame":
                    assert not finished.filled and finished.frames == written
                # every frame the stream holds whole is the encoder's own, pixel for pixel
                for index in range(facts["frames_whole"] if kind != "after a frame" else written):
                    assert np.array_equal(decoded.frames[index], whole.frames[index])
                for frame, macroblock in finished.filled:  # filled P macroblocks copy the frame before
                    top, left = 16 * (macroblock // 4), 16 * (macroblock % 4)
                    inner = np.s_[top + 4:top + 12, left + 4:left + 12]
                    if frame:
                        assert np.array_equal(decoded.frames[frame][inner], decoded.frames[frame - 1][inner])
                    assert decoded.filled[frame][top:top + 16, left:left + 16].all()


def test_broken_avc_streams_still_make_valid_files(clip: bytes) -> None:
    rng = np.random.default_rng(4)
    for trial in range(12):
        broken = bytearray(clip)
        for _ in range(trial % 3 + 1):
            broken[rng.integers(len(broken))] ^= 1 << int(rng.integers(8))
        decoded = AVC.decode(bytes(broken))
        assert AVC.check_viewable(AVC.viewable(decoded.stream)) == ()
        assert decoded.finished.kept <= decoded.facts["macroblocks_clean"]
    garbage = AVC.decode(rng.bytes(400))
    assert AVC.check_viewable(AVC.viewable(garbage.stream)) == () and len(garbage.frames) == 1
    assert garbage.filled[0].all() and garbage.facts["macroblocks_filled"] == AVC.macroblocks
    assert AVC.decode(b"").frames == []  # nothing written: nothing to show


def test_a_jpeg_file_is_whole_and_strictly_valid_inside_a_code_or_after_a_marker() -> None:
    stream = JPEG.encode(next(sample_crops(1, seed=5))[1])
    markers = [match.end() for match in RESTART_MARKER.finditer(stream)]
    inside = [start + (end - start) // 2 for start, end in itertools.pairwise(markers) if end - start > 4][::3]
    assert len(markers) >= 10 and len(inside) >= 4
    for kind, offsets in (("after a marker", markers[::3]), ("inside a Huffman code", inside)):
        for offset in offsets:
            decoded = JPEG.decode(stream[:offset])
            assert JPEG.check_viewable(JPEG.viewable(decoded.stream)) == (), (kind, offset)
            facts = decoded.facts
            assert facts["mcus_filled"] == JPEG.total_mcus - facts["mcus_valid"]
            assert facts["mcus_dropped"] == (kind != "after a marker")
            assert decoded.filled[0].mean() == pytest.approx(facts["mcus_filled"] / JPEG.total_mcus)


def test_filled_mcus_are_marked_where_they_are_also_at_a_partial_edge() -> None:
    profile = JpegProfile.from_name("jpeg-40-q25")  # 3 x 3 MCUs of 16 x 16, the last column and row partial
    stream = profile.encode(next(sample_crops(1, seed=5))[1])
    decoded = profile.decode(profile.cut_after_units(stream, 1))  # only the first MCU is the model's
    expected = np.ones((40, 40), bool)
    expected[:16, :16] = False
    assert decoded.facts["mcus_filled"] == 8 and np.array_equal(decoded.filled[0], expected)


@pytest.mark.parametrize("constrained", [True, False])
def test_sampled_videos_cut_by_the_token_budget_are_written_whole(tmp_path: Path, constrained: bool) -> None:
    streams = [AVC.encode(sample_clip(index)[1]) for index in range(3)]
    tokenizer = ByteTokenizer.train(streams, 300, boundary=AVC.token_boundary)
    torch.manual_seed(0)
    model = GPT(Config(block_size=512, vocab_size=tokenizer.vocab_size, padded_vocab_size=tokenizer.vocab_size,
                       n_layer=1, n_head=2, n_embd=32, bias=False))
    constraint = TokenConstraint(AVC.grammar(), tokenizer.token_bytes, tokenizer.eos_id) if constrained else None
    prompt = AVC.cut_after_units(streams[0], 1)
    rows = 0
    for budget in (3, 11, 29, 64, 150):
        samples = sample_rows(model, tokenizer, [b"", prompt], [budget, budget + 1],
                              settings=SamplingSettings(max_new_tokens=budget), constraint=constraint)
        record = write_outputs(tmp_path / str(budget), AVC, samples, original=None, prompt=None, settings={})
        rows += len(samples)
        assert record["summary"]["files_strictly_valid"] == len(samples)
        saved = json.loads((tmp_path / str(budget) / "samples.json").read_text())
        for sample in saved["samples"]:
            assert sample["stopped_by"] == "length" or not constrained  # a random model may draw EOS freely
            assert sample["file_strictly_valid"]
            assert AVC.check_viewable((tmp_path / str(budget) / sample["file"]).read_bytes()) == ()
            if constrained:  # every macroblock written whole is kept; only the one the budget cut is dropped
                assert sample["macroblocks_dropped"] <= 1
                assert sample["macroblocks_kept"] == sample["macroblocks_written"]
    assert rows == 10


@pytest.mark.parametrize("constrained", [True, False])
def test_sampled_images_cut_by_the_token_budget_are_written_whole(checkpoint: Path, tmp_path: Path,
                                                                  constrained: bool) -> None:
    prompt = tmp_path / "prompt.png"
    prompt.write_bytes(next(sample_crops(1, seed=9))[1])
    for budget in (2, 7, 19, 45):  # cuts inside Huffman codes, right after restart markers, mid-interval
        results = generate(GenerateSettings(checkpoint=checkpoint, out=tmp_path / str(budget), prompts=[prompt],
                                            unconditional=3, num_samples=3, seed=budget, max_new_tokens=budget,
                                            constrained=constrained))
        for name, summary in results.items():
            assert summary["files_strictly_valid"] == 3
            record = json.loads((tmp_path / str(budget) / name / "samples.json").read_text())
            for sample in record["samples"]:
                file = (tmp_path / str(budget) / name / sample["file"]).read_bytes()
                assert JPEG.check_viewable(file) == () and sample["file_strictly_valid"]
                assert sample["mcus_filled"] == JPEG.total_mcus - sample["mcus_valid"]
