"""Reading a `litgpt pretrain` checkpoint folder: the model config, its weights, its training dataset, and
everything sampling from it needs (``load_for_sampling``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from litgpt import GPT, Config
from litgpt.utils import lazy_load

from shared.codec.profile import CodecProfile
from shared.codec.token_constraint import TokenConstraint
from shared.format.dataset import Dataset, DatasetError
from shared.format.tokenizer import ByteTokenizer


def load_model_config(checkpoint: Path) -> Config:
    """The model's LitGPT config: model_config.yaml, or the model_config section of hyperparameters.yaml."""
    if (checkpoint / "model_config.yaml").is_file():
        return Config.from_file(checkpoint / "model_config.yaml")
    hyperparameters = read_hyperparameters(checkpoint)
    if isinstance(hyperparameters.get("model_config"), dict):
        return Config(**hyperparameters["model_config"])
    raise SystemExit(f"{checkpoint} has no model_config.yaml and its hyperparameters.yaml has no model_config: "
                     "pass a checkpoint folder written by `litgpt pretrain`")


def read_hyperparameters(checkpoint: Path) -> dict[str, Any]:
    path = checkpoint / "hyperparameters.yaml"
    if not path.is_file():
        return {}
    return yaml.safe_load(path.read_text()) or {}


def load_lit_weights(checkpoint: Path) -> dict[str, Any]:
    """The model's weights, lazily: step checkpoints keep the whole training state, the model under "model"."""
    state = lazy_load(checkpoint / "lit_model.pth")
    weights = state.get("model", state)
    if not isinstance(weights, dict) or "transformer.wte.weight" not in weights:
        raise SystemExit(f"{checkpoint / 'lit_model.pth'} holds no LitGPT model weights "
                         f"(keys: {', '.join(list(state)[:6])})")
    return weights


def open_dataset(checkpoint: Path, dataset: str | None) -> Dataset:
    """The training dataset: --dataset, else the path hyperparameters.yaml recorded."""
    if dataset is None:
        recorded = read_hyperparameters(checkpoint).get("data") or {}
        dataset = (recorded.get("init_args") or {}).get("path")
        if dataset is None:
            raise SystemExit(f"{checkpoint / 'hyperparameters.yaml'} records no dataset (data.init_args.path); "
                             "pass --dataset DIR")
        where = f"recorded in {checkpoint / 'hyperparameters.yaml'}"
    else:
        where = "given with --dataset"
    try:
        return Dataset.open(str(dataset))
    except DatasetError as error:
        raise SystemExit(f"cannot read the training dataset {dataset} ({where}): {error}; "
                         "the export needs its manifest.json and tokenizer.json (--dataset DIR)") from None


def load_model(checkpoint: Path, device: torch.device) -> GPT:
    """The checkpoint's model in eval mode on ``device``: bf16 on GPUs that have it, else fp32."""
    model = GPT(load_model_config(checkpoint))
    model.load_state_dict(load_lit_weights(checkpoint))
    dtype = torch.bfloat16 if device.type == "cuda" and torch.cuda.is_bf16_supported() else torch.float32
    return model.to(device=device, dtype=dtype).eval()


@dataclass
class Sampler:
    """What sampling from a checkpoint needs: its training dataset's codec profile and tokenizer, the
    model, and (for constrained decoding) the profile's grammar lifted to tokens."""

    dataset: Dataset
    profile: CodecProfile
    tokenizer: ByteTokenizer
    model: GPT
    constraint: TokenConstraint | None


def load_for_sampling(checkpoint: Path, *, dataset: str | None = None, device: torch.device,
                      constrained: bool = True) -> Sampler:
    data = open_dataset(Path(checkpoint), dataset)
    profile, tokenizer = data.profile, data.tokenizer
    model = load_model(Path(checkpoint), device)
    if model.config.padded_vocab_size < tokenizer.vocab_size:
        raise SystemExit(f"{checkpoint}: the model knows {model.config.padded_vocab_size} ids, "
                         f"its tokenizer {tokenizer.vocab_size}")
    constraint = TokenConstraint(profile.grammar(), tokenizer.token_bytes, tokenizer.eos_id) if constrained else None
    return Sampler(data, profile, tokenizer, model, constraint)
