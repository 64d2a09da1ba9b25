"""The benchmarks: honest floors (the Pillow floor writes the job's very JPEG), the flags of the commands they
measure (old spellings warn), and the error policy (a missing path first, exit status 2)."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from apache_beam.options.pipeline_options import PipelineOptions
from PIL import Image

from bench import avc_check, avc_grammar, codec, evaluate, generate, job_flags, loader, pipeline, train_gpu, verify
from bench.codec import image_inputs, pillow_floor
from preprocess.options import PreprocessOptions
from shared.codec.jpeg.profile import JpegProfile


@pytest.mark.parametrize("profile", [JpegProfile(), JpegProfile(64, 50, "4:4:4", 4)], ids=lambda p: p.name)
def test_pillow_floor_writes_the_jpeg_the_job_writes(profile: JpegProfile) -> None:
    # small sources (no draft), 768 px (draft to 1/2 at 256 px, 1/8 at 64 px) and big ones
    sources = image_inputs(6, [200, 768, 1600])
    for data in sources:
        assert pillow_floor(profile, data) == profile.restore(profile.encode(data))


def test_image_inputs_are_real_photo_jpegs_of_the_side_asked() -> None:
    sources = image_inputs(4, [300, 768])
    images = [Image.open(io.BytesIO(data)) for data in sources]
    assert [image.format for image in images] == ["JPEG"] * 4
    assert [min(image.size) for image in images] == [300, 768, 300, 768]
    assert len(set(sources)) == 4 and image_inputs(4, [300, 768]) == sources  # distinct, and the same every run


def test_job_flags_are_flags_the_job_reads() -> None:
    # Beam drops a flag it does not know without a word: every one must reach the job's options
    options = PipelineOptions(job_flags(output="x", seq_len=1023, sample_size=7, val_fraction=0.5,
                                        shard_sequences=48)).view_as(PreprocessOptions)
    assert (options.output, options.seq_len, options.sample_size, options.val_fraction, options.shard_sequences) == (
        "x", 1023, 7, 0.5, 48)
    with pytest.raises(ValueError, match="preprocess.run reads no --seq_length"):
        job_flags(output="x", seq_length=1023)


def test_bench_codec_runs_and_prints_its_ratios(capsys: pytest.CaptureFixture[str]) -> None:
    assert codec.main(["--num-images", "2", "--source-side", "600", "--num-videos", "1", "--repeats", "1"]) == 0
    printed = capsys.readouterr().out
    assert "600 px sources" in printed and "Pillow floor (draft)" in printed and "PyAV floor" in printed
    assert printed.count("ratio") == 2


@pytest.mark.parametrize("command, argv, message", [
    (codec.main, ["--images", "0"], "--num-images must be positive"),
    (codec.main, ["--videos", "0"], "--num-videos must be positive"),
    (pipeline.main, ["--images", "1"], "--num-images must be at least 2"),
    (verify.main, ["--images", "0"], "--num-images must be positive"),
    (avc_check.main, ["--clips", "0"], "--num-videos must be positive"),
    (avc_grammar.main, ["--clips", "0"], "--num-videos must be positive"),
    (loader.main, ["--data", "/no/such/dataset"], "--dataset /no/such/dataset: no such folder"),
    (generate.main, ["--checkpoint", "CKPT", "--samples", "0"], "--unconditional N must be positive"),
    (evaluate.main, ["--checkpoint", "CKPT", "--prompts", "0"], "--num-images must be positive"),
    (evaluate.main, ["--checkpoint", "CKPT", "--ratio", "2"], "--prompt-ratio must be in [0, 1]"),
])
def test_old_flag_spellings_warn_and_mean_the_new_flag(command, argv: list[str], message: str, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "lit_model.pth").touch()  # a checkpoint folder, as far as the checks before any work can tell
    assert command([str(tmp_path) if arg == "CKPT" else arg for arg in argv]) == 2
    errors = capsys.readouterr().err
    assert f"warning: {argv[-2]} is deprecated" in errors and message in errors


@pytest.mark.parametrize("command, argv, missing", [
    (loader.main, ["--dataset", "/no/such/dataset", "--batches", "0"], "--dataset /no/such/dataset: no such folder"),
    (generate.main, ["--checkpoint", "/no/such/ckpt", "--unconditional", "0"], "--checkpoint /no/such/ckpt: no such"),
    (evaluate.main, ["--checkpoint", "/no/such/ckpt", "--prompt-ratio", "2"], "--checkpoint /no/such/ckpt: no such"),
    (avc_grammar.main, ["--dataset", "/no/such/dataset", "--num-videos", "0"], "--dataset /no/such/dataset: no such"),
    (train_gpu.main, ["--config", "/no/such.yaml", "--device", "cpu", "--steps", "0"],
     "--config /no/such.yaml: no such"),
])
def test_a_missing_path_is_named_first_with_exit_status_2(command, argv: list[str], missing: str,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    assert command(argv) == 2
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 1 and missing in errors[0] and errors[0].startswith("python -m bench.")


def test_avc_grammar_needs_a_dataset_to_replay_clips(capsys: pytest.CaptureFixture[str]) -> None:
    assert avc_grammar.main([]) == 2
    assert "--dataset is needed" in capsys.readouterr().err
