"""`python -m train.pretrain` on several CPU processes: FSDP2 over gloo, sharded checkpoints, elastic resume.

Every run here is a real `python -m train.pretrain` command (LitGPT's loop, Lightning's launcher, torch's
FSDP2 and torch.distributed.checkpoint) training the tiny config (Muon + AdamW) at one global batch of 4
sequences for 6 steps. What they take on the 2-core CI machine: ~20 s for a 1-process run, ~30 s for 2
processes (most of it starting Python, torch and the process group); ~4 minutes for the file.

Measured tolerance: after 6 steps, the final weights of 1 and 2 processes (and of resumed runs) differ by
~1.5e-3 relative L2 (measured: 1 vs 2 processes 1.5e-3, 2 -> 1 resumed 1.5e-3, 1 -> 2
resumed 0.7e-3, 2 nodes 1.5e-3); the same run on another data order (another --data.seed) is 0.27 away. The difference
is Muon's bf16 Newton-Schulz iteration amplifying the last bits of gradients summed in another order
(AdamW runs agree to ~4e-7). The tests allow 0.01.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

import pytest
import torch
import yaml
from litgpt import GPT, Config
from litgpt_metrics import losses

from preprocess.run import run
from shared.errors import CodecLmError
from train.checkpoint import (
    MARKER,
    SHARDED,
    WEIGHTS,
    CheckpointError,
    consolidate,
    load_for_sampling,
    load_lit_weights,
    load_model_config,
    newest_complete,
    open_dataset,
    recorded_dataset,
    sharded_weights,
)
from train.consolidate import main as consolidate_main
from train.evaluate import EvaluationError, check_fingerprint
from train.export import export
from train.pretrain import main as pretrain_main

ROOT = Path(__file__).resolve().parents[1]
TINY = yaml.safe_load((ROOT / "train" / "jpeg-tiny.yaml").read_text())
STEPS, GLOBAL_BATCH = 6, 4
TOLERANCE = 0.01  # relative L2 between final weights; measured <= 1.5e-3 (module docstring)
RUN_LIMIT = 240  # seconds for one training command, then every process it started is killed


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """34 train and 6 val sequences of 1023 tokens: enough for 2 processes x micro-batch 2."""
    output = tmp_path_factory.mktemp("sharded") / "jpeg-tiny"
    run(["--output", str(output), "--profile", "jpeg-64-q25", "--seq-len", "1023", "--sample-size", "100",
         "--val-fraction", "0.2", "--direct_running_mode", "in_memory", "--direct_num_workers", "1"])
    return output


def command(dataset: Path, out: Path, devices: int, *flags: str) -> list[str]:
    # constant LR (min_lr = lr), so that a run stopped early saw the schedule of an uninterrupted one; fp32
    return [sys.executable, "-m", "train.pretrain", "--config", "train/jpeg-tiny.yaml", "--data.path", str(dataset),
            "--out_dir", str(out), "--devices", str(devices), "--data.num_workers", "0",
            "--train.global_batch_size", str(GLOBAL_BATCH), "--train.micro_batch_size", str(GLOBAL_BATCH // devices),
            "--train.max_tokens", str(STEPS * GLOBAL_BATCH * 1023), "--train.save_interval", "3",
            "--train.log_interval", "1", "--train.lr_warmup_steps", "0",
            "--train.min_lr", str(TINY["optimizer"]["init_args"]["lr"]), "--precision", "32-true",
            "--eval.interval", "1000", "--eval.final_validation", "false", *flags]


def start(argv: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    """A training command in its own process group (so that it and every rank it starts can be killed)."""
    return subprocess.Popen(argv, cwd=ROOT, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True,
                            env={**os.environ, "TORCH_COMPILE_DISABLE": "1", **(env or {})})


def finish(process: subprocess.Popen, log: Path, *, ok: bool = True) -> str:
    try:
        process.wait(timeout=RUN_LIMIT)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        pytest.fail(f"training ran past {RUN_LIMIT} s: {log.read_text()[-3000:]}")
    output = log.read_text()
    assert (process.returncode == 0) == ok, output[-4000:]
    return output


def train(dataset: Path, out: Path, devices: int, *flags: str, ok: bool = True) -> str:
    log = out.parent / f"{out.name}-{time.monotonic_ns()}.log"
    return finish(start(command(dataset, out, devices, *flags), log), log, ok=ok)


def kill_after_checkpoint(dataset: Path, out: Path, devices: int, step: int) -> None:
    """Start a run and SIGKILL all its processes as soon as its step checkpoint is complete."""
    log = out.parent / f"{out.name}-killed.log"
    process = start(command(dataset, out, devices), log)
    marker = out / f"step-{step:08d}" / MARKER
    deadline = time.monotonic() + RUN_LIMIT
    try:
        while not marker.is_file():
            assert process.poll() is None, f"the run ended before step {step}: {log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, "no checkpoint in time"
            time.sleep(0.05)
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    assert not (out / "final").exists()  # killed before the end


def weights(checkpoint: Path) -> dict[str, torch.Tensor]:
    loaded = load_lit_weights(checkpoint)
    return {k: (v._load_tensor() if hasattr(v, "_load_tensor") else v).float() for k, v in loaded.items()}


def distance(a: Path, b: Path) -> float:
    """Relative L2 distance between two checkpoints' weights."""
    first, second = weights(a), weights(b)
    assert sorted(first) == sorted(second)
    difference = sum(((first[k] - second[k]) ** 2).sum() for k in first)
    return float((difference / sum((first[k] ** 2).sum() for k in first)).sqrt())


@pytest.fixture(scope="module")
def one_process(dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("one") / "out"
    train(dataset, out, 1)
    return out


@pytest.fixture(scope="module")
def two_processes(dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("two") / "out"
    output = train(dataset, out, 2)
    assert "FSDP2: 2 blocks and the root sharded over a (1, 2) mesh" in output
    return out


def test_two_processes_train_the_same_model_as_one(one_process: Path, two_processes: Path) -> None:
    assert distance(one_process / "final", two_processes / "final") < TOLERANCE
    ones, twos = losses(one_process), losses(two_processes)
    assert sorted(ones) == sorted(twos) == list(range(1, STEPS + 1))
    # each rank writes its own shard; nothing wrote the training state whole
    step = two_processes / "step-00000003"
    assert sorted(p.name for p in (step / SHARDED).glob("*.distcp")) == ["__0_0.distcp", "__1_0.distcp"]
    assert not (step / WEIGHTS).exists()
    marker = json.loads((step / MARKER).read_text())
    assert (marker["step"], marker["world_size"], marker["global_batch_size"], marker["state"]) == (3, 2, 4, SHARDED)
    # final/ also holds the model consolidated for LitGPT's tools: the shards' weights, whole
    consolidated = torch.load(two_processes / "final" / WEIGHTS, weights_only=True)
    assert consolidated["transformer.h.0.attn.qkv.weight"].shape == (3 * 128, 128)
    shards = sharded_weights(two_processes / "final" / SHARDED)
    assert all(torch.equal(consolidated[name], shards[name]) for name in shards) and set(shards) == set(consolidated)


def test_a_run_on_other_data_is_far_away(dataset: Path, one_process: Path, tmp_path: Path) -> None:
    """What the tolerance is measured against: the same run on another data order."""
    train(dataset, tmp_path / "other", 1, "--data.seed", "7")
    assert distance(one_process / "final", tmp_path / "other" / "final") > 20 * TOLERANCE


@pytest.mark.parametrize("before, after", [(2, 1), (1, 2)])
def test_killed_run_resumes_on_another_number_of_processes(dataset: Path, one_process: Path, tmp_path: Path,
                                                           before: int, after: int) -> None:
    out = tmp_path / "out"
    kill_after_checkpoint(dataset, out, before, step=3)
    if before == 2:  # and a newer checkpoint whose writing was cut short: a shard of step 6 is truncated
        torn = out / "step-00000006"
        shutil.copytree(out / "step-00000003", torn)
        shard = torn / SHARDED / "__1_0.distcp"
        shard.write_bytes(shard.read_bytes()[:1000])
    output = train(dataset, out, after, "--resume", "auto")
    assert re.search(r"Resuming training from \S*step-00000003", output), output[-3000:]
    if before == 2:
        assert f"--resume auto: skipping {out / 'step-00000006'} ({SHARDED}/__1_0.distcp is 1000 bytes" in output
    assert distance(one_process / "final", out / "final") < TOLERANCE
    first_logged = next(line for line in output.splitlines() if line.startswith("Epoch"))
    assert first_logged.split("|")[1].strip() == "iter 4 step 4"  # this run trained steps 4-6
    state = (torch.load(out / "step-00000006" / WEIGHTS, weights_only=False)["train_dataloader"] if after == 1
             else torch.load(out / "step-00000006" / SHARDED / "meta.pt", weights_only=False)["train_dataloader"])
    assert state["consumed"] == STEPS * GLOBAL_BATCH and state["world"] == after  # the data position, counted


def test_two_nodes_on_localhost(dataset: Path, one_process: Path, tmp_path: Path) -> None:
    """2 nodes x 1 process, started as the README's no-launcher runbook starts them: MASTER_ADDR, MASTER_PORT,
    NODE_RANK on each node. The mesh replicates across nodes and shards within one (HSDP)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    out = tmp_path / "out"
    nodes = []
    for node in (0, 1):
        log = tmp_path / f"node{node}.log"
        argv = command(dataset, out, 1, "--num_nodes", "2", "--train.micro_batch_size", str(GLOBAL_BATCH // 2))
        nodes.append((start(argv, log, {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "NODE_RANK": str(node)}),
                      log))
    outputs = [finish(process, log) for process, log in nodes]
    assert "FSDP2: 2 blocks and the root sharded over a (2, 1) mesh (nodes x devices per node)" in outputs[0]
    assert distance(one_process / "final", out / "final") < TOLERANCE


def test_a_sharded_checkpoint_generates_and_exports_wherever_it_is_moved(two_processes: Path, dataset: Path,
                                                                        tmp_path: Path) -> None:
    """A step checkpoint (shards only) moved away from its dataset: sampling and export read its shards and
    the profile and tokenizer it carries."""
    moved = tmp_path / "elsewhere" / "step-00000006"
    shutil.copytree(two_processes / "step-00000006", moved)
    hidden = dataset.with_name("hidden")
    dataset.rename(hidden)  # the recorded dataset path no longer exists
    try:
        done = subprocess.run([sys.executable, "-m", "train.generate", "--checkpoint", str(moved), "--unconditional",
                               "2", "--max-new-tokens", "40", "--device", "cpu", "--out",
                               str(tmp_path / "samples")], cwd=tmp_path, capture_output=True, text=True,
                              timeout=RUN_LIMIT)
        assert done.returncode == 0, done.stderr[-3000:]
        samples = json.loads((tmp_path / "samples" / "unconditional" / "samples.json").read_text())
        assert samples["settings"]["profile"] == "jpeg-64-q25"
        hf = export(moved, tmp_path / "hf")
    finally:
        hidden.rename(dataset)
    assert (hf / "model.safetensors").is_file()
    assert (hf / "tokenizer.json").read_bytes() == (dataset / "tokenizer.json").read_bytes()
    from safetensors.torch import load_file

    exported = load_file(hf / "model.safetensors")
    assert torch.equal(exported["model.embed_tokens.weight"], weights(moved)["transformer.wte.weight"])
    # train.evaluate fingerprints the weights it samples from: the shards, here
    check_fingerprint(str(moved), str(tmp_path / "fingerprint.json"))
    check_fingerprint(str(moved), str(tmp_path / "fingerprint.json"))  # the same weights: accepted
    shard = moved / SHARDED / "__0_0.distcp"
    shard.write_bytes(shard.read_bytes()[::-1])
    with pytest.raises(EvaluationError, match="are not those this evaluation"):
        check_fingerprint(str(moved), str(tmp_path / "fingerprint.json"))
    shutil.rmtree(moved)
    shutil.copytree(two_processes / "step-00000006", moved)
    # python -m train.consolidate writes lit_model.pth for LitGPT's tools
    done = subprocess.run([sys.executable, "-m", "train.consolidate", "--checkpoint", str(moved)], capture_output=True,
                          text=True, cwd=ROOT, timeout=RUN_LIMIT)
    assert done.returncode == 0, done.stderr
    assert set(torch.load(moved / WEIGHTS, weights_only=True)) == set(weights(two_processes / "final"))


def test_newest_complete_skips_torn_checkpoints(two_processes: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    for step in ("step-00000003", "step-00000006"):
        shutil.copytree(two_processes / step, out / step)
    assert newest_complete(out) == (out / "step-00000006", [])
    (out / "step-00000006" / SHARDED / ".metadata").unlink()  # killed before the coordinator finished
    folder, skipped = newest_complete(out)
    assert folder == out / "step-00000003" and skipped == [(out / "step-00000006", f"{SHARDED}/.metadata is missing")]
    (out / "step-00000006" / MARKER).unlink()  # killed before the marker
    assert newest_complete(out)[1] == [(out / "step-00000006", f"no {MARKER}: its writing did not finish")]


# ---- bad input: a clear error before any work, nothing overwritten ---------------------------------
def test_bad_layouts_and_data_are_refused_before_any_process_starts(dataset: Path, tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch,
                                                                    capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "out"

    def refused(devices: int, *flags: str) -> str:  # the CLI in this process: it stops before launching any
        monkeypatch.setattr(sys, "argv", command(dataset, out, devices, *flags)[2:])
        assert pretrain_main() == 2  # a usage error
        (line,) = capsys.readouterr().err.splitlines()
        assert line.startswith("python -m train.pretrain: error: ")
        return line

    uneven = refused(3)  # 3 processes x micro-batch 1 do not divide 4
    assert "error: --train.global_batch_size 4 is not a multiple of 3 processes x --train.micro_batch_size 1" in uneven
    crowded = refused(4, "--train.global_batch_size", "40", "--train.micro_batch_size", "10")
    assert "has 34 train sequences for 4 processes x micro-batch 10: train needs 40" in crowded
    assert not out.exists()


# One process of a run fails (here: in train_dataloader, after the process group is up and the model sharded).
FAILING_RANK = """
import os, sys
import train.data
from shared.format.dataset import DatasetError

if os.environ.get("LOCAL_RANK", "0") == os.environ["FAIL_RANK"]:
    def broken(self):
        raise DatasetError(f"rank {os.environ.get('LOCAL_RANK', '0')} cannot read its data")
    train.data.CodecShards.train_dataloader = broken

from train.pretrain import main
sys.exit(main())
"""


@pytest.mark.parametrize("rank", [0, 1])
def test_a_failing_rank_stops_the_run_with_its_one_line_error(dataset: Path, tmp_path: Path, rank: int) -> None:
    """Rank 1 fails: Lightning ends rank 0. Rank 0 fails: it ends rank 1, which would wait for it in a
    collective. Either way: the error in one line, a non-zero status, no process left, well within the limit."""
    (tmp_path / "failing_rank.py").write_text(FAILING_RANK)
    argv = [sys.executable, "-m", "failing_rank", *command(dataset, tmp_path / "out", 2)[3:]]
    log = tmp_path / "run.log"
    process = start(argv, log, env={"FAIL_RANK": str(rank), "PYTHONPATH": f"{tmp_path}{os.pathsep}{ROOT}"})
    output = finish(process, log, ok=False)
    errors = [line for line in output.splitlines() if ": error: " in line]
    assert f"python -m train.pretrain: error: rank {rank} cannot read its data" in errors, output[-3000:]
    assert all(line.startswith("python -m train.pretrain: error: ") for line in errors), errors
    assert "Traceback" not in output
    with pytest.raises(ProcessLookupError):  # every process of the run has ended
        os.killpg(process.pid, 0)


def test_a_checkpoint_of_another_model_or_global_batch_is_refused(dataset: Path, one_process: Path,
                                                                  tmp_path: Path) -> None:
    out = tmp_path / "out"
    shutil.copytree(one_process / "step-00000003", out / "step-00000003")
    before = sorted((p.relative_to(out), p.stat().st_size) for p in out.rglob("*") if p.is_file())
    other_batch = train(dataset, out, 1, "--resume", "auto", "--train.global_batch_size", "8",
                        "--train.micro_batch_size", "8", ok=False)
    (error,) = [line for line in other_batch.splitlines() if ": error: " in line]  # one line (docs/cli.md)
    assert error.startswith("python -m train.pretrain: error: ") and "Traceback" not in other_batch
    assert "was trained with --train.global_batch_size 4, this run has 8" in error
    other_model = train(dataset, out, 1, "--resume", "auto", "--model_config.n_layer", "3", ok=False)
    assert "is a checkpoint of another model: n_layer 2 there, 3 here" in other_model
    after = sorted((p.relative_to(out), p.stat().st_size) for p in out.rglob("*")
                   if p.is_file() and "logs" not in p.parts)
    assert after == before  # nothing overwritten


def test_a_relative_dataset_path_is_found_from_any_working_directory(tmp_path: Path) -> None:
    """`litgpt pretrain` records paths as typed (``data/jpeg-tiny``); the checkpoint's place says where training ran."""
    ran_in = tmp_path / "project"
    checkpoint = ran_in / "out" / "jpeg-tiny" / "final"
    checkpoint.mkdir(parents=True)
    (checkpoint / "hyperparameters.yaml").write_text(yaml.safe_dump(
        {"out_dir": "out/jpeg-tiny", "data": {"init_args": {"path": "data/jpeg-tiny"}}}))
    assert recorded_dataset(checkpoint) == "data/jpeg-tiny"  # no dataset there: as typed
    (ran_in / "data" / "jpeg-tiny").mkdir(parents=True)
    (ran_in / "data" / "jpeg-tiny" / "manifest.json").write_text("{}")
    assert recorded_dataset(checkpoint) == str(ran_in / "data" / "jpeg-tiny")


def test_unreadable_checkpoints_raise_checkpoint_error(dataset: Path, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture) -> None:
    """Library functions raise a typed error (a CodecLmError), which each command's main() reports."""
    assert issubclass(CheckpointError, CodecLmError)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CheckpointError, match="has no model_config.yaml"):
        load_model_config(empty)
    with pytest.raises(CheckpointError, match="not a readable sharded checkpoint"):
        sharded_weights(empty)
    with pytest.raises(CheckpointError, match="nothing to consolidate"):
        consolidate(empty)
    (empty / "hyperparameters.yaml").write_text("out_dir: out\n")
    with pytest.raises(CheckpointError, match="records no dataset"):
        open_dataset(empty, None)
    with pytest.raises(CheckpointError, match="cannot read the training dataset .*--dataset DIR"):
        open_dataset(empty, str(tmp_path / "missing"))
    other = tmp_path / "other"
    other.mkdir()
    torch.save({"optimizer": {}}, other / WEIGHTS)
    with pytest.raises(CheckpointError, match="holds no LitGPT model weights"):
        load_lit_weights(other)
    # a model with fewer embedding rows than the dataset's tokenizer has ids
    small = Config(name="small", padded_vocab_size=256, vocab_size=256, n_layer=1, n_head=1, n_embd=8, block_size=16)
    (other / "model_config.yaml").write_text(yaml.safe_dump(asdict(small)))
    torch.save(GPT(small).state_dict(), other / WEIGHTS)
    with pytest.raises(CheckpointError, match="the model knows 256 ids, its tokenizer 320"):
        load_for_sampling(other, dataset=str(dataset), device=torch.device("cpu"))
    # train.consolidate: a missing folder is named first (status 2), in one line; the old spelling still works
    assert consolidate_main([str(empty), "--checkpoint", str(tmp_path / "missing")]) == 2
    assert capsys.readouterr().err.splitlines() == [
        "python -m train.consolidate: warning: checkpoint folders as plain arguments are deprecated and go in the next "
        "release; use --checkpoint DIR [DIR ...]",
        f"python -m train.consolidate: error: --checkpoint {tmp_path / 'missing'}: no such folder"]
    assert consolidate_main(["--checkpoint", str(empty)]) == 2
    assert "not a checkpoint folder" in capsys.readouterr().err
