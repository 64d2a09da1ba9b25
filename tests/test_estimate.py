"""train.estimate's sampling figures: slots per GPU from the KV bytes a row needs, and the FID protocol's GPU-hours."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import yaml
from litgpt import Config

from train.engine import MEMORY_SHARE, kv_bytes_per_slot
from train.estimate import (
    GPUS,
    count_parameters,
    fid_protocol_hours,
    main,
    print_sampling,
    sampling_slots,
    sampling_table,
)

ROOT = Path(__file__).resolve().parents[1]


def config(name: str) -> Config:
    return Config(**yaml.safe_load((ROOT / "train" / name).read_text())["model_config"])


def test_slots_for_sampling_both_7b_configs_in_bf16() -> None:
    jpeg, avc = config("jpeg7b.yaml"), config("avc7b.yaml")
    assert kv_bytes_per_slot(jpeg, 12288, torch.bfloat16) == 2 * 32 * 32 * 128 * 12288 * 2  # 6.4 GB a row
    h100, weights = GPUS["H100-80GB"], 2 * count_parameters(jpeg)
    expected = math.floor((MEMORY_SHARE * (85e9 - weights) - 12288**2) / kv_bytes_per_slot(jpeg, 12288, torch.bfloat16))
    assert sampling_slots(jpeg, h100, 12288) == expected == 10
    assert sampling_slots(avc, h100, 32768) == 3 and sampling_slots(avc, GPUS["A100-40GB"], 32768) == 1
    assert sampling_slots(jpeg, h100, 6000) > 2 * sampling_slots(jpeg, h100, 12288) - 1  # a shorter cache, more rows


def test_fid_protocol_hours_follow_the_slots() -> None:
    jpeg = config("jpeg7b.yaml")
    hours = {gpu: fid_protocol_hours(jpeg, GPUS[gpu], document_tokens=5000, hfu=0.4) for gpu in GPUS}
    assert hours["H100-80GB"]["completions"] == 3 * (3 * (5000 + 1000 + 1000) + 5000)
    assert hours["H100-80GB"]["generated_tokens"] == pytest.approx(3 * (7000 * 5000 * 1.5 + 5000 * 5000))
    assert hours["H200-141GB"]["gpu_hours"] < hours["H100-80GB"]["gpu_hours"] < hours["A100-80GB"]["gpu_hours"]
    tight = fid_protocol_hours(jpeg, GPUS["H100-80GB"], document_tokens=5000, hfu=0.4, length=6000)
    assert tight["slots"] > hours["H100-80GB"]["slots"] and tight["gpu_hours"] < hours["H100-80GB"]["gpu_hours"]


def test_the_sampling_table_states_its_assumptions(capsys: pytest.CaptureFixture[str]) -> None:
    jpeg = config("jpeg7b.yaml")
    rows = sampling_table(jpeg, document_tokens=5000, hfu=0.4)
    assert [row["gpu"] for row in rows] == list(GPUS) and rows[2]["slots_at_context"] == 10
    print_sampling(jpeg, rows, document_tokens=5000, hfu=0.4)
    printed = capsys.readouterr().out
    assert "FID protocol GPU-h" in printed and "Assumed, not measured" in printed and "78,000 completions" in printed
    # a bad flag is refused before any measuring
    assert main(["--config", str(ROOT / "train" / "jpeg7b.yaml"), "--document-tokens", "0"]) == 2
    assert capsys.readouterr().err.strip().endswith("--document-tokens must be positive, not 0")
