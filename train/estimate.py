"""What a config costs: parameters, tokens per optimizer step, memory per GPU, tokens/s per GPU.

    python -m train.estimate --config train/jpeg7b.yaml [--gpus-per-node 8] [--gpu H100]

The numbers in the 7B configs' comments come from here. Memory follows LitGPT pretrain's setup:
``bf16-true`` keeps weights, gradients and both AdamW moments in bf16 (8 bytes per parameter), FSDP
``HYBRID_SHARD`` shards them across the GPUs of one node, and there is no activation checkpointing,
so each layer keeps what autograd saved for its backward pass. That amount is *measured*: one and two
full-width layers run forward in bf16 under ``saved_tensors_hooks`` on a short sequence, and the
difference per token (parameters excluded) scales to the context. It is the eager-mode figure (LitGPT's
RMSNorm keeps fp32 copies); ``torch.compile``, which litgpt pretrain applies, may fuse some of it away.
Throughput assumes a model FLOPs utilisation (MFU) of 40% of the GPU's dense bf16 peak.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import yaml
from litgpt import GPT, Config

BF16_PEAK_TFLOPS = {"H100": 989.0, "A100": 312.0, "H200": 989.0}


@dataclass(frozen=True)
class Estimate:
    parameters: int
    tokens_per_step: int
    sharded_state_gb: float  # weights + grads + AdamW moments, per GPU
    activations_gb: float  # per GPU, micro-batch of micro_batch_size sequences
    total_gb: float
    flops_per_token: float
    tokens_per_second: float  # per GPU at the assumed MFU


def count_parameters(config: Config) -> int:
    with torch.device("meta"):
        return sum(p.numel() for p in GPT(config).parameters())


def saved_bytes_per_layer_token(config: Config, tokens: int = 64) -> float:
    """Bytes autograd keeps per layer and token in bf16, measured on one vs. two real layers."""
    def saved(layers: int) -> int:
        torch.manual_seed(0)
        model = GPT(replace(config, n_layer=layers, block_size=tokens)).to(torch.bfloat16)
        parameters = {p.data_ptr() for p in model.parameters()}
        storages: dict[int, int] = {}

        def pack(tensor: torch.Tensor) -> torch.Tensor:
            if tensor.data_ptr() not in parameters:
                storages[tensor.untyped_storage().data_ptr()] = tensor.untyped_storage().nbytes()
            return tensor

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            model(torch.zeros(1, tokens, dtype=torch.long))
        return sum(storages.values())

    return (saved(2) - saved(1)) / tokens


def estimate(config: Config, *, micro_batch: int, global_batch: int, gpus_per_node: int, gpu: str = "H100",
             mfu: float = 0.4) -> Estimate:
    parameters = count_parameters(config)
    tokens = config.block_size * micro_batch
    state = 8 * parameters / gpus_per_node / 1e9
    activations = config.n_layer * tokens * saved_bytes_per_layer_token(config) / 1e9
    logits = tokens * config.padded_vocab_size * 4 * 2 / 1e9  # fp32 logits and their gradient
    block = 2 * 2 * parameters / config.n_layer / 1e9  # two gathered blocks (FSDP prefetch), bf16
    flops = 6 * parameters + 6 * config.n_layer * config.n_embd * config.block_size  # + causal attention
    return Estimate(parameters, config.block_size * global_batch, state, activations,
                    state + activations + logits + block, flops, mfu * BF16_PEAK_TFLOPS[gpu] * 1e12 / flops)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--gpus-per-node", type=int, default=8)
    parser.add_argument("--gpu", choices=sorted(BF16_PEAK_TFLOPS), default="H100")
    args = parser.parse_args()
    settings = yaml.safe_load(args.config.read_text())
    config = Config(**settings["model_config"])
    train = settings["train"]
    result = estimate(config, micro_batch=train["micro_batch_size"], global_batch=train["global_batch_size"],
                      gpus_per_node=args.gpus_per_node, gpu=args.gpu)
    print(f"{config.name}: {result.parameters:,} parameters, {result.tokens_per_step:,} tokens per optimizer step")
    print(f"  per GPU ({args.gpus_per_node} per node, HYBRID_SHARD, bf16-true): sharded state {result.sharded_state_gb:.1f} GB"
          f" + activations {result.activations_gb:.1f} GB (eager) = {result.total_gb:.1f} GB")
    print(f"  {result.flops_per_token / 1e9:.1f} GFLOP per token -> {result.tokens_per_second:,.0f} tokens/s per {args.gpu}"
          f" at 40% MFU")


if __name__ == "__main__":
    main()
