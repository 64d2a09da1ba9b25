"""Reading a `litgpt pretrain` checkpoint folder: the model config, its weights, its training dataset."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from litgpt import Config
from litgpt.utils import lazy_load

from shared.dataset import Dataset, DatasetError


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
