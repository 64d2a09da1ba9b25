"""Evaluation: the Fréchet distance against independent computations, and the whole FID harness on a tiny
checkpoint with a small random TorchScript network standing in for Inception (the real weights are not
available offline; it is loaded through the same --inception-weights path)."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import scipy.linalg
import torch
import torch.nn.functional as F
from PIL import Image

from shared.codec.jpeg.profile import JpegProfile
from shared.samples.photos import sample_crops
from train.evaluate import EvaluationError, Settings, evaluate, load_arrays, main, unpack_bytes
from train.fid import INCEPTION_ENV, INCEPTION_URL, FeatureExtractor, FidError, fid, frechet_distance, statistics

ROOT = Path(__file__).resolve().parents[1]
PROFILE = JpegProfile.from_name("jpeg-64-q25")


def random_covariance(rng: np.random.Generator, dims: int) -> np.ndarray:
    factor = rng.normal(size=(dims, dims))
    return factor @ factor.T / dims + 0.1 * np.eye(dims)


# ---- the Fréchet distance ------------------------------------------------------------------------
def test_identical_sets_are_at_distance_zero() -> None:
    rng = np.random.default_rng(0)
    sigma, mu = random_covariance(rng, 16), rng.normal(size=16)
    assert abs(frechet_distance(mu, sigma, mu, sigma)) < 1e-9
    features = rng.normal(size=(300, 16))
    assert fid(features, features.copy()) < 1e-9


def test_commuting_covariances_match_the_closed_form() -> None:
    rng = np.random.default_rng(1)
    rotation, _ = np.linalg.qr(rng.normal(size=(12, 12)))
    a, b = rng.uniform(0.1, 4, 12), rng.uniform(0.1, 4, 12)
    mu1, mu2 = rng.normal(size=12), rng.normal(size=12)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    got = frechet_distance(mu1, rotation @ np.diag(a) @ rotation.T, mu2, rotation @ np.diag(b) @ rotation.T)
    assert got == pytest.approx(expected, rel=1e-9)


def test_two_dimensional_gaussians_match_the_trace_root_formula() -> None:
    # for a 2x2 matrix with positive eigenvalues: tr sqrt(M) = sqrt(tr M + 2 sqrt(det M))
    sigma1, sigma2 = np.array([[2.0, 0.7], [0.7, 1.0]]), np.array([[0.5, -0.3], [-0.3, 3.0]])
    mu1, mu2 = np.array([1.0, -2.0]), np.array([0.5, 0.5])
    product = sigma1 @ sigma2
    trace_root = math.sqrt(np.trace(product) + 2 * math.sqrt(np.linalg.det(product)))
    expected = np.sum((mu1 - mu2) ** 2) + np.trace(sigma1) + np.trace(sigma2) - 2 * trace_root
    assert frechet_distance(mu1, sigma1, mu2, sigma2) == pytest.approx(expected, rel=1e-12)


def test_general_covariances_match_scipy_sqrtm() -> None:
    rng = np.random.default_rng(2)
    sigma1, sigma2 = random_covariance(rng, 32), random_covariance(rng, 32)
    mu1, mu2 = rng.normal(size=32), rng.normal(size=32)
    expected = (np.sum((mu1 - mu2) ** 2) + np.trace(sigma1) + np.trace(sigma2)
                - 2 * np.trace(scipy.linalg.sqrtm(sigma1 @ sigma2)).real)
    assert frechet_distance(mu1, sigma1, mu2, sigma2) == pytest.approx(expected, rel=1e-8)


def test_fid_of_samples_converges_to_the_distance_of_their_gaussians() -> None:
    rng = np.random.default_rng(3)
    sigma1, sigma2 = random_covariance(rng, 4), random_covariance(rng, 4)
    mu1, mu2 = np.zeros(4), np.full(4, 0.5)
    a = rng.multivariate_normal(mu1, sigma1, size=40_000)
    b = rng.multivariate_normal(mu2, sigma2, size=40_000)
    assert fid(a, b) == pytest.approx(frechet_distance(mu1, sigma1, mu2, sigma2), rel=0.05)
    mean, covariance = statistics(a)
    assert np.allclose(covariance, np.cov(a.T)) and np.allclose(mean, a.mean(0))


# ---- the feature network -----------------------------------------------------------------------
class RandomFeatures(torch.nn.Module):
    """Stands in for Inception: same call (uint8 NCHW of any size, return_features=True) -> (N, 32)."""

    def __init__(self) -> None:
        super().__init__()
        self.first = torch.nn.Conv2d(3, 16, 5, stride=2)
        self.second = torch.nn.Conv2d(16, 32, 3, stride=2)

    def forward(self, img: torch.Tensor, return_features: bool = False) -> torch.Tensor:
        x = F.interpolate(img.float() / 127.5 - 1, size=(64, 64), mode="bilinear", align_corners=False)
        return 10 * F.relu(self.second(F.relu(self.first(x)))).mean(dim=(2, 3))


@pytest.fixture(scope="module")
def features_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("features") / "random-features.pt"
    with warnings.catch_warnings():  # torch.jit.script's deprecation notice; TorchScript files still load
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.script(RandomFeatures()).save(str(path))
    return path


def test_the_feature_network_is_a_local_file_with_a_clear_error(features_file: Path, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(INCEPTION_ENV, raising=False)
    with pytest.raises(FidError, match=INCEPTION_ENV) as missing:
        FeatureExtractor(None, torch.device("cpu"))
    assert INCEPTION_URL in str(missing.value) and "--inception-weights" in str(missing.value)
    with pytest.raises(FidError, match="no such file"):
        FeatureExtractor(tmp_path / "nowhere.pt", torch.device("cpu"))
    state_dict = tmp_path / "weights.pth"
    torch.save({"conv.weight": torch.zeros(2)}, state_dict)
    with pytest.raises(FidError, match="not a TorchScript module"):
        FeatureExtractor(state_dict, torch.device("cpu"))
    monkeypatch.setenv(INCEPTION_ENV, str(features_file))
    extractor = FeatureExtractor(None, torch.device("cpu"))
    assert extractor.dims == 32 and extractor(np.zeros((3, 64, 64, 3), np.uint8)).shape == (3, 32)


# ---- the harness end to end --------------------------------------------------------------------
@pytest.fixture(scope="module")
def image_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("eval-images")
    for index, (_, png) in enumerate(sample_crops(10, seed=21)):
        (folder / f"{index:02d}.png").write_bytes(png)
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a JPEG")
    return folder


@pytest.fixture(scope="module")
def two_checkpoints(tiny_run: Path) -> list[str]:
    return [str(tiny_run / "step-00000003"), str(tiny_run / "final")]


def settings_for(checkpoints: list[str], images: Path, out: Path, features: Path, **changes: object) -> Settings:
    base = dict(num_images=10, prompt_ratio=[0.25, 0.5, 0.75], seeds=2, unconditional=4, batch_size=4, grid_images=3)
    return Settings(checkpoints, str(images), str(out), inception_weights=str(features), **{**base, **changes})


def test_evaluation_reports_consistent_numbers_tables_and_pictures(two_checkpoints: list[str], image_folder: Path,
                                                                    features_file: Path, tmp_path: Path) -> None:
    results = evaluate(settings_for(two_checkpoints, image_folder, tmp_path, features_file))
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["checkpoints"][0]["prompted"] == json.loads(json.dumps(results["checkpoints"][0]["prompted"]))
    assert results["images"]["count"] == 10 and [r["path"] for r in results["images"]["rejected"]] == [
        str(image_folder / "broken.jpg")]
    ceiling = results["codec_ceiling"]["fid"]
    extractor = FeatureExtractor(features_file, torch.device("cpu"))
    work = load_arrays(str(tmp_path / "work" / "eval-set.npz"))
    reference, streams = work["reference"].astype(np.float64), unpack_bytes(work)
    assert [row["checkpoint"] for row in results["checkpoints"]] == two_checkpoints
    for row in results["checkpoints"]:
        for ratio in ("0.25", "0.5", "0.75"):
            summary = row["prompted"][ratio]
            per_seed = summary["fid"]["per_seed"]
            assert len(per_seed) == 2 and summary["fid"]["mean"] == pytest.approx(np.mean(per_seed))
            assert summary["fid"]["std"] == pytest.approx(np.std(per_seed, ddof=1))
            assert ceiling < min(per_seed)  # nothing beats the codec's own round trip
            # constrained decoding
            assert summary["clean_share"] == 1.0 and summary["generated_mcus_valid_share"] == 1.0
        assert row["unconditional"]["seeds"][0]["completions"] == 4 and row["unconditional"]["fid"]["mean"] > ceiling
        validation = row["validation"]
        assert validation["bits_per_byte"] == pytest.approx(
            validation["loss"] * validation["tokens"] / math.log(2) / sum(len(s) for s in streams))
        assert row["throughput"]["tokens_per_second"] > 0 and row["throughput"]["completions_per_second"] > 0
        # a reported FID recomputed from the stored completions: prompt kept, decoded, featurized anew
        task_dir = tmp_path / "work" / row["tag"] / "prompt-0.5-seed1"
        task = [load_arrays(str(p)) for p in sorted(task_dir.glob("*/*.npz"))]
        order = np.argsort(np.concatenate([c["index"] for c in task]))
        completions = [s for c in task for s in unpack_bytes(c)]
        completions = [completions[i] for i in order]
        for stream, completion in zip(streams, completions):
            assert completion.startswith(PROFILE.prompt(stream, 0.5)) and completion != stream
        pictures = np.stack([np.asarray(PROFILE.decode(c).image) for c in completions])
        reported = row["prompted"]["0.5"]["fid"]["per_seed"][1]
        assert fid(extractor(pictures), reference) == pytest.approx(reported, rel=1e-4)
    # the two checkpoints are different models, so their completions differ
    assert results["checkpoints"][0]["prompted"]["0.5"] != results["checkpoints"][1]["prompted"]["0.5"]

    report = (tmp_path / "report.md").read_text()
    assert "| model | 25% | 50% | 75% | unconditional (4) |" in report
    assert f"| codec ceiling: `jpeg-64-q25` round trip | {ceiling:.2f} | {ceiling:.2f} | {ceiling:.2f} | – |" in report
    for row in results["checkpoints"]:
        cells = " | ".join(f"{row['prompted'][r]['fid']['mean']:.2f} ({row['prompted'][r]['fid']['std']:.2f})"
                           for r in ("0.25", "0.5", "0.75"))
        assert f"| `{row['checkpoint']}` | {cells} |" in report
        for label, relative in row["grids"].items():
            assert f"]({relative})" in report
            with Image.open(tmp_path / relative) as grid:
                rows = 3 if label != "unconditional" else 2  # 3 images; unconditional: a row per seed
                assert grid.height == rows * (128 + 14 + 4) + 4
    assert "10 images for 32-dimensional features" in report  # small-sample warning


def test_val_split_of_a_dataset_has_no_ceiling(checkpoint: Path, features_file: Path, tmp_path: Path) -> None:
    dataset = checkpoint.parent.parent / "data"
    results = evaluate(Settings([str(checkpoint)], str(dataset), str(tmp_path), num_images=5, prompt_ratio=[0.5],
                                seeds=1, inception_weights=str(features_file), batch_size=5))
    assert results["images"]["kind"] == "dataset val split" and results["images"]["count"] == 5
    assert results["codec_ceiling"] is None
    assert "No codec ceiling" in (tmp_path / "report.md").read_text()


def test_workers_share_the_sampling_and_a_plain_run_writes_the_report(checkpoint: Path, image_folder: Path,
                                                                      features_file: Path, tmp_path: Path) -> None:
    def settings(worker: str | None) -> Settings:
        return Settings([str(checkpoint)], str(image_folder), str(tmp_path), num_images=6, prompt_ratio=[0.5], seeds=1,
                        inception_weights=str(features_file), batch_size=2, worker=worker)

    def batch_files() -> dict[str, bytes]:
        return {path.name: path.read_bytes() for path in (tmp_path / "work").glob("*/prompt-0.5-seed0/batch-2/*.npz")}

    assert evaluate(settings("0/2")) == {"worker": "0/2"}
    assert sorted(batch_files()) == ["000000.npz", "000002.npz"]  # 6 rows in 3 fixed batches: worker 0 takes 0 and 2
    assert evaluate(settings("1/2")) == {"worker": "1/2"}
    chunks = batch_files()
    assert sorted(chunks) == ["000000.npz", "000001.npz", "000002.npz"] and not (tmp_path / "results.json").exists()
    paths = (tmp_path / "work").glob("*/prompt-0.5-seed0/batch-2/*.npz")
    assert sorted(i for path in paths for i in load_arrays(str(path))["index"]) == list(range(6))
    results = evaluate(settings(None))
    assert batch_files() == chunks  # the plain run sampled nothing again
    assert results["checkpoints"][0]["prompted"]["0.5"]["seeds"][0]["completions"] == 6
    assert "| model | 50% |" in (tmp_path / "report.md").read_text()
    with pytest.raises(EvaluationError, match="--worker must be K/N"):
        evaluate(settings("2/2"))
    more, fewer = settings(None), settings(None)
    more.unconditional, fewer.unconditional = 4, 2  # fewer than done: the first 2 are reused, not 4 reported
    assert evaluate(more)["checkpoints"][0]["unconditional"]["seeds"][0]["completions"] == 4
    assert evaluate(fewer)["checkpoints"][0]["unconditional"]["seeds"][0]["completions"] == 2


def test_overwritten_weights_and_odd_grid_sizes(tiny_run: Path, image_folder: Path, features_file: Path,
                                                tmp_path: Path) -> None:
    copy = tmp_path / "checkpoint"
    shutil.copytree(tiny_run / "final", copy)

    def settings(grid_images: int) -> Settings:
        return Settings([str(copy)], str(image_folder), str(tmp_path / "eval"), num_images=3, prompt_ratio=[0.5],
                        seeds=1, inception_weights=str(features_file), grid_images=grid_images)

    assert evaluate(settings(0))["checkpoints"][0]["grids"] == {}  # no pictures asked for, none kept
    assert evaluate(settings(5))["checkpoints"][0]["grids"]  # more than kept: the grid shows what there is
    shutil.copy(tiny_run / "step-00000003" / "lit_model.pth", copy / "lit_model.pth")  # "retrained" in place
    with pytest.raises(EvaluationError, match="are not those this evaluation"):
        evaluate(settings(0))


def run_cli(out: Path, checkpoint: Path, images: Path, features: Path, *extra: str,
            ratios: str = "--prompt-ratio") -> subprocess.Popen:
    command = [sys.executable, "-m", "train.evaluate", "--checkpoint", str(checkpoint), "--images", str(images),
               "--num-images", "4", ratios, "0.25", "0.5", "--seeds", "1", "--batch-size", "2",
               "--inception-weights", str(features), "--max-new-tokens", "64", "--out", str(out), *extra]
    return subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "TORCH_COMPILE_DISABLE": "1"})


def test_a_killed_evaluation_continues_where_it_stopped(checkpoint: Path, image_folder: Path, features_file: Path,
                                                        tmp_path: Path) -> None:
    killed = run_cli(tmp_path / "killed", checkpoint, image_folder, features_file)
    first_task = tmp_path / "killed" / "work"
    deadline = time.time() + 300
    while time.time() < deadline and not list(first_task.glob("*/prompt-0.25-seed0/*/*.npz")):
        time.sleep(0.05)
    killed.send_signal(signal.SIGKILL)
    killed.communicate()
    kept = {p: p.read_bytes() for p in first_task.glob("*/*/*/*.npz")}
    assert kept and not (tmp_path / "killed" / "results.json").exists()

    resumed = run_cli(tmp_path / "killed", checkpoint, image_folder, features_file)
    # the old spelling of --prompt-ratio still works for a release (warned): the same completions
    whole = run_cli(tmp_path / "whole", checkpoint, image_folder, features_file, ratios="--prompt-ratios")
    errors = []
    for process in (resumed, whole):
        _, stderr = process.communicate(timeout=600)
        assert process.returncode == 0, stderr
        errors.append(stderr)
    assert "python -m train.evaluate: warning: --prompt-ratios is deprecated" in errors[1]
    assert "use --prompt-ratio" in errors[1] and "deprecated" not in errors[0]
    last = [line for line in errors[1].splitlines() if " prompt-0.5-seed0: " in line][-1]  # progress, as generate's
    assert re.search(r": 100% .* tok \[.*tok/s, 4/4 completions\]$", last), last
    assert all(path.read_bytes() == data for path, data in kept.items())  # finished batches reused, not redone
    again, once = (json.loads((tmp_path / name / "results.json").read_text()) for name in ("killed", "whole"))
    for ratio in ("0.25", "0.5"):  # the same completions, so the same numbers (timings aside)
        for resumed_seed, whole_seed in zip(again["checkpoints"][0]["prompted"][ratio]["seeds"],
                                            once["checkpoints"][0]["prompted"][ratio]["seeds"]):
            assert {**resumed_seed, "seconds": 0} == {**whole_seed, "seconds": 0}
    assert again["codec_ceiling"] == once["codec_ceiling"]

    refused = run_cli(tmp_path / "whole", checkpoint, image_folder, features_file, "--top-k", "10")
    _, stderr = refused.communicate(timeout=300)
    assert refused.returncode == 1 and "top_k: 50 then, 10 now" in stderr and "another --out" in stderr
    assert stderr.splitlines()[-1].startswith("python -m train.evaluate: error: ")


def test_cli_help_and_bad_flags(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        main(["--help"])
    shown = capsys.readouterr().out
    assert done.value.code == 0 and "--prompt-ratio R [R ...]" in shown and "inception-2015-12-05.pt" in shown
    assert "--prompt-ratios" not in shown  # the old spelling works but is not offered
    for flag in ("--prompt-ratio", "--prompt-ratios"):
        assert main(["--checkpoint", "x", "--images", "y", "--out", "z", flag, "0.5", "1.5"]) == 2  # before any path
        error = capsys.readouterr().err
        assert error.endswith("python -m train.evaluate: error: --prompt-ratio 1.5: prompt ratios must be in [0, 1)\n")
        assert ("is deprecated" in error) == (flag == "--prompt-ratios")


def test_missing_paths_are_named_first(checkpoint: Path, image_folder: Path, features_file: Path, tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(INCEPTION_ENV, raising=False)
    absent = tmp_path / "absent"

    def refused(checkpoints: list[str], images: str, *flags: str) -> str:
        assert main(["--checkpoint", *checkpoints, "--images", images, *flags, "--out", str(tmp_path / "out")]) == 2
        error = capsys.readouterr().err
        assert error.count("\n") == 1 and error.startswith("python -m train.evaluate: error: ")
        return error.removeprefix("python -m train.evaluate: error: ").strip()

    weights = ["--inception-weights", str(features_file)]
    assert refused([str(absent / "a"), str(checkpoint), str(absent / "b")], str(absent / "images"),
                   "--inception-weights", str(absent / "net.pt")) == \
        f"--checkpoint {absent / 'a'} {absent / 'b'}: no such folders"
    assert refused([str(checkpoint)], str(absent / "images"), *weights) == \
        f"--images {absent / 'images'}: no such file or folder"
    assert refused([str(checkpoint)], str(absent / "*.png"), *weights) == f"--images {absent / '*.png'}: no files match"
    assert refused([str(checkpoint)], str(image_folder), "--inception-weights", str(absent / "net.pt")) == \
        f"--inception-weights {absent / 'net.pt'}: no such file"
    assert INCEPTION_ENV in refused([str(checkpoint)], str(image_folder))  # neither the flag nor the variable
    monkeypatch.setenv(INCEPTION_ENV, str(absent / "env.pt"))
    assert refused([str(checkpoint)], str(image_folder)) == f"${INCEPTION_ENV} {absent / 'env.pt'}: no such file"
    assert refused([str(checkpoint)], str(image_folder), *weights, "--dataset", str(absent / "data")) == \
        f"--dataset {absent / 'data'}: no such folder"
    assert not (tmp_path / "out").exists()  # nothing made before the checks passed
