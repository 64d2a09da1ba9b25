"""The HF export: a real tiny dataset and `litgpt pretrain` checkpoint, loaded back with transformers."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from litgpt import GPT, Config
from safetensors.torch import load_file

from preprocess.run import run
from shared.codec.registry import profile_from_json
from shared.format.dataset import Dataset
from shared.format.tokenizer import bytes_to_text, text_to_bytes
from train.checkpoint import CheckpointError
from train.export import ExportError, export, main

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(dataset, checkpoint): 64x64 JPEG, 255-token sequences, the tiny config trained 4 steps."""
    root = tmp_path_factory.mktemp("export")
    data, out = root / "data", root / "out"
    run(["--output", str(data), "--profile", "jpeg-64-q25", "--seq-len", "255", "--sample-size", "24",
         "--val-fraction", "0.2", "--direct_running_mode", "in_memory", "--direct_num_workers", "1"])
    subprocess.run(["litgpt", "pretrain", "--config", str(ROOT / "train/jpeg-tiny.yaml"), "--data.path", str(data),
                    "--out_dir", str(out), "--train.max_tokens", "4096", "--train.micro_batch_size", "4",
                    "--train.global_batch_size", "4", "--model_config.block_size", "255",
                    "--eval.final_validation", "false", "--data.num_workers", "0"],
                   env={**os.environ, "TORCH_COMPILE_DISABLE": "1"}, cwd=ROOT, check=True, capture_output=True)
    return data, out / "final"


@pytest.fixture(scope="module")
def exported(trained: tuple[Path, Path]) -> Path:
    _, checkpoint = trained
    hf = checkpoint.parent / "hf"
    assert main(["--checkpoint", str(checkpoint), "--out", str(hf)]) == 0  # the dataset: from hyperparameters.yaml
    return hf


def a_document(data: Path) -> tuple[np.ndarray, bytes]:
    dataset = Dataset.open(str(data))
    _, tokens, stream = next(dataset.document_streams(dataset.documents))
    return tokens.astype(np.int64), stream


def test_folder_and_records(trained: tuple[Path, Path], exported: Path) -> None:
    data, checkpoint = trained
    dataset = Dataset.open(str(data))
    assert sorted(p.name for p in exported.iterdir()) == [
        "README.md", "codec_lm.json", "config.json", "generation_config.json", "model.safetensors",
        "special_tokens_map.json", "tokenizer.json", "tokenizer_config.json"]
    assert not [p for p in exported.parent.iterdir() if p.name.startswith(".hf.")]  # no staging left behind
    assert (exported / "tokenizer.json").read_bytes() == (data / "tokenizer.json").read_bytes()
    config = json.loads((exported / "config.json").read_text())
    assert (config["vocab_size"], config["max_position_embeddings"], config["tie_word_embeddings"]) == (320, 255, False)
    assert (config["bos_token_id"], config["eos_token_id"]) == (dataset.manifest["bos_id"], dataset.manifest["eos_id"])

    record = json.loads((exported / "codec_lm.json").read_text())
    assert record["profile"] == dataset.manifest["profile"] and record["vocab_size"] == 320
    assert "U+2800" in record["decoding"] and "restore" in record["decoding"]
    tokens, stream = a_document(data)
    assert profile_from_json(record["profile"]).restore(stream) == dataset.profile.restore(stream)
    restored = dataset.profile.restore(stream)
    assert restored.startswith(b"\xff\xd8") and restored.endswith(b"\xff\xd9")


def test_step_and_bare_checkpoints_give_the_same_weights(trained: tuple[Path, Path], exported: Path,
                                                         tmp_path: Path) -> None:
    _, checkpoint = trained
    bare = shutil.copytree(checkpoint, tmp_path / "bare")
    torch.save(torch.load(checkpoint / "lit_model.pth", weights_only=True)["model"], bare / "lit_model.pth")
    export(bare, tmp_path / "hf")
    ours, again = load_file(exported / "model.safetensors"), load_file(tmp_path / "hf" / "model.safetensors")
    assert ours.keys() == again.keys() and all(torch.equal(ours[k], again[k]) for k in ours)


def test_transformers_logits_match_litgpt(trained: tuple[Path, Path], exported: Path) -> None:
    transformers = pytest.importorskip("transformers")
    data, checkpoint = trained
    hf, loading = transformers.LlamaForCausalLM.from_pretrained(exported, dtype=torch.float32, output_loading_info=True)
    assert not any(loading.values()), loading  # every weight found a place, none was left at its random init
    hf.eval()
    lit = GPT(Config.from_file(checkpoint / "model_config.yaml"))
    lit.load_state_dict(torch.load(checkpoint / "lit_model.pth", weights_only=True)["model"])
    lit.eval()
    tokens, _ = a_document(data)
    ids = torch.from_numpy(tokens[:255])[None]  # a real document: BOS, then its stream's tokens
    assert ids[0, 0] == Dataset.open(str(data)).manifest["bos_id"]
    with torch.no_grad():
        difference = (hf(ids).logits - lit(ids)).abs().max().item()
    print(f"max |logit difference| HF vs LitGPT: {difference:.3g}")
    assert difference < 1e-4

    generation = transformers.GenerationConfig.from_pretrained(exported)
    assert (generation.top_k, generation.do_sample, generation.temperature) == (50, True, 1.0)
    assert generation.eos_token_id == 319 and generation.max_new_tokens == 255
    assert hf.generation_config.top_k == 50  # generate() samples as the paper unless told otherwise
    sampled = hf.generate(ids[:, :1], max_new_tokens=8)
    assert sampled.shape == (1, 9) and int(sampled.max()) < 320


def test_transformers_tokenizer_matches_byte_tokenizer(trained: tuple[Path, Path], exported: Path) -> None:
    transformers = pytest.importorskip("transformers")
    data, _ = trained
    ours = Dataset.open(str(data)).tokenizer
    tokenizer = transformers.AutoTokenizer.from_pretrained(exported)
    assert isinstance(tokenizer, transformers.PreTrainedTokenizerFast)
    assert (tokenizer.bos_token_id, tokenizer.eos_token_id) == (ours.bos_id, ours.eos_id)
    _, stream = a_document(data)
    for sample in (stream, stream[:37], bytes(range(256)), b""):
        assert tokenizer(bytes_to_text(sample))["input_ids"] == ours.encode(sample).tolist()
    # codec_lm.json's recipe: ids (with BOS/EOS) -> Braille text -> the stream's bytes
    ids = ours.encode(stream, bos=True, eos=True).tolist()
    assert text_to_bytes(tokenizer.decode(ids, skip_special_tokens=True)) == stream


def edited_checkpoint(checkpoint: Path, tmp_path: Path, **changes: object) -> Path:
    copy = shutil.copytree(checkpoint, tmp_path / "edited")
    config = yaml.safe_load((copy / "model_config.yaml").read_text())
    (copy / "model_config.yaml").write_text(yaml.safe_dump({**config, **changes}))
    return copy


def test_clear_errors(trained: tuple[Path, Path], exported: Path, tmp_path: Path) -> None:
    data, checkpoint = trained
    with pytest.raises(ExportError, match="no checkpoint at .*lit_model.pth"):
        export(tmp_path / "missing", tmp_path / "a")
    with pytest.raises(CheckpointError, match=r"cannot read the training dataset .*no manifest.json.*--dataset"):
        export(checkpoint, tmp_path / "b", dataset=str(tmp_path / "nowhere"))
    with pytest.raises(ExportError, match="vocabulary mismatch: the model has vocab_size 1024"):
        export(edited_checkpoint(checkpoint, tmp_path / "v", vocab_size=1024, padded_vocab_size=1024), tmp_path / "c")
    with pytest.raises(ExportError, match="not a Llama-shaped model.*mlp_class_name is 'GptNeoxMLP'"):
        export(edited_checkpoint(checkpoint, tmp_path / "m", mlp_class_name="GptNeoxMLP"), tmp_path / "d")
    with pytest.raises(ExportError, match="already exists; pass --overwrite"):
        export(checkpoint, exported)
    assert not [p.name for p in tmp_path.iterdir() if p.name in {"a", "b", "c", "d"}]  # nothing half-written
    export(checkpoint, exported, dataset=str(data), overwrite=True)
    assert (exported / "model.safetensors").is_file()


def test_cli_checks_paths_first_and_shows_its_stages(trained: tuple[Path, Path], exported: Path, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    data, checkpoint = trained

    def refused(*flags: str) -> str:
        assert main(list(flags)) == 2
        error = capsys.readouterr().err
        assert error.count("\n") == 1 and error.startswith("python -m train.export: error: ")
        return error.removeprefix("python -m train.export: error: ").strip()

    absent = tmp_path / "absent"
    assert refused("--checkpoint", str(absent / "ckpt"), "--dataset", str(absent / "data"), "--out",
                   str(tmp_path / "hf")) == f"--checkpoint {absent / 'ckpt'}: no such folder"
    assert refused("--checkpoint", str(data), "--out", str(tmp_path / "hf")).startswith(
        f"--checkpoint {data}: not a checkpoint folder")
    assert refused("--checkpoint", str(checkpoint), "--dataset", str(absent / "data"), "--out",
                   str(tmp_path / "hf")) == f"--dataset {absent / 'data'}: no such folder"
    assert refused("--checkpoint", str(checkpoint), "--out", str(exported)) == \
        f"--out {exported}: already exists; pass --overwrite to replace it"
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    assert refused("--checkpoint", str(checkpoint), "--out", str(blocker / "hf")).startswith(
        f"--out {blocker / 'hf'}: cannot be written")
    assert not (tmp_path / "hf").exists()

    assert main(["--checkpoint", str(checkpoint), "--dataset", str(data), "--out", str(tmp_path / "hf")]) == 0
    stages = capsys.readouterr().err.splitlines()
    assert stages[0].startswith(f"loading the weights of {checkpoint} (1 file, ")
    assert stages[-3] == "converting: 100% 17/17 tensor [" + stages[-3].split("[", 1)[1]  # 2 layers of 7, and 3
    assert stages[-2].startswith("writing model.safetensors (") and stages[-1] == f"wrote {tmp_path / 'hf'}"
    assert load_file(tmp_path / "hf" / "model.safetensors").keys() == load_file(exported / "model.safetensors").keys()
