"""Benchmark: a 7B training step on one GPU, with and without activation checkpointing and torch.compile.

Builds the config's real width (7B: 4096 wide, 32 heads, SwiGLU 11008) with K of its blocks, at the
config's full context, in bf16 with LitGPT's attention (PyTorch SDPA: flash attention on Hopper/Ampere),
and runs a few AdamW steps (micro-batch 1) for each combination of ``--activation_checkpointing`` and
``torch.compile``. Two block counts give a per-block slope, so memory and speed extrapolate to the
config's 32 blocks: time per step, tokens/s per GPU and MFU (model FLOPs per token from the config,
causal attention included, over the GPU's dense bf16 peak; recompute is not counted as useful work).
Memory: the peak ``torch.cuda.max_memory_allocated`` of the K-block run's last step; what the step adds to
the state held between steps, less the bf16 gradients, is its activations (and logits), fitted as a fixed
part plus a part per block and extrapolated to 32 blocks, plus the FSDP-sharded state of the whole
model on ``--gpus-per-node`` GPUs (8 bytes per parameter / GPUs), as each GPU holds under LitGPT's
HYBRID_SHARD. FSDP's own buffers (two gathered blocks, communication) come on top.
Prints a table and writes it as JSON. Needs CUDA; about 3 minutes on one H100 or H200.

``--sharding`` runs the same steps with the model wrapped as the trainers wrap it, in a process group of
this one GPU: ``fsdp2`` is ``python -m train.pretrain``'s path (``train.parallel.parallelize``:
checkpointing, per-block compile and ``fully_shard`` per block and on the root, bf16 gathers and fp32
gradient reduction), ``fsdp1`` is ``litgpt pretrain``'s (``FullyShardedDataParallel`` per block, then
Lightning's checkpoint wrappers inside it). One GPU has no one to shard with, so the rows compare the
wrappers' own cost in memory and time (buffers, copies, hooks), not communication. FSDP1 needs CUDA.

    python -m bench.train_gpu [--config train/jpeg7b.yaml] [--blocks 2 4] [--steps 3] [--out train_gpu.json]
    python -m bench.train_gpu --config train/avc7b.yaml --modes none full
    python -m bench.train_gpu --sharding fsdp1 fsdp2 --modes every-2 --compile off     # FSDP1 against FSDP2

Anchors for the MFU it prints: published Llama-2/3 7-8B FSDP training reaches ~46-58% MFU on H100/H200 at
4K context (torchtitan, fms-fsdp, KempnerForge).
"""

from __future__ import annotations

import gc
import json
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch
import yaml
from litgpt import GPT, Config
from litgpt.utils import chunked_cross_entropy

from shared.tools import cli
from train.estimate import count_parameters, flops_per_token
from train.metrics import peak_tflops as device_peak_tflops
from train.parallel import MIXED_PRECISION, blocks_to_checkpoint, parallelize
from train.parallel import apply_ac as checkpoint_blocks

SHARDINGS = ("none", "fsdp1", "fsdp2")

# Dense bf16 peaks by device-name fragment, most specific first (sparse figures are twice these).
def peak_tflops(device: torch.device, given: float | None) -> float | None:
    return given if given is not None else device_peak_tflops(device)


def wrap(model: GPT, *, sharding: str, checkpointing: str, compiled: bool, device: torch.device) -> torch.nn.Module:
    """The model as one process of each trainer holds it: plain (one GPU), FSDP1 or FSDP2."""
    checkpointed = blocks_to_checkpoint(checkpointing)
    if sharding == "fsdp2":
        from torch.distributed.device_mesh import init_device_mesh

        mesh = init_device_mesh(device.type, (1,))
        policy = MIXED_PRECISION["bf16-true"] if device.type == "cuda" else None
        return parallelize(model, mesh, checkpointed=checkpointed, compile_blocks=compiled, mp_policy=policy)
    if sharding == "fsdp1":  # as Lightning's FSDPStrategy does for litgpt pretrain
        from litgpt.model import Block
        from torch.distributed.fsdp import FullyShardedDataParallel, ShardingStrategy
        from torch.distributed.fsdp.wrap import ModuleWrapPolicy

        # FULL_SHARD: on one GPU it is what HYBRID_SHARD does within a node (one shard group, nothing to replicate)
        wrapped = FullyShardedDataParallel(model, auto_wrap_policy=ModuleWrapPolicy({Block}), device_id=device,
                                           sharding_strategy=ShardingStrategy.FULL_SHARD, use_orig_params=True)
        if checkpointed is not None:
            checkpoint_blocks(wrapped, checkpointed)
        return torch.compile(wrapped) if compiled else wrapped
    if checkpointed is not None:
        checkpoint_blocks(model, checkpointed)
    return torch.compile(model) if compiled else model


def run(config: Config, *, blocks: int, checkpointing: str, compiled: bool, steps: int,
        device: torch.device, sharding: str = "none") -> dict:
    """Seconds per step of ``steps`` AdamW steps (after one warm-up step), and the memory of the last: the
    state held between steps (weights, AdamW moments) and the most a step added to it (activations,
    gradients, logits)."""
    small = replace(config, n_layer=blocks)
    torch._dynamo.reset()  # no compiled graph of the previous run keeps its model alive
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    torch.manual_seed(0)
    with device:
        model = GPT(small).to(dtype)
    step_model = wrap(model, sharding=sharding, checkpointing=checkpointing, compiled=compiled, device=device)
    optimizer = torch.optim.AdamW(step_model.parameters(), lr=3e-4, fused=device.type == "cuda")
    tokens = torch.randint(0, config.vocab_size, (1, config.block_size + 1), device=device)
    inputs, targets = tokens[:, :-1], tokens[:, 1:]

    def step() -> None:
        loss = chunked_cross_entropy(step_model(inputs), targets)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    started = time.perf_counter()
    step()  # warm-up: compilation, allocator, kernels' autotuning, AdamW's moments
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    warmup = time.perf_counter() - started
    started = time.perf_counter()
    for _ in range(steps - 1):
        step()
    state = peak = 0
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        state = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
    step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        peak = torch.cuda.max_memory_allocated(device)
    seconds = (time.perf_counter() - started) / steps
    parameters = sum(p.numel() for p in model.parameters())
    return {"blocks": blocks, "seconds_per_step": seconds, "warmup_seconds": warmup, "peak_bytes": peak,
            "state_bytes": state, "step_bytes": peak - state,
            # what the step adds beyond the bf16 gradients (FSDP would shard those): activations and logits
            "activation_bytes": max(0, peak - state - 2 * parameters)}


@cli.command("python -m bench.train_gpu")
def main(argv: list[str] | None = None) -> int:
    parser = cli.parser("python -m bench.train_gpu", __doc__)
    parser.add_argument("--config", type=Path, default=Path("train/jpeg7b.yaml"))
    parser.add_argument("--blocks", type=int, nargs=2, default=[2, 4], metavar=("K1", "K2"),
                        help="two block counts to measure (default 2 4); results are extrapolated to the config's")
    parser.add_argument("--modes", nargs="+", default=["none", "full"], help="--activation_checkpointing values")
    parser.add_argument("--compile", choices=["both", "on", "off"], default="both", help="torch.compile runs")
    parser.add_argument("--sharding", nargs="+", choices=SHARDINGS, default=["none"],
                        help="none (a plain model), fsdp1 (litgpt pretrain), fsdp2 (python -m train.pretrain)")
    parser.add_argument("--steps", type=int, default=3, help="timed optimizer steps per run (after one warm-up)")
    parser.add_argument("--gpus-per-node", type=int, default=8, help="FSDP shards the model state across these")
    parser.add_argument("--peak-tflops", type=float, help="the GPU's dense bf16 peak (default: from its name)")
    parser.add_argument("--device", default="cuda", help="cuda (default); cpu only checks the script on a small config")
    parser.add_argument("--out", type=Path, default=Path("train_gpu.json"))
    args = parser.parse_args(argv)
    cli.existing(args.config, "--config", "file")
    cli.writable(args.out, "--out", folder=False)
    try:
        device = torch.device(args.device)
    except RuntimeError as error:
        raise cli.UsageError(f"--device {args.device}: {error}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise cli.UsageError("bench.train_gpu needs a CUDA GPU (none is visible to torch here): it measures bf16 "
                             "memory and speed of the 7B configs on the GPU they will train on. Run it on an "
                             "H100/H200/A100.")
    if "fsdp1" in args.sharding and device.type != "cuda":
        raise cli.UsageError("--sharding fsdp1 needs a CUDA GPU (FSDP1 refuses CPU devices); fsdp2 runs on the CPU too")
    if args.steps < 1:
        raise cli.UsageError(f"--steps must be positive, not {args.steps}")
    if set(args.sharding) - {"none"}:  # a process group of this one device, as a trainer's rank has
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", "29531")
        torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=0, world_size=1)
    settings = yaml.safe_load(args.config.read_text())
    config = Config(**settings["model_config"])
    parameters = count_parameters(config)
    flops = flops_per_token(config)[0]
    peak = peak_tflops(device, args.peak_tflops)
    compiles = {"both": [False, True], "on": [True], "off": [False]}[args.compile]
    k1, k2 = args.blocks
    if not 0 < k1 < k2 <= config.n_layer:
        raise cli.UsageError(f"--blocks must be two counts with 0 < K1 < K2 <= {config.n_layer}")
    for mode in args.modes:
        try:
            checkpointed = blocks_to_checkpoint(mode)
        except ValueError as error:
            raise cli.UsageError(f"--modes: {error}") from None
        every = int(mode.split("-")[1]) if mode.startswith("every-") else 1
        if checkpointed is not None and (k1 % every or k2 % every):
            raise cli.UsageError(f"--modes {mode}: --blocks must be multiples of {every}, so that the measured blocks "
                         "hold the same share of checkpointed ones as the whole model")
    state_gb = 8 * parameters / args.gpus_per_node / 1e9
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    rows = []
    print(f"{config.name} at {config.block_size:,} tokens on {name} ({peak or '?'} TFLOP/s dense bf16): "
          f"{k1} and {k2} of {config.n_layer} blocks, extrapolated to {config.n_layer}")
    for mode, compiled, sharding in ((m, c, s) for s in args.sharding for m in args.modes for c in compiles):
        first, second = (run(config, blocks=k, checkpointing=mode, compiled=compiled, steps=args.steps,
                             device=device, sharding=sharding) for k in (k1, k2))
        per_block = (second["seconds_per_step"] - first["seconds_per_step"]) / (k2 - k1)
        if per_block <= 0:  # timings too noisy to separate the blocks from the rest: scale in proportion
            per_block = second["seconds_per_step"] / k2
        seconds = first["seconds_per_step"] + (config.n_layer - k1) * per_block
        # activations (and logits) of a step: a fixed part and a part per block, extrapolated to all blocks;
        # the state is FSDP's share of the whole model's
        activations_per_block = (second["activation_bytes"] - first["activation_bytes"]) / (k2 - k1)
        fixed = first["activation_bytes"] - k1 * activations_per_block
        gb_per_gpu = state_gb + (fixed + config.n_layer * activations_per_block) / 1e9
        tokens_per_second = config.block_size / seconds
        row = {"activation_checkpointing": mode, "compile": compiled, "sharding": sharding, "runs": [first, second],
               "seconds_per_step": seconds, "tokens_per_second": tokens_per_second,
               "mfu": tokens_per_second * flops / (peak * 1e12) if peak else None,
               "peak_gb_measured": second["peak_bytes"] / 1e9, "activation_gb_per_block": activations_per_block / 1e9,
               "gb_per_gpu_fsdp": gb_per_gpu}
        rows.append(row)
        print(f"  {sharding:5s} checkpointing {mode:8s} compile {'on ' if compiled else 'off'}: "
              f"{tokens_per_second:8,.0f} tokens/s"
              f"  MFU {row['mfu'] or 0:5.1%}  peak {row['peak_gb_measured']:6.1f} GB with {k2} blocks, "
              f"{row['activation_gb_per_block']:5.2f} GB activations per block -> ~{gb_per_gpu:5.1f} GB per GPU "
              f"at {config.n_layer} blocks (FSDP over {args.gpus_per_node})  "
              f"[warm-up {second['warmup_seconds']:.0f} s]")
    result = {"config": str(args.config), "device": name, "peak_tflops": peak, "parameters": parameters,
              "model_flops_per_token": flops, "context": config.block_size, "blocks": [k1, k2], "rows": rows}
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
