"""`python -m train.pretrain` on one and several CPU processes: the same model for every process layout, FSDP2
over gloo, 2 nodes on localhost, sharded checkpoints, resume across layouts, checkpoints of the earlier trainer.

Every run here is a real `python -m train.pretrain` command training the tiny config at one global batch of 4
sequences for 6 optimizer steps, with 2 warmup steps and cosine decay, in four layouts (processes x micro-batch
x gradient accumulation): 1 x 2 x 2, 2 x 2 x 1, 2 x 1 x 2 and 1 x 4 x 1, with Muon + AdamW (the config's) and
with AdamW (whose 2 x 2 x 1 run is 2 nodes x 1 process). One-process runs train inside the test process;
several processes are real command lines in subprocesses, bounded in time and killed with their process group.

Measured (fp32, the 2-core development machine, 2026-12-07), relative L2 distance of the final weights from
the 1 x 4 x 1 run: Muon + AdamW 8.0e-4 (1 x 2 x 2 and 2 x 2 x 1) and 8.7e-4 (2 x 1 x 2); AdamW 5.9e-7 and
6.8e-7; the same run on another data order (--data.seed 7) 0.16 (Muon) and 0.115 (AdamW) away. What remains
is summation order: a micro-batch of 2 multiplies other shapes than one of 4, and Muon's bf16 Newton-Schulz
iteration amplifies the last bits. TOLERANCE is five times the largest measured for each optimizer; the
tests also require other data to be at least 25 times farther (measured: 37x for Muon, 34,000x for AdamW).
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import asdict
from pathlib import Path

import pytest
import torch
import yaml
from litgpt import GPT, Config
from litgpt_metrics import losses
from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

from preprocess.run import run
from shared.errors import CodecLmError
from train.checkpoint import (
    MARKER,
    SHARDED,
    WEIGHTS,
    CheckpointError,
    consolidate,
    listed_files,
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
LAYOUTS = {"1x2x2": (1, 2), "2x2x1": (2, 2), "2x1x2": (2, 1), "1x4x1": (1, 4)}  # processes, micro-batch
REFERENCE = "1x4x1"  # one process, no accumulation: what the other layouts are compared with
OPTIMIZERS = ("muon", "adamw")
# relative L2 between final weights: five times the largest measured (module docstring)
TOLERANCE = {"muon": 4e-3, "adamw": 4e-6}
RUN_LIMIT = 240  # seconds for one training command, then every process it started is killed


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """34 train and 6 val sequences of 1023 tokens: enough for 4 processes x micro-batch 1."""
    output = tmp_path_factory.mktemp("sharded") / "jpeg-tiny"
    run(["--output", str(output), "--profile", "jpeg-64-q25", "--seq-len", "1023", "--sample-size", "100",
         "--val-fraction", "0.2", "--direct_running_mode", "in_memory", "--direct_num_workers", "1"])
    return output


@pytest.fixture(scope="module")
def configs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The tiny config with its optimizer (Muon + AdamW), and the same with AdamW alone."""
    folder = tmp_path_factory.mktemp("configs")
    adamw = {**TINY, "optimizer": {"class_path": "torch.optim.AdamW",
                                   "init_args": {"lr": 0.003, "weight_decay": 0.1, "betas": [0.9, 0.95]}}}
    (folder / "adamw.yaml").write_text(yaml.safe_dump(adamw))
    return {"muon": ROOT / "train" / "jpeg-tiny.yaml", "adamw": folder / "adamw.yaml"}


def command(dataset: Path, out: Path, devices: int, *flags: str, micro_batch: int | None = None,
            config: Path = ROOT / "train" / "jpeg-tiny.yaml") -> list[str]:
    # warmup and cosine decay (a function of the optimizer step, the same in every layout and after a resume); fp32
    return [sys.executable, "-m", "train.pretrain", "--config", str(config), "--data.path", str(dataset),
            "--out_dir", str(out), "--devices", str(devices), "--data.num_workers", "0",
            "--train.global_batch_size", str(GLOBAL_BATCH),
            "--train.micro_batch_size", str(micro_batch or GLOBAL_BATCH // devices),
            "--train.max_tokens", str(STEPS * GLOBAL_BATCH * 1023), "--train.save_interval", "3",
            "--train.log_interval", "1", "--train.lr_warmup_steps", "2", "--precision", "32-true",
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
    finally:
        try:  # ranks a failed run left behind, if any
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    output = log.read_text()
    assert (process.returncode == 0) == ok, output[-4000:]
    return output


def train(dataset: Path, out: Path, devices: int, *flags: str, ok: bool = True, **options: object) -> str:
    """A training command; its output. One process runs in this one (``main(argv)``: Python, torch and LitGPT are
    imported already, which is most of a tiny run's time); several are a real command line in a subprocess."""
    argv = command(dataset, out, devices, *flags, **options)
    if devices > 1 or "--num_nodes" in flags:
        log = out.parent / f"{out.name}-{time.monotonic_ns()}.log"
        return finish(start(argv, log), log, ok=ok)
    output = io.StringIO()
    # as TORCH_COMPILE_DISABLE=1 does for a new process: compiling costs a tiny run more than it saves
    with redirect_stdout(output), redirect_stderr(output), torch._dynamo.config.patch(disable=True):
        status = pretrain_main(argv[3:])
    assert (status == 0) == ok, output.getvalue()[-4000:]
    return output.getvalue()


def kill_after_checkpoint(dataset: Path, out: Path, devices: int, micro_batch: int, step: int) -> None:
    """Start a run and SIGKILL all its processes as soon as its step checkpoint is complete."""
    log = out.parent / f"{out.name}-killed.log"
    process = start(command(dataset, out, devices, micro_batch=micro_batch), log)
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


def two_nodes(dataset: Path, out: Path, **options: object) -> str:
    """A run on 2 "nodes" x 1 process on localhost: two commands with MASTER_ADDR, MASTER_PORT and NODE_RANK."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    nodes = []
    for node in (0, 1):
        log = out.parent / f"{out.name}-node{node}.log"
        env = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "NODE_RANK": str(node)}
        nodes.append((start(command(dataset, out, 1, "--num_nodes", "2", **options), log, env), log))
    return "\n".join(finish(process, log) for process, log in nodes)


@pytest.fixture(scope="module")
def runs(dataset: Path, configs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Every layout with each optimizer, and each optimizer on another data order ("muon other", "adamw other"):
    out_dir by "optimizer layout". The one-process runs train in this process while the two-process ones run."""
    root = tmp_path_factory.mktemp("layouts")
    jobs = {f"{optimizer} {layout}": (devices, micro_batch, optimizer, ())
            for optimizer in OPTIMIZERS for layout, (devices, micro_batch) in LAYOUTS.items()}
    jobs.update({f"{optimizer} other": (1, 4, optimizer, ("--data.seed", "7")) for optimizer in OPTIMIZERS})

    def job(name: str) -> str:
        devices, micro_batch, optimizer, flags = jobs[name]
        out = root / name.replace(" ", "-")
        if name == "adamw 2x2x1":  # as 2 nodes x 1 process (test_two_nodes_on_localhost)
            output = two_nodes(dataset, out, micro_batch=micro_batch, config=configs[optimizer])
        else:
            output = train(dataset, out, devices, *flags, micro_batch=micro_batch, config=configs[optimizer])
        out.with_suffix(".out").write_text(output)
        return output

    with ThreadPoolExecutor(1) as pool:
        sharded = {name: pool.submit(job, name) for name in jobs if jobs[name][0] > 1}
        outputs = {name: job(name) for name in jobs if jobs[name][0] == 1}
        outputs.update({name: future.result() for name, future in sharded.items()})
    assert "FSDP2: 2 blocks and the root sharded over a (1, 2) mesh" in outputs["muon 2x2x1"]
    assert "1 process(es) x micro-batch 2 x 2 accumulation = global batch 4" in outputs["muon 1x2x2"]
    return {name: root / name.replace(" ", "-") for name in jobs}


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_every_layout_trains_the_same_model(runs: dict[str, Path], optimizer: str) -> None:
    """Same global batch: 1 process with accumulation, 2 processes, 2 with accumulation, 1 without. The same
    losses at every step and the same final weights, far closer than a run on other data."""
    reference = runs[f"{optimizer} {REFERENCE}"]
    far = distance(reference / "final", runs[f"{optimizer} other"] / "final")
    for layout in LAYOUTS:
        near = distance(reference / "final", runs[f"{optimizer} {layout}"] / "final")
        print(f"{optimizer} {layout}: {near:.2e} from {REFERENCE} (other data: {far:.2e})")
        assert near < TOLERANCE[optimizer], (layout, near)
        logged, expected = losses(runs[f"{optimizer} {layout}"]), losses(reference)
        assert sorted(logged) == list(range(1, STEPS + 1))
        assert [logged[s] for s in logged] == pytest.approx([expected[s] for s in logged], abs=1e-3)
    assert far > 25 * TOLERANCE[optimizer]


def test_checkpoints_are_sharded_marked_and_final_is_the_last_step(runs: dict[str, Path]) -> None:
    two = runs["muon 2x2x1"]
    step = two / "step-00000003"
    # each rank writes its own shard; nothing wrote the training state whole
    assert sorted(p.name for p in (step / SHARDED).glob("*.distcp")) == ["__0_0.distcp", "__1_0.distcp"]
    assert not (step / WEIGHTS).exists()
    marker = json.loads((step / MARKER).read_text())
    assert (marker["step"], marker["world_size"], marker["global_batch_size"], marker["state"]) == (3, 2, 4, SHARDED)
    assert marker["data"]["consumed"] == 3 * GLOBAL_BATCH  # the data position: sequences of the global stream
    assert marker["schedule"] == {"lr": 0.01, "min_lr": 0.001, "warmup_steps": 2, "max_steps": STEPS}
    # final/ holds exactly the state after the last optimizer step: the step-6 checkpoint's
    final, last = sharded_weights(two / "final" / SHARDED), sharded_weights(two / "step-00000006" / SHARDED)
    assert all(torch.equal(final[name], last[name]) for name in final)
    assert json.loads((two / "final" / MARKER).read_text())["data"]["consumed"] == STEPS * GLOBAL_BATCH
    # and the model consolidated for LitGPT's tools: the shards' weights, whole
    consolidated = torch.load(two / "final" / WEIGHTS, weights_only=True)
    assert consolidated["transformer.h.0.attn.qkv.weight"].shape == (3 * 128, 128)
    assert set(final) == set(consolidated) and all(torch.equal(consolidated[name], final[name]) for name in final)
    # one process writes the same format
    one = runs["muon 1x4x1"] / "step-00000003"
    assert sorted(p.name for p in (one / SHARDED).glob("*.distcp")) == ["__0_0.distcp"]


def test_killed_run_resumes_on_another_layout(dataset: Path, runs: dict[str, Path], tmp_path: Path) -> None:
    """2 processes with accumulation, SIGKILLed after step 3 (and a torn newer checkpoint), resumed on 1 process
    with another micro-batch. (1 process -> 2: the earlier trainer's one-process checkpoint, below.)"""
    before, after, out = "2x1x2", "1x2x2", tmp_path / "out"
    kill_after_checkpoint(dataset, out, *LAYOUTS[before], step=3)
    torn = out / "step-00000006"  # a newer checkpoint whose writing was cut short: a shard of step 6 is truncated
    shutil.copytree(out / "step-00000003", torn)
    shard = torn / SHARDED / "__1_0.distcp"
    shard.write_bytes(shard.read_bytes()[:1000])
    devices, micro_batch = LAYOUTS[after]
    output = train(dataset, out, devices, "--resume", "auto", micro_batch=micro_batch)
    assert re.search(r"Resuming training from \S*step-00000003", output), output[-3000:]
    assert f"--resume auto: skipping {out / 'step-00000006'} ({SHARDED}/__1_0.distcp is 1000 bytes" in output
    resumed = distance(runs[f"muon {REFERENCE}"] / "final", out / "final")
    print(f"killed {before}, resumed {after}: {resumed:.2e} from {REFERENCE}")
    assert resumed < TOLERANCE["muon"]
    first_logged = next(line for line in output.splitlines() if line.startswith("step "))
    assert first_logged.startswith(f"step 4/{STEPS} |")  # this run trained steps 4-6
    marker = json.loads((out / "step-00000006" / MARKER).read_text())
    assert marker["data"]["consumed"] == STEPS * GLOBAL_BATCH and marker["world_size"] == devices


# ---- checkpoints of the trainer before this one -------------------------------------------------------
def as_old_sharded(folder: Path) -> None:
    """Rewrite a checkpoint folder as the earlier trainer wrote it sharded: the same DCP keys, Lightning's
    meta.pt with the loop's counters, a marker of format /1 without the schedule."""
    marker = json.loads((folder / MARKER).read_text())
    torch.save({"train_dataloader": marker["data"], "iter_num": marker["step"], "step_count": marker["step"]},
               folder / SHARDED / "meta.pt")
    old = {"format": "codec-lm-checkpoint/1", "step": marker["step"], "iter_num": marker["step"],
           **{key: marker[key] for key in ("world_size", "micro_batch_size", "global_batch_size", "state")},
           "files": listed_files(folder)}
    (folder / MARKER).write_text(json.dumps(old))


def as_old_one_file(folder: Path) -> None:
    """Rewrite a checkpoint folder as `litgpt pretrain` (and the earlier trainer on one process) wrote it: the
    whole training state in lit_model.pth, the optimizer keyed by position in its groups; no marker."""
    marker = json.loads((folder / MARKER).read_text())
    dcp_to_torch_save(folder / SHARDED, folder / "whole.pth")
    whole = torch.load(folder / "whole.pth", weights_only=False)
    names = [name for group in whole["optimizer"]["param_groups"] for name in group["params"]]
    position = {name: index for index, name in enumerate(names)}
    optimizer = {"state": {position[name]: value for name, value in whole["optimizer"]["state"].items()},
                 "param_groups": [{**group, "params": [position[name] for name in group["params"]]}
                                  for group in whole["optimizer"]["param_groups"]]}
    torch.save({"model": whole["model"], "optimizer": optimizer, "train_dataloader": marker["data"],
                "iter_num": marker["step"], "step_count": marker["step"]}, folder / WEIGHTS)
    shutil.rmtree(folder / SHARDED)
    for name in ("whole.pth", MARKER):
        (folder / name).unlink()


@pytest.mark.parametrize("kind, optimizer, after", [("sharded", "adamw", "1x4x1"), ("one file", "muon", "2x2x1")])
def test_checkpoints_of_the_earlier_trainer_resume_to_the_same_model(dataset: Path, configs: dict[str, Path],
                                                                     runs: dict[str, Path], tmp_path: Path,
                                                                     kind: str, optimizer: str, after: str) -> None:
    out = tmp_path / "out"
    source = runs[f"{optimizer} 2x1x2" if kind == "sharded" else f"{optimizer} 1x2x2"]
    shutil.copytree(source / "step-00000003", out / "step-00000003")
    (as_old_sharded if kind == "sharded" else as_old_one_file)(out / "step-00000003")
    assert newest_complete(out) == (out / "step-00000003", [])
    devices, micro_batch = LAYOUTS[after]
    output = train(dataset, out, devices, "--resume", "auto", micro_batch=micro_batch, config=configs[optimizer])
    assert "Resuming training from" in output
    resumed = distance(runs[f"{optimizer} {REFERENCE}"] / "final", out / "final")
    print(f"{kind} checkpoint of the earlier trainer ({optimizer}), resumed {after}: {resumed:.2e} from {REFERENCE}")
    assert resumed < TOLERANCE[optimizer]


def test_a_checkpoint_that_cannot_be_converted_is_refused_in_one_line(dataset: Path, runs: dict[str, Path],
                                                                     tmp_path: Path) -> None:
    """Weights without a training state (no optimizer, no step): nothing to resume; one line says what to do."""
    out = tmp_path / "out"
    folder = out / "step-00000003"
    folder.mkdir(parents=True)
    shutil.copy(runs["muon 1x4x1"] / "final" / WEIGHTS, folder / WEIGHTS)
    shutil.copy(runs["muon 1x4x1"] / "final" / "model_config.yaml", folder / "model_config.yaml")
    output = train(dataset, out, 1, "--resume", "auto", ok=False)
    (error,) = [line for line in output.splitlines() if ": error: " in line]
    assert error.startswith("python -m train.pretrain: error: ") and "Traceback" not in output
    assert "holds model weights but no training state" in error and "--initial_checkpoint_dir" in error
    assert not (out / "final").exists() and "step 1/" not in output  # refused before any work


def test_two_nodes_on_localhost(runs: dict[str, Path]) -> None:
    """AdamW's 2-process layout ran as 2 nodes x 1 process, started as the no-launcher runbook (docs/scale.md)
    starts them: MASTER_ADDR, MASTER_PORT, NODE_RANK on each node. The mesh replicates across nodes and shards
    within one (HSDP); it trained the same model (test_every_layout_trains_the_same_model)."""
    output = runs["adamw 2x2x1"].with_suffix(".out").read_text()
    assert "FSDP2: 2 blocks and the root sharded over a (2, 1) mesh (nodes x devices per node)" in output
    assert distance(runs[f"adamw {REFERENCE}"] / "final", runs["adamw 2x2x1"] / "final") < TOLERANCE["adamw"]


def test_a_sharded_checkpoint_generates_and_exports_wherever_it_is_moved(runs: dict[str, Path], dataset: Path,
                                                                        tmp_path: Path) -> None:
    """A step checkpoint (shards only) moved away from its dataset: sampling and export read its shards and
    the profile and tokenizer it carries."""
    two_processes = runs["muon 2x2x1"]
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


def test_newest_complete_skips_torn_checkpoints(runs: dict[str, Path], tmp_path: Path) -> None:
    two_processes = runs["muon 2x2x1"]
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
    crowded = refused(4, "--train.global_batch_size", "40", "--train.micro_batch_size", "10", "--train.max_tokens",
                      str(40 * 1023))
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


def test_a_checkpoint_of_another_model_global_batch_or_schedule_is_refused(dataset: Path, runs: dict[str, Path],
                                                                           tmp_path: Path) -> None:
    out = tmp_path / "out"
    shutil.copytree(runs[f"muon {REFERENCE}"] / "step-00000003", out / "step-00000003")
    before = sorted((p.relative_to(out), p.stat().st_size) for p in out.rglob("*") if p.is_file())
    other_batch = train(dataset, out, 1, "--resume", "auto", "--train.global_batch_size", "8",
                        "--train.micro_batch_size", "8", ok=False)
    (error,) = [line for line in other_batch.splitlines() if ": error: " in line]  # one line (docs/cli.md)
    assert error.startswith("python -m train.pretrain: error: ") and "Traceback" not in other_batch
    assert "was trained with --train.global_batch_size 4, this run has 8" in error
    other_model = train(dataset, out, 1, "--resume", "auto", "--model_config.n_layer", "3", ok=False)
    assert "is a checkpoint of another model: n_layer 2 there, 3 here" in other_model
    other_schedule = train(dataset, out, 1, "--resume", "auto", "--train.lr_warmup_steps", "3", "--train.max_tokens",
                           str(2 * STEPS * GLOBAL_BATCH * 1023), ok=False)
    assert ("was trained with another learning-rate schedule (warmup_steps 2 there, 3 here, max_steps 6 there, 12 "
            "here); resume with its settings, or pass --accept_schedule_change") in other_schedule
    after = sorted((p.relative_to(out), p.stat().st_size) for p in out.rglob("*")
                   if p.is_file() and "logs" not in p.parts)
    assert after == before  # nothing overwritten
    accepted = train(dataset, out, 1, "--resume", "auto", "--train.lr_warmup_steps", "3", "--accept_schedule_change",
                     "true")
    assert re.search(r"Resuming training from \S*step-00000003", accepted)
    assert json.loads((out / "final" / MARKER).read_text())["schedule"]["warmup_steps"] == 3


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
