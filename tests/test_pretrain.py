"""`python -m train.pretrain`: litgpt pretrain with activation checkpointing, and what train.estimate says of it."""

from __future__ import annotations

import inspect
import json
import os
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import litgpt.pretrain as litgpt_pretrain
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
from train.parallel import FSDP2Strategy, init_weights
from train.pretrain import CHOICES, SWAPPED, blocks_to_checkpoint, checkpoint_blocks, swapped_into_litgpt

ROOT = Path(__file__).resolve().parents[1]
TINY_SETTINGS = yaml.safe_load((ROOT / "train" / "jpeg-tiny.yaml").read_text())
TINY_LAYERS = TINY_SETTINGS["model_config"]["n_layer"]
# the tiny config's width with 4 layers of 4 heads, so that every-2 and every-3 choose different blocks
TINY = Config(**{**TINY_SETTINGS["model_config"], "n_layer": 4, "n_head": 4, "n_query_groups": 4})


def swapped(checkpointed=None):
    return swapped_into_litgpt(checkpointed=checkpointed, seed=42, precision="32-true", config=TINY,
                               layout={"world_size": 1, "micro_batch_size": 4, "global_batch_size": 4}, data=None)


def test_litgpt_still_builds_what_train_pretrain_swaps() -> None:
    """The names train.pretrain swaps are module globals that litgpt.pretrain looks up where it did."""
    source = inspect.getsource(litgpt_pretrain)
    assert 'FSDPStrategy(auto_wrap_policy={Block}, state_dict_type="full", sharding_strategy="HYBRID_SHARD")' in source
    main = inspect.getsource(litgpt_pretrain.main)
    for line in ("model = GPT(config)",
                 "initialize_weights(fabric, model, n_layer=config.n_layer, n_embd=config.n_embd)",
                 "resume = find_resume_path(resume, out_dir)", "fabric.load(resume, state)", "fit(",
                 'save_checkpoint(fabric, state, tokenizer_dir, out_dir / "final" / "lit_model.pth")'):
        assert line in main, line
    assert "save_hyperparameters(setup, checkpoint_file.parent)" in inspect.getsource(litgpt_pretrain.save_checkpoint)
    # the std train.parallel.init_weights reads from LitGPT's init
    assert "partial(init_weights, mod, std=" in inspect.getsource(litgpt_pretrain.initialize_weights)
    originals = {name: getattr(litgpt_pretrain, name) for name in SWAPPED}
    with swapped(blocks_to_checkpoint("full")):
        assert all(getattr(litgpt_pretrain, name) is not originals[name] for name in SWAPPED)
        assert litgpt_pretrain.setup.__module__ == "train.pretrain"
        strategy = litgpt_pretrain.FSDPStrategy(auto_wrap_policy={Block}, state_dict_type="full",
                                                sharding_strategy="HYBRID_SHARD")
        assert isinstance(strategy, litgpt_pretrain.FSDPStrategy) and isinstance(strategy, FSDP2Strategy)
    assert all(getattr(litgpt_pretrain, name) is originals[name] for name in SWAPPED)  # put back
    assert "isinstance(fabric.strategy, FSDPStrategy)" in inspect.getsource(litgpt_pretrain.initialize_weights)


def test_initial_weights_do_not_depend_on_the_layout() -> None:
    """Drawn per parameter name with LitGPT's distributions: the same with or without checkpoint wrappers."""
    models = []
    for choice in (None, blocks_to_checkpoint("full")):
        torch.manual_seed(len(models))  # the global RNG does not matter
        model = GPT(TINY)
        if choice:
            checkpoint_blocks(model, choice)
        litgpt_pretrain.initialize_weights(type("F", (), {"strategy": None})(), model, TINY.n_layer, TINY.n_embd)
        init_weights(model, seed=42)
        models.append(model)
    plain, wrapped = (dict(m.state_dict()) for m in models)
    assert list(plain) == list(wrapped) and all(torch.equal(plain[k], wrapped[k]) for k in plain)
    std = plain["transformer.h.0.mlp.fc_1.weight"].std().item()
    assert std == pytest.approx((2 / 5 / TINY.n_embd) ** 0.5, rel=0.05)  # GPT-NeoX's init, as LitGPT's
    assert plain["transformer.h.0.mlp.proj.weight"].std().item() == pytest.approx(
        1 / TINY.n_embd ** 0.5 / TINY.n_layer, rel=0.05)
    assert torch.equal(plain["transformer.ln_f.weight"], torch.ones(TINY.n_embd))
    assert not torch.equal(plain["transformer.h.0.attn.qkv.weight"], plain["transformer.h.1.attn.qkv.weight"])


@pytest.mark.parametrize("choice, wrapped", [("none", []), ("full", [0, 1, 2, 3]), ("every-2", [0, 2]),
                                             ("every-3", [0, 3]), ("every-1", [0, 1, 2, 3])])
def test_checkpointed_blocks_recompute_and_keep_gradients_and_names(choice: str, wrapped: list[int],
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(0)
    with swapped(blocks_to_checkpoint(choice)):
        model = litgpt_pretrain.GPT(TINY)  # what litgpt.pretrain's main builds on one device
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


def test_print_config_is_litgpts_plus_the_choice() -> None:
    config = "train/avc7b.yaml"

    def printed(command: list[str]) -> dict:
        done = subprocess.run([*command, "--config", config, "--print_config"], cwd=ROOT, capture_output=True,
                              text=True, check=True)
        return yaml.safe_load(done.stdout)

    with ThreadPoolExecutor(2) as pool:  # two independent CLI start-ups
        theirs, ours = pool.map(printed, [["litgpt", "pretrain"],
                                          ["python", "-m", "train.pretrain", "--activation_checkpointing", "every-2"]])
    assert ours.pop("activation_checkpointing") == "every-2" and ours == theirs


# ---- training on the CPU --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    output = tmp_path_factory.mktemp("pretrain") / "jpeg-tiny"
    run(["--output", str(output), "--profile", "jpeg-64-q25", "--seq-len", "1023", "--sample-size", "60",
         "--val-fraction", "0.1", "--direct_running_mode", "in_memory", "--direct_num_workers", "1"])
    return output


def train(command: list[str], dataset: Path, out: Path, *flags: str, log: str | None = None) -> dict[int, float]:
    """Run a tiny training; the losses it logged, by iteration. ``log``: a line its output must hold."""
    # constant LR (min_lr = lr), so a run stopped early saw the same schedule as an uninterrupted one;
    # fp32: as fast on every CPU (bf16-mixed is fast only where the CPU computes in bf16)
    common = ["--config", "train/jpeg-tiny.yaml", "--data.path", str(dataset), "--out_dir", str(out),
              "--data.num_workers", "0", "--train.micro_batch_size", "2", "--train.global_batch_size", "2",
              "--train.log_interval", "1", "--train.save_interval", "5", "--train.lr_warmup_steps", "0",
              "--train.min_lr", str(TINY_SETTINGS["optimizer"]["init_args"]["lr"]), "--precision", "32-true",
              "--eval.interval", "1000", "--eval.final_validation", "false"]
    done = subprocess.run([*command, *common, *flags], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "TORCH_COMPILE_DISABLE": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    assert log is None or log in done.stdout.splitlines(), done.stdout[-2000:]
    return losses(out)


def test_checkpointed_training_matches_plain_training_and_resumes_exactly(dataset: Path, tmp_path: Path) -> None:
    steps, tokens = 10, 2 * 1023
    litgpt = ["python", "-m", "train.pretrain", "--activation_checkpointing", "none"]
    ours = ["python", "-m", "train.pretrain", "--activation_checkpointing", "full"]
    wrapped = f"activation checkpointing: {TINY_LAYERS} of {TINY_LAYERS} transformer blocks"  # the log says it is on
    with ThreadPoolExecutor(2) as pool:  # independent runs
        plain_run = pool.submit(train, litgpt, dataset, tmp_path / "plain", "--train.max_tokens", str(steps * tokens))
        checkpointed_run = pool.submit(train, ours, dataset, tmp_path / "full", "--train.max_tokens",
                                       str(steps * tokens), log=wrapped)
        plain, checkpointed = plain_run.result(), checkpointed_run.result()
    assert sorted(plain) == sorted(checkpointed) == list(range(1, steps + 1))
    assert [checkpointed[i] for i in plain] == pytest.approx([plain[i] for i in plain], abs=1e-6)
    hyperparameters = yaml.safe_load((tmp_path / "full" / "final" / "hyperparameters.yaml").read_text())
    assert hyperparameters["activation_checkpointing"] == "full"
    weights = [torch.load(tmp_path / run / "final" / "lit_model.pth", weights_only=False)["model"]
               for run in ("full", "plain")]
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
