"""FSDP2 for LitGPT's GPT, applied explicitly as torchtitan does: activation checkpointing, torch.compile and
``fully_shard`` per transformer block, then ``fully_shard`` on the root.

``python -m train.pretrain`` builds ``FSDP2Strategy`` (Lightning's ``ModelParallelStrategy``) whenever it
runs on more than one process, on GPUs (NCCL) or CPU processes (gloo). The device mesh is
``(nodes, devices per node)``: each block's parameters are sharded across the GPUs of a node and
replicated across nodes (HSDP, what FSDP1's HYBRID_SHARD does), so the state per GPU does not grow with
the number of nodes and only gradient all-reduces cross the network. (Lightning names the two mesh
dimensions "data_parallel" and "tensor_parallel"; here the second is the FSDP shard dimension.)

Initial weights are a function of ``(seed, parameter name)`` alone (``init_weights``), so a run on 1,
2 or 256 processes starts from the same model without any rank holding all of it: each parameter is
drawn whole, one at a time, and each rank keeps its slice.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.strategies import ModelParallelStrategy
from lightning.fabric.utilities.types import _Stateful
from litgpt.model import GPT, Block
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import (
    CheckpointWrapper,
    apply_activation_checkpointing,
    checkpoint_wrapper,
)
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor import DTensor, distribute_tensor

from shared.format.files import open_atomic

# --precision -> what FSDP2 all-gathers parameters in and reduces gradients in (None: as stored).
# bf16-mixed keeps fp32 parameters and optimizer state (Lightning's autocast still wraps the forward);
# bf16-true stores bf16 and still sums gradients across ranks in fp32, as torchtitan does.
MIXED_PRECISION = {
    "bf16-mixed": MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32),
    "bf16-true": MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32),
    "16-true": MixedPrecisionPolicy(param_dtype=torch.float16, reduce_dtype=torch.float32),
    "32-true": None,
}


def blocks(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The transformer blocks, each as the model now holds it (checkpoint-wrapped or not)."""
    return list(model.transformer.h)


def apply_ac(model: torch.nn.Module, checkpointed: Callable[[torch.nn.Module], bool] | None) -> torch.nn.Module:
    """Wrap the chosen blocks in torch's checkpoint_wrapper, in place (parameter names do not change in state
    dicts, so checkpoints are the same files with and without it)."""
    if checkpointed is not None:
        apply_activation_checkpointing(model, checkpoint_wrapper_fn=checkpoint_wrapper, check_fn=checkpointed)
    return model


def apply_compile(model: GPT) -> None:
    """torch.compile each block in place, and keep the root eager.

    Fabric compiles the root again around the sharded model when LitGPT compiled it (it does, unless
    TORCH_COMPILE_DISABLE=1): the root's own forward is excluded from that, so the compiled graphs are the
    blocks', between FSDP2's per-block all-gathers, as torchtitan compiles. (Not measured: compile on
    these CPUs costs more than it saves, and no GPU was lent to this project's development.)
    """
    for block in blocks(model):
        block.compile()
    model.forward = torch._dynamo.disable(model.forward, recursive=False)


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


def parallelize(model: GPT, mesh: DeviceMesh, *, checkpointed: Callable[[torch.nn.Module], bool] | None,
                compile_blocks: bool, mp_policy: MixedPrecisionPolicy | None) -> GPT:
    """Activation checkpointing, then compile, then FSDP2: the order torchtitan applies them in."""
    apply_ac(model, checkpointed)
    if compile_blocks:
        apply_compile(model)
    apply_fsdp(model, mesh, mp_policy)
    return model


# ---- weights that do not depend on the number of processes --------------------------------------
def stable_name(name: str) -> str:
    """A parameter's name as the plain model has it (wrappers add path parts)."""
    return name.replace("_checkpoint_wrapped_module.", "").replace("_orig_mod.", "")


def parameter_seed(seed: int, name: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{seed}/{stable_name(name)}".encode()).digest()[:8], "little") >> 1


@torch.no_grad()
def init_weights(model: torch.nn.Module, seed: int) -> None:
    """Redraw every weight LitGPT initialises at random from a generator seeded by ``(seed, its name)``.

    The distributions stay LitGPT's: ``litgpt.pretrain.initialize_weights`` gives each Linear and
    Embedding a ``reset_parameters`` that draws N(0, std) (GPT-NeoX's init); this reads that std and draws
    the same distribution, each parameter whole (on its device) and cut to this rank's slice. Other
    parameters (norms: ones) and zero biases are deterministic already.
    """
    for module_name, module in model.named_modules():
        reset = getattr(module, "reset_parameters", None)
        if not (isinstance(reset, partial) and "std" in reset.keywords):
            continue
        name = f"{module_name}.weight"
        weight = module.weight
        local = weight.to_local() if isinstance(weight, DTensor) else weight
        generator = torch.Generator(device=local.device).manual_seed(parameter_seed(seed, name))
        whole = torch.empty(weight.shape, dtype=torch.float32, device=local.device)
        whole.normal_(mean=0.0, std=reset.keywords["std"], generator=generator)
        if isinstance(weight, DTensor):
            whole = distribute_tensor(whole, weight.device_mesh, weight.placements, src_data_rank=None).to_local()
        local.copy_(whole)
        if getattr(module, "bias", None) is not None:
            module.bias.zero_()


# ---- the strategy ------------------------------------------------------------------------------
class FSDP2Strategy(ModelParallelStrategy):
    """Lightning's ModelParallelStrategy with ``parallelize`` as its parallelize_fn, sharded (DCP)
    checkpoints, world-size-independent initial weights, and stateful objects (the data loader) restored
    in place on load (Lightning 2.6 replaces them with their saved state dicts instead)."""

    def __init__(self, *, checkpointed: Callable[[torch.nn.Module], bool] | None, compile_blocks: bool,
                 precision: str, seed: int, **kwargs: Any) -> None:
        if precision not in MIXED_PRECISION:
            raise ValueError(f"FSDP2 training supports --precision {', '.join(MIXED_PRECISION)}, not {precision!r}")
        fn = partial(parallelize, checkpointed=checkpointed, compile_blocks=compile_blocks,
                     mp_policy=MIXED_PRECISION[precision])
        super().__init__(parallelize_fn=fn, save_distributed_checkpoint=True, **kwargs)
        self.seed = seed

    def setup_module(self, module: torch.nn.Module) -> torch.nn.Module:
        module = super().setup_module(module)  # parallelize, then materialise (LitGPT's init, per shard)
        init_weights(module, self.seed)
        if self.global_rank == 0:
            mesh = self.device_mesh
            wrapped = sum(isinstance(m, CheckpointWrapper) for m in module.modules())
            print(f"FSDP2: {len(blocks(module))} blocks and the root sharded over a {tuple(mesh.shape)} mesh "
                  f"(nodes x devices per node); activation checkpointing: {wrapped} of "
                  f"{sum(isinstance(m, Block) for m in module.modules())} transformer blocks")
        return module

    def load_checkpoint(self, path: Any, state: Any = None, strict: bool = True,
                        weights_only: bool | None = None) -> dict[str, Any]:
        stateful = {key: value for key, value in (state or {}).items()
                    if isinstance(value, _Stateful) and not isinstance(value, (torch.nn.Module, torch.optim.Optimizer))}
        if Path(path).is_file() and isinstance(state, dict):  # a one-process checkpoint, resumed sharded
            with self.named_optimizer_state(Path(path), state) as named:
                remaining = super().load_checkpoint(named, state, strict=strict, weights_only=weights_only)
        else:
            remaining = super().load_checkpoint(path, state, strict=strict, weights_only=weights_only)
        for key, value in stateful.items():
            if isinstance(state[key], dict):
                value.load_state_dict(state[key])
            state[key] = value
        return remaining

    @contextmanager
    def named_optimizer_state(self, path: Path, state: dict[str, Any]) -> Iterator[Path]:
        """The checkpoint at ``path`` with its optimizer state keyed by parameter name, in a file beside it.

        A one-process optimizer state is keyed by position in the optimizer's groups; Lightning would read the
        positions in ``module.parameters()`` order, which holds for AdamW but not for an optimizer that groups
        parameters otherwise (MuonAdamW: hidden matrices first). The positions are read here in the order of
        this run's own optimizer.
        """
        named = path.parent / f".{path.name}.named-{self.world_size}"
        if self.global_rank == 0:
            checkpoint = torch.load(path, map_location="cpu", weights_only=False)
            model = next(value for value in state.values() if isinstance(value, torch.nn.Module))
            names = {id(parameter): stable_name(name) for name, parameter in model.named_parameters()}
            for key, optimizer in state.items():
                if isinstance(optimizer, torch.optim.Optimizer) and isinstance(checkpoint.get(key), dict):
                    order = [names[id(p)] for group in optimizer.param_groups for p in group["params"]]
                    saved = checkpoint[key]
                    saved["state"] = {order[index] if isinstance(index, int) else index: value
                                      for index, value in saved["state"].items()}
                    saved["param_groups"] = [{**group, "params": [order[i] if isinstance(i, int) else i
                                                                  for i in group["params"]]}
                                             for group in saved["param_groups"]]
            with open_atomic(named) as handle:
                torch.save(checkpoint, handle)
        self.barrier()
        try:
            yield named
        finally:
            self.barrier()
            if self.global_rank == 0:
                named.unlink(missing_ok=True)
