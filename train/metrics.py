"""What a training log measures against: the device's peak FLOP/s (for MFU).

Dense peaks, from the vendors' data sheets (sparse figures are twice these): Lightning's own table uses the
sparse bf16 figure for some chips and detects the H200 from its name only in some spellings, so the project
keeps its own. TF32 (what ``32-true`` runs matmuls in, with ``torch.set_float32_matmul_precision("high")``)
is half the bf16 peak on these chips.
"""

from __future__ import annotations

import torch

DENSE_BF16_TFLOPS = {"H100 PCIe": 756.0, "H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0}


def peak_tflops(device: torch.device) -> float | None:
    """The dense bf16 peak of a CUDA device whose name is in the table (None: a CPU, or a GPU not listed)."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((tflops for key, tflops in DENSE_BF16_TFLOPS.items() if key in name), None)


def peak_flops(device: torch.device, precision: str) -> float | None:
    """FLOP/s the device peaks at in the arithmetic ``precision`` trains in (None: unknown, MFU is "n/a")."""
    tflops = peak_tflops(device)
    if tflops is None:
        return None
    return tflops * 1e12 * (1.0 if precision.startswith(("bf16", "16")) else 0.5)
