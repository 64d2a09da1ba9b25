"""How the trainer lays a LitGPT ``GPT`` over its processes, applied explicitly as torchtitan does: activation
checkpointing, torch.compile and ``fully_shard`` per transformer block, then ``fully_shard`` on the root; and
initial weights that do not depend on that layout.

The device mesh is ``(nodes, devices per node)``: each block's parameters are sharded across the GPUs of a
node and replicated across nodes (HSDP, what FSDP1's HYBRID_SHARD does), so the state per GPU does not grow
with the number of nodes and only gradient all-reduces cross the network. It runs on GPUs (NCCL) and CPU
processes (gloo), so the test suite trains it. One process trains unsharded, with the same wrappers.

Initial weights are a function of ``(seed, parameter name)`` alone (``init_weights``), so a run on 1, 2 or
256 processes starts from the same model without any rank holding all of it: each parameter is drawn whole,
one at a time, and each rank keeps its slice.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Callable
from typing import Any

import torch
from litgpt.model import GPT, Block, CausalSelfAttention, LLaMAMLP
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import (
    CheckpointWrapper,
    apply_activation_checkpointing,
    checkpoint_wrapper,
)
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor import DTensor, distribute_tensor

# --precision -> (the dtype parameters are stored in, what FSDP2 all-gathers parameters in and reduces gradients
# in; None: as stored). bf16-mixed keeps fp32 parameters and optimizer state and runs the forward under
# autocast; bf16-true stores bf16 and still sums gradients across ranks in fp32, as torchtitan does.
PRECISIONS: dict[str, tuple[torch.dtype, MixedPrecisionPolicy | None]] = {
    "bf16-mixed": (torch.float32, MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)),
    "bf16-true": (torch.bfloat16, MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)),
    "16-true": (torch.float16, MixedPrecisionPolicy(param_dtype=torch.float16, reduce_dtype=torch.float32)),
    "32-true": (torch.float32, None),
}
MIXED_PRECISION = {name: policy for name, (_, policy) in PRECISIONS.items()}
CHOICES = "none, full or every-N (N >= 1: every N-th block)"


# ---- activation checkpointing ---------------------------------------------------------------------
def blocks_to_checkpoint(choice: str | None, flag: str = "--activation_checkpointing"
                         ) -> Callable[[torch.nn.Module], bool] | None:
    """``--activation_checkpointing`` -> which modules are checkpointed (None: nothing); ``flag``: the
    spelling an error names (``train.estimate`` spells it ``--activation-checkpointing``)."""
    if choice in (None, "none"):  # YAML reads a bare `none` as null
        return None
    every = 1 if choice == "full" else int(match[1]) if (match := re.fullmatch(r"every-(\d+)", choice)) else 0
    if every < 1:
        raise ValueError(f"{flag} must be {CHOICES}, not {choice!r}")
    # a Block knows its index through its attention layer (LitGPT's Block(config, block_idx) passes it there)
    return lambda module: isinstance(module, Block) and module.attn.block_idx % every == 0


def blocks(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The transformer blocks, each as the model now holds it (checkpoint-wrapped or not)."""
    return list(model.transformer.h)


def apply_ac(model: torch.nn.Module, checkpointed: Callable[[torch.nn.Module], bool] | None) -> torch.nn.Module:
    """Wrap the chosen blocks in torch's checkpoint_wrapper, in place (parameter names do not change in state
    dicts, so checkpoints are the same files with and without it)."""
    if checkpointed is not None:
        apply_activation_checkpointing(model, checkpoint_wrapper_fn=checkpoint_wrapper, check_fn=checkpointed)
    return model


def describe(model: torch.nn.Module) -> str:
    """What a training log says about a model's checkpointing."""
    wrapped = sum(isinstance(m, CheckpointWrapper) for m in model.modules())
    return f"activation checkpointing: {wrapped} of {sum(isinstance(m, Block) for m in model.modules())} " \
           "transformer blocks"


# ---- compile and shard ----------------------------------------------------------------------------
def apply_compile(model: GPT) -> None:
    """torch.compile each block in place; the root stays eager, so the compiled graphs are the blocks', between
    FSDP2's per-block all-gathers, as torchtitan compiles. (Not measured on a GPU: compile on these CPUs costs
    more than it saves, and no GPU was lent to this project's development.)"""
    for block in blocks(model):
        block.compile()


def apply_fsdp(model: GPT, mesh: DeviceMesh, mp_policy: MixedPrecisionPolicy | None) -> None:
    """fully_shard every block, then the root (embedding, final norm, head). A 2-D mesh shards along its
    second dimension and replicates along its first (HSDP)."""
    settings: dict[str, Any] = {"mesh": mesh if mesh.ndim == 1 or mesh.shape[0] > 1 else mesh[mesh.mesh_dim_names[1]]}
    if mp_policy is not None:
        settings["mp_policy"] = mp_policy
    layers = blocks(model)
    for index, block in enumerate(layers):
        # the last block's parameters are needed again at once by the backward: keep them gathered
        fully_shard(block, reshard_after_forward=index < len(layers) - 1, **settings)
    fully_shard(model, **settings)


def parallelize(model: GPT, mesh: DeviceMesh | None, *, checkpointed: Callable[[torch.nn.Module], bool] | None,
                compile_blocks: bool, mp_policy: MixedPrecisionPolicy | None) -> GPT:
    """Activation checkpointing, then compile, then FSDP2 (without a mesh: one process, nothing to shard): the
    order torchtitan applies them in."""
    apply_ac(model, checkpointed)
    if compile_blocks:
        apply_compile(model)
    if mesh is not None:
        apply_fsdp(model, mesh, mp_policy)
    return model


# ---- weights that do not depend on the number of processes --------------------------------------
def stable_name(name: str) -> str:
    """A parameter's name as the plain model has it (wrappers add path parts)."""
    return name.replace("_checkpoint_wrapped_module.", "").replace("_orig_mod.", "")


def parameter_seed(seed: int, name: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{seed}/{stable_name(name)}".encode()).digest()[:8], "little") >> 1


def weight_std(model: GPT) -> dict[str, float]:
    """GPT-NeoX's init, as `litgpt pretrain` draws it: N(0, sqrt(2 / 5 / n_embd)) for every Linear and Embedding
    weight, N(0, 1 / sqrt(n_embd) / n_layer) for the output projections of attention and the Llama MLP."""
    config = model.config
    std = {f"{name}.weight": math.sqrt(2.0 / 5 / config.n_embd) for name, module in model.named_modules()
           if isinstance(module, (torch.nn.Linear, torch.nn.Embedding))}
    for name, module in model.named_modules():
        if isinstance(module, (LLaMAMLP, CausalSelfAttention)):
            std[f"{name}.proj.weight"] = 1 / math.sqrt(config.n_embd) / config.n_layer
    return std


@torch.no_grad()
def init_weights(model: GPT, seed: int) -> None:
    """Every parameter and buffer of a model whose storage is allocated but not set (after ``to_empty``), or of
    any model: random weights from a generator seeded by ``(seed, their name)``, each drawn whole (on its
    device, in fp32) and cut to this rank's slice; zero biases; every other module's own ``reset_parameters``
    (norms: ones; the model's RoPE cache)."""
    for module in model.modules():
        if not isinstance(module, (torch.nn.Linear, torch.nn.Embedding)) and hasattr(module, "reset_parameters"):
            module.reset_parameters()
    for name, std in weight_std(model).items():
        weight = model.get_parameter(name)
        local = weight.to_local() if isinstance(weight, DTensor) else weight
        generator = torch.Generator(device=local.device).manual_seed(parameter_seed(seed, name))
        whole = torch.empty(weight.shape, dtype=torch.float32, device=local.device)
        whole.normal_(mean=0.0, std=std, generator=generator)
        if isinstance(weight, DTensor):
            whole = distribute_tensor(whole, weight.device_mesh, weight.placements, src_data_rank=None).to_local()
        local.copy_(whole)
    for name, parameter in model.named_parameters():
        if name.endswith(".bias"):
            parameter.zero_()
