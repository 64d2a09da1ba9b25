"""`python -m train.pretrain`: the owned loop's parts (schedule, initial weights, activation checkpointing, the
command line, nothing patched) and what train.estimate says of it."""

from __future__ import annotations

import ast
import io
import json
import math
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import pytest
import torch
import yaml
from litgpt import GPT, Config
from litgpt.model import Block
from litgpt_metrics import losses
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import CheckpointWrapper

from preprocess.run import run
from train.estimate import GPUS, LayerMemory, estimate, gpu_table, layer_memory
from train.estimate import main as estimate_main
from train.parallel import CHOICES, apply_ac, blocks_to_checkpoint, init_weights, parallelize
from train.pretrain import main as pretrain_main
from train.schedule import Schedule

ROOT = Path(__file__).resolve().parents[1]
TINY_SETTINGS = yaml.safe_load((ROOT / "train" / "jpeg-tiny.yaml").read_text())
TINY_LAYERS = TINY_SETTINGS["model_config"]["n_layer"]
# the tiny config's width with 4 layers of 4 heads, so that every-2 and every-3 choose different blocks
TINY = Config(**{**TINY_SETTINGS["model_config"], "n_layer": 4, "n_head": 4, "n_query_groups": 4})


# ---- nothing patched ----------------------------------------------------------------------------
def imported_modules(tree: ast.Module) -> dict[str, str]:
    """Names a file binds to modules or objects of other libraries (``import x.y as z``, ``from x import y``)."""
    names = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                names[alias.asname or alias.name.split(".")[0]] = alias.name
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            for alias in node.names:
                names[alias.asname or alias.name] = f"{node.module}.{alias.name}"
    return {name: module for name, module in names.items()
            if module.split(".")[0] not in ("shared", "preprocess", "train", "bench", "__future__")}


def test_no_file_in_train_assigns_to_another_librarys_module() -> None:
    """No name inside litgpt, lightning, torch or any other library is replaced: no ``module.name = …``,
    ``setattr(module, …)`` or ``del module.name`` on a name a file imported from outside the project."""
    found = []
    for path in sorted((ROOT / "train").glob("*.py")):
        tree = ast.parse(path.read_text())
        foreign = imported_modules(tree)
        for node in ast.walk(tree):
            targets = []
            if isinstance(node, (ast.Assign, ast.AugAssign, ast.AnnAssign, ast.Delete)):
                targets = node.targets if isinstance(node, (ast.Assign, ast.Delete)) else [node.target]
            elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("setattr",
                                                                                                     "delattr"):
                targets = [ast.Attribute(value=node.args[0], attr="?")] if node.args else []
            for target in targets:
                while isinstance(target, ast.Attribute) and isinstance(target.value, ast.Attribute):
                    target = target.value
                if isinstance(target, ast.Attribute) and isinstance(target.value, ast.Name) \
                        and target.value.id in foreign:
                    found.append(f"{path.name}:{node.lineno} {target.value.id}.{target.attr}")
    assert found == []
    # the check finds what it looks for
    sample = ast.parse("import litgpt.pretrain as lp\nfrom torch import nn\nlp.fit = 1\nsetattr(nn, 'x', 2)\n")
    assert set(imported_modules(sample)) == {"lp", "nn"}


# ---- the learning rate: a function of the optimizer step -------------------------------------------
def test_the_schedule_counts_optimizer_steps_and_never_trains_at_rate_zero() -> None:
    schedule = Schedule.of(lr=1e-2, min_lr=1e-3, max_steps=100, warmup_steps=10, warmup_fraction=None)
    rates = [schedule.at(step) for step in range(1, 101)]
    assert rates[0] == pytest.approx(1e-3) and min(rates) > 0  # step 1 trains at lr / warmup, not 0
    assert rates[9] == pytest.approx(1e-2) and max(rates) == rates[9]  # the last warmup step at the peak
    assert all(a < b for a, b in zip(rates[:10], rates[1:10]))  # linear warmup
    assert all(a >= b for a, b in zip(rates[9:], rates[10:]))  # cosine decay
    assert rates[-1] == pytest.approx(1e-3)  # the floor at the last step
    middle = 10 + 90 // 2
    assert schedule.at(middle) == pytest.approx(1e-3 + 0.5 * (1e-2 - 1e-3))
    # no warmup: the cosine starts at the peak before step 1, so step 1 trains just below it, the last at the floor
    no_warmup = Schedule.of(lr=1e-2, min_lr=1e-3, max_steps=5, warmup_steps=0, warmup_fraction=None)
    assert 1e-2 > no_warmup.at(1) > no_warmup.at(2) > no_warmup.at(5) == pytest.approx(1e-3)
    # a warmup given as a fraction is a fraction of the run's optimizer steps, whatever the process layout
    fraction = Schedule.of(lr=1.0, min_lr=0.0, max_steps=200, warmup_steps=None, warmup_fraction=0.05)
    assert fraction.warmup_steps == 10 and fraction.at(5) == pytest.approx(0.5)
    assert Schedule.of(lr=1.0, min_lr=0.0, max_steps=4, warmup_steps=10, warmup_fraction=None).warmup_steps == 4


def test_litgpts_schedule_depends_on_the_accumulation_this_one_does_not() -> None:
    """What the owned loop fixes, shown on LitGPT's own get_lr (docs/training.md): with accumulation a, LitGPT's
    optimizer step s trains at lr * (a*s - 1) / (a*w) during warmup."""
    from litgpt.pretrain import get_lr

    warmup, lr = 4, 1.0

    def litgpt_rate(step: int, accumulation: int) -> float:  # the rate set before the step's last micro-batch
        iteration = step * accumulation - 1
        return get_lr(lr, iteration, warmup * accumulation, 1000 * accumulation, 0.0)

    assert litgpt_rate(1, 1) == 0.0  # no accumulation: the first step trains at rate 0
    assert litgpt_rate(1, 2) == pytest.approx(1 / 8) and litgpt_rate(1, 4) == pytest.approx(3 / 16)
    ours = Schedule.of(lr=lr, min_lr=0.0, max_steps=1000, warmup_steps=warmup, warmup_fraction=None)
    assert [ours.at(step) for step in (1, 2, 3, 4)] == [0.25, 0.5, 0.75, 1.0]  # the same for every layout


# ---- initial weights and activation checkpointing ------------------------------------------------------
def test_initial_weights_do_not_depend_on_the_layout() -> None:
    """Drawn per parameter name with LitGPT's distributions: the same with or without checkpoint wrappers, on the
    meta device then allocated (as the trainer builds it) or built in place."""
    models = []
    for choice in (None, blocks_to_checkpoint("full")):
        torch.manual_seed(len(models))  # the global RNG does not matter
        model = GPT(TINY)
        apply_ac(model, choice)
        init_weights(model, seed=42)
        models.append(model)
    with torch.device("meta"):
        on_meta = apply_ac(GPT(TINY), blocks_to_checkpoint("every-2"))
    on_meta.to_empty(device="cpu")
    init_weights(on_meta, seed=42)
    models.append(on_meta)
    plain, wrapped, allocated = (dict(m.state_dict()) for m in models)
    assert list(plain) == list(wrapped) == list(allocated)
    assert all(torch.equal(plain[k], wrapped[k]) and torch.equal(plain[k], allocated[k]) for k in plain)
    assert torch.equal(models[0].cos, models[2].cos)  # the RoPE cache, recomputed after allocation
    std = plain["transformer.h.0.mlp.fc_1.weight"].std().item()
    assert std == pytest.approx((2 / 5 / TINY.n_embd) ** 0.5, rel=0.05)  # GPT-NeoX's init, as LitGPT's
    assert plain["transformer.h.0.mlp.proj.weight"].std().item() == pytest.approx(
        1 / TINY.n_embd ** 0.5 / TINY.n_layer, rel=0.05)
    assert plain["transformer.h.0.attn.proj.weight"].std().item() == pytest.approx(
        1 / TINY.n_embd ** 0.5 / TINY.n_layer, rel=0.05)
    assert torch.equal(plain["transformer.ln_f.weight"], torch.ones(TINY.n_embd))
    assert not torch.equal(plain["transformer.h.0.attn.qkv.weight"], plain["transformer.h.1.attn.qkv.weight"])
    assert init_weights.__module__ == "train.parallel" and math.isfinite(std)


@pytest.mark.parametrize("choice, wrapped", [("none", []), ("full", [0, 1, 2, 3]), ("every-2", [0, 2]),
                                             ("every-3", [0, 3]), ("every-1", [0, 1, 2, 3])])
def test_checkpointed_blocks_recompute_and_keep_gradients_and_names(choice: str, wrapped: list[int],
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(0)
    model = apply_ac(GPT(TINY), blocks_to_checkpoint(choice))  # what the trainer's parallelize applies first
    torch.manual_seed(0)
    plain = GPT(TINY)
    assert [i for i, block in enumerate(model.transformer.h) if isinstance(block, CheckpointWrapper)] == wrapped
    assert list(model.state_dict()) == list(plain.state_dict())  # checkpoints are the same files
    model.load_state_dict(plain.state_dict())
    calls = [0] * TINY.n_layer
    forward = Block.forward

    def counted(self: Block, *args: object, **kwargs: object) -> torch.Tensor:  # module hooks skip recomputation
        calls[self.attn.block_idx] += 1
        return forward(self, *args, **kwargs)

    monkeypatch.setattr(Block, "forward", counted)
    tokens = torch.randint(0, TINY.vocab_size, (2, 65))
    for net in (model, plain):
        torch.nn.functional.cross_entropy(net(tokens[:, :-1]).flatten(0, 1), tokens[:, 1:].flatten()).backward()
        if net is model:
            assert calls == [2 if i in wrapped else 1 for i in range(TINY.n_layer)]  # forward again in the backward
    for (name, a), b in zip(model.named_parameters(), plain.parameters()):
        assert torch.allclose(a.grad, b.grad, atol=1e-6), name


def test_compile_wraps_each_block_after_checkpointing_and_leaves_the_root_eager() -> None:
    """torchtitan's order: checkpoint wrappers, then torch.compile per block (in place: names and checkpoints are
    unchanged), the root eager. (Compiling itself is not run here: ~40 s on 2 cores; TORCH_COMPILE_DISABLE=1
    runs elsewhere skip it, as the quick start does.)"""
    model = parallelize(GPT(TINY), None, checkpointed=blocks_to_checkpoint("every-2"), compile_blocks=True,
                        mp_policy=None)
    assert all(block._compiled_call_impl is not None for block in model.transformer.h)
    assert model._compiled_call_impl is None
    assert [isinstance(block, CheckpointWrapper) for block in model.transformer.h] == [True, False, True, False]
    assert list(model.state_dict()) == list(GPT(TINY).state_dict())


PRETRAIN_ERROR = "python -m train.pretrain: error: "


def test_bad_choices_are_refused(tmp_path: Path) -> None:
    for choice in ("every-0", "half", "every-", "2"):
        with pytest.raises(ValueError, match="none, full or every-N"):
            blocks_to_checkpoint(choice)
    done = subprocess.run(["python", "-m", "train.pretrain", "--config", "train/jpeg-tiny.yaml", "--data.path",
                           str(tmp_path), "--activation_checkpointing", "most"], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 2  # a usage error, one line (docs/cli.md)
    assert done.stderr.splitlines() == [f"{PRETRAIN_ERROR}--activation_checkpointing must be {CHOICES}, not 'most'"]


def test_missing_paths_are_named_first(tmp_path: Path) -> None:
    """A missing --config file or dataset folder (typed, or given by the config) is the one complaint, with
    status 2, although the layout is wrong too (3 processes do not divide the global batch): nothing starts."""
    missing = tmp_path / "missing"
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({**TINY_SETTINGS, "data": {**TINY_SETTINGS["data"],
                                                                "init_args": {"path": str(missing)}}}))
    cases = {
        (f"--config={missing}.yaml",): f"--config {missing}.yaml: no such file",
        ("--config", "train/jpeg-tiny.yaml", "--data.path", str(missing)): f"--data.path {missing}: no such folder",
        ("--config", str(config)): f"--data.path {missing}: no such folder",
    }

    def refused(flags: tuple[str, ...]) -> subprocess.CompletedProcess:
        return subprocess.run(["python", "-m", "train.pretrain", *flags, "--devices", "3", "--out_dir",
                               str(tmp_path / "out")], cwd=ROOT, capture_output=True, text=True, timeout=300)

    with ThreadPoolExecutor(2) as pool:  # independent start-ups
        for (flags, message), done in zip(cases.items(), pool.map(refused, cases)):
            assert (done.returncode, done.stderr.splitlines()) == (2, [PRETRAIN_ERROR + message]), flags
    assert not (tmp_path / "out").exists()


def test_print_config_is_litgpts_plus_our_two_flags(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    config = "train/avc7b.yaml"

    def printed(command: list[str]) -> dict:
        done = subprocess.run([*command, "--config", config, "--print_config"], cwd=ROOT, capture_output=True,
                              text=True, check=True)
        return yaml.safe_load(done.stdout)

    with ThreadPoolExecutor(2) as pool:  # two independent CLI start-ups
        theirs, ours = pool.map(printed, [["litgpt", "pretrain"],
                                          ["python", "-m", "train.pretrain", "--activation_checkpointing", "every-2"]])
    assert ours.pop("activation_checkpointing") == "every-2" and ours.pop("accept_schedule_change") is False
    assert ours == theirs
    # an unknown key in a YAML: one line, status 2
    config_file = tmp_path / "typo.yaml"
    config_file.write_text(yaml.safe_dump({**TINY_SETTINGS, "train": {**TINY_SETTINGS["train"], "max_tokenz": 1}}))
    done = subprocess.run(["python", "-m", "train.pretrain", "--config", str(config_file), "--data.path",
                           str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and len(done.stderr.splitlines()) == 1, done.stderr
    assert done.stderr.startswith(PRETRAIN_ERROR) and "max_tokenz" in done.stderr
    # an optimizer dict over the config's (jsonargparse cannot merge them): one line that says what to do instead
    assert pretrain_main(["--config", "train/jpeg-tiny.yaml", "--data.path", str(tmp_path), "--optimizer",
                          '{"class_path": "torch.optim.AdamW", "init_args": {"lr": 0.003}}', "--print_config"]) == 2
    assert capsys.readouterr().err == (f"{PRETRAIN_ERROR}--optimizer cannot replace a --config file's optimizer on the "
                                       "command line (a jsonargparse limitation): change it in a copy of the YAML "
                                       "(docs/training.md)\n")


# ---- training on the CPU --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    output = tmp_path_factory.mktemp("pretrain") / "jpeg-tiny"
    run(["--output", str(output), "--profile", "jpeg-64-q25", "--seq-len", "1023", "--sample-size", "60",
         "--val-fraction", "0.1", "--direct_running_mode", "in_memory", "--direct_num_workers", "1"])
    return output


def train(command: list[str], dataset: Path, out: Path, *flags: str, log: str | None = None) -> dict[int, float]:
    """Run a tiny training; the losses it logged, by optimizer step. ``log``: a line its output must hold."""
    # warmup and cosine decay: the schedule is a function of the optimizer step, so a resumed run follows the same;
    # fp32: as fast on every CPU (bf16-mixed is fast only where the CPU computes in bf16)
    common = ["--config", "train/jpeg-tiny.yaml", "--data.path", str(dataset), "--out_dir", str(out),
              "--data.num_workers", "0", "--train.micro_batch_size", "2", "--train.global_batch_size", "2",
              "--train.log_interval", "1", "--train.save_interval", "5", "--train.lr_warmup_steps", "2",
              "--precision", "32-true", "--eval.interval", "1000", "--eval.final_validation", "false"]
    output = io.StringIO()
    # in this process (torch and LitGPT are imported already), without compiling, as TORCH_COMPILE_DISABLE=1 does
    with redirect_stdout(output), redirect_stderr(output), torch._dynamo.config.patch(disable=True):
        status = pretrain_main([*command, *common, *flags])
    assert status == 0, output.getvalue()[-3000:]
    assert log is None or log in output.getvalue().splitlines(), output.getvalue()[-2000:]
    return losses(out)


def test_checkpointed_training_matches_plain_training_and_resumes_exactly(dataset: Path, tmp_path: Path) -> None:
    steps, tokens = 10, 2 * 1023
    plain_flags = ["--activation_checkpointing", "none"]
    ours = ["--activation_checkpointing", "full"]
    wrapped = f"activation checkpointing: {TINY_LAYERS} of {TINY_LAYERS} transformer blocks"  # the log says it is on
    plain = train(plain_flags, dataset, tmp_path / "plain", "--train.max_tokens", str(steps * tokens))
    checkpointed = train(ours, dataset, tmp_path / "full", "--train.max_tokens", str(steps * tokens), log=wrapped)
    assert sorted(plain) == sorted(checkpointed) == list(range(1, steps + 1))
    assert [checkpointed[i] for i in plain] == pytest.approx([plain[i] for i in plain], abs=1e-6)
    hyperparameters = yaml.safe_load((tmp_path / "full" / "final" / "hyperparameters.yaml").read_text())
    assert hyperparameters["activation_checkpointing"] == "full"
    weights = [torch.load(tmp_path / run / "final" / "lit_model.pth", weights_only=True) for run in ("full", "plain")]
    assert list(weights[0]) == list(weights[1])  # the same checkpoint layout, with or without checkpointing
    assert all(torch.allclose(weights[0][name], weights[1][name], atol=1e-6) for name in weights[0])
    # a run stopped after step 5 (its step-5 checkpoint alone), resumed with checkpointing still on: the same losses
    shutil.copytree(tmp_path / "full" / "step-00000005", tmp_path / "cut" / "step-00000005")
    resumed = train(ours, dataset, tmp_path / "cut", "--train.max_tokens", str(steps * tokens), "--resume", "auto",
                    log=wrapped)
    assert sorted(resumed) == list(range(6, steps + 1))
    assert [resumed[i] for i in range(6, steps + 1)] == pytest.approx([plain[i] for i in range(6, steps + 1)], abs=1e-6)


# ---- train.estimate -------------------------------------------------------------------------------
README_FACTOR = 28  # README: "a checkpointed layer keeps ~28x less"
JPEG_7B = Config(**yaml.safe_load((ROOT / "train" / "jpeg7b.yaml").read_text())["model_config"])
AVC_7B = Config(**yaml.safe_load((ROOT / "train" / "avc7b.yaml").read_text())["model_config"])


@pytest.fixture(scope="module")
def layers_7b() -> LayerMemory:
    """Measured once on real 7B-width layers (both 7B configs share the width; the context does not matter)."""
    return layer_memory(JPEG_7B)


@pytest.mark.parametrize("config", ["tiny", "7b"])
def test_measured_activations_drop_by_the_stated_factor(config: str, layers_7b: LayerMemory) -> None:
    model, layers = (TINY, layer_memory(TINY)) if config == "tiny" else (JPEG_7B, layers_7b)
    assert layers.checkpointed == 2 * model.n_embd  # the block's bf16 input, one vector per token
    assert layers.plain > 50 * model.n_embd  # all a Llama layer keeps (attention, SwiGLU, RMSNorm's fp32 copies)
    assert layers.factor == pytest.approx(README_FACTOR, rel=0.03)


def test_estimate_tells_which_gpu_fits(layers_7b: LayerMemory) -> None:
    plain, full, every_3 = (estimate(JPEG_7B, micro_batch=1, global_batch=320, gpus_per_node=8,
                                     activation_checkpointing=choice, layers=layers_7b)
                            for choice in ("none", "full", "every-3"))
    assert plain.fits(GPUS["H200-141GB"]) and not plain.fits(GPUS["H100-80GB"])
    assert every_3.fits(GPUS["H100-80GB"]) and every_3.checkpointed_layers == 11
    assert full.fits(GPUS["A100-40GB"]) and full.checkpointed_layers == 32
    assert full.hardware_flops_per_token / full.model_flops_per_token == pytest.approx(4 / 3, rel=0.02)
    assert plain.hardware_flops_per_token == plain.model_flops_per_token
    rows = gpu_table(AVC_7B, gpus_per_node=8, hfu=0.4, layers=layers_7b, choices=("none", "full", "every-2"))
    table = {(row["gpu"], row["activation_checkpointing"]): row for row in rows}
    assert not any(table[gpu, "none"]["fits"] for gpu in GPUS)  # Avc-LM at 32K fits no GPU without checkpointing
    assert all(table[gpu, "full"]["fits"] for gpu in GPUS) and table["H100-80GB", "full"]["largest_micro_batch"] >= 1
    assert [gpu for gpu in GPUS if table[gpu, "every-2"]["fits"]] == ["H200-141GB"]
    assert table["H200-141GB", "every-2"]["tokens_per_second"] > table["H200-141GB", "full"]["tokens_per_second"]


def test_estimate_cli_prints_the_table_as_json() -> None:
    done = subprocess.run(["python", "-m", "train.estimate", "--config", "train/jpeg-tiny.yaml", "--json",
                           "--activation-checkpointing", "every-2"], cwd=ROOT, capture_output=True, text=True,
                          check=True, timeout=300)
    assert done.stderr == ""
    printed = json.loads(done.stdout)
    every_2 = len(range(0, TINY_LAYERS, 2))  # blocks 0, 2, ...
    assert printed["estimate"]["checkpointed_layers"] == every_2
    assert printed["layer_memory"]["checkpointed"] == 2 * TINY.n_embd
    assert {row["activation_checkpointing"] for row in printed["gpus"]} == {"none", "full", "every-2"}
    assert len(printed["gpus"]) == 3 * len(GPUS) and all(row["fits"] for row in printed["gpus"])


def test_estimate_old_flag_spelling_warns_and_works(capsys: pytest.CaptureFixture) -> None:
    config = str(ROOT / "train" / "jpeg-tiny.yaml")
    assert estimate_main(["--config", config, "--json", "--activation_checkpointing", "every-2"]) == 0
    printed = capsys.readouterr()
    assert printed.err.splitlines() == ["python -m train.estimate: warning: --activation_checkpointing is deprecated "
                                        "and goes in the next release; use --activation-checkpointing"]
    assert json.loads(printed.out)["estimate"]["activation_checkpointing"] == "every-2"
    assert json.loads(printed.out)["estimate"]["checkpointed_layers"] == len(range(0, TINY_LAYERS, 2))
    # a missing --config is named before the bad choice
    assert estimate_main(["--config", "missing.yaml", "--activation-checkpointing", "most"]) == 2
    assert capsys.readouterr().err == "python -m train.estimate: error: --config missing.yaml: no such file\n"
    assert estimate_main(["--config", config, "--activation-checkpointing", "most"]) == 2
    assert capsys.readouterr().err == ("python -m train.estimate: error: --activation-checkpointing must be "
                                       f"{CHOICES}, not 'most'\n")


def test_gpu_benchmark_says_it_needs_cuda_and_runs_its_steps_on_a_small_config(tmp_path: Path) -> None:
    if not torch.cuda.is_available():
        done = subprocess.run(["python", "-m", "bench.train_gpu"], cwd=ROOT, capture_output=True, text=True)
        assert done.returncode == 2 and "needs a CUDA GPU" in done.stderr
    out = tmp_path / "train_gpu.json"
    done = subprocess.run(["python", "-m", "bench.train_gpu", "--config", "train/jpeg-tiny.yaml", "--device", "cpu",
                           "--blocks", "1", "2", "--steps", "1", "--compile", "off", "--sharding", "none", "fsdp2",
                           "--out", str(out)], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = json.loads(out.read_text())["rows"]
    assert [(row["sharding"], row["activation_checkpointing"]) for row in rows] == [
        ("none", "none"), ("none", "full"), ("fsdp2", "none"), ("fsdp2", "full")]
    assert all(row["tokens_per_second"] > 0 and len(row["runs"]) == 2 for row in rows)
