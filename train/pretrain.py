"""`litgpt pretrain` with activation checkpointing: the paper's 7B configs on 80 GB GPUs.

    python -m train.pretrain --config train/jpeg7b.yaml --activation_checkpointing full --devices 8 --num_nodes 4
    python -m train.pretrain --config train/avc7b.yaml --activation_checkpointing full --print_config

The command line and YAML are exactly `litgpt pretrain`'s (every flag, ``--resume auto``,
``--data.path``, ``--print_config``) plus ``--activation_checkpointing``:

- ``none``: what `litgpt pretrain` does (every activation kept for the backward pass);
- ``full``: every transformer block is checkpointed: only its input is kept, and its forward runs again
  during the backward pass (~1/3 more compute per step for several times less activation memory);
- ``every-N``: every N-th block (block 0, N, 2N, …) is checkpointed, the others keep their activations:
  a middle ground when ``full`` fits with room to spare.

``python -m train.estimate --config CONFIG`` says which one fits which GPU, and at what cost.

How: this runs LitGPT's own ``litgpt.pretrain.setup`` (strategy, Fabric, model, optimizer, data, fit,
checkpoints: nothing is copied here) with three names of the ``litgpt.pretrain`` module swapped for the
duration of the call. These are the LitGPT 0.5.13 lines it depends on:

- ``FSDPStrategy`` (pretrain.py:143, ``FSDPStrategy(auto_wrap_policy={Block}, state_dict_type="full",
  sharding_strategy="HYBRID_SHARD")`` when devices x nodes > 1) becomes a subclass that also passes
  ``activation_checkpointing_policy``: Lightning then wraps the chosen blocks in torch's
  ``checkpoint_wrapper`` inside FSDP, as LitGPT's finetuning scripts do (a subclass, so the
  ``isinstance(fabric.strategy, FSDPStrategy)`` of pretrain.py:495 still holds);
- ``GPT`` (pretrain.py:201, ``model = GPT(config)`` under ``fabric.init_module``) becomes a function that
  builds the model and, when no FSDP strategy was made (one device), wraps the chosen blocks with the
  same ``checkpoint_wrapper``. Models on the meta device (pretrain.py:313, the FLOP count behind the
  reported MFU) stay unwrapped, so recomputation is not counted as useful work;
- ``setup`` (pretrain.py:505, ``save_hyperparameters(setup, …)`` re-reads the command line with the
  signature of ``setup`` to write each checkpoint's hyperparameters.yaml) becomes this module's
  ``setup``, whose command line has the extra flag; hyperparameters.yaml records the choice.

``checkpoint_wrapper`` keeps parameter names in state dicts, so checkpoints are the same files with and
without checkpointing: resume, ``train.generate`` and ``train.export`` read them alike, and a run may
switch the option between restarts. (hyperparameters.yaml then records ``activation_checkpointing``: feed
it back to ``python -m train.pretrain --config``, not to ``litgpt pretrain``.) ``tests/test_pretrain.py`` checks the three names are still looked
up there, so a LitGPT upgrade that moves them fails loudly.
"""

from __future__ import annotations

import inspect
import re
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import litgpt.pretrain as litgpt_pretrain
import torch
from jsonargparse import CLI, set_parsing_settings
from lightning.fabric.strategies import FSDPStrategy
from litgpt.model import GPT, Block, Config
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import (
    CheckpointWrapper,
    apply_activation_checkpointing,
    checkpoint_wrapper,
)
from torch.distributed.fsdp.wrap import CustomPolicy

CHOICES = "none, full or every-N (N >= 1: every N-th block)"
LITGPT_SETUP = litgpt_pretrain.setup


def blocks_to_checkpoint(choice: str | None) -> Callable[[torch.nn.Module], bool] | None:
    """``--activation_checkpointing`` -> which modules are checkpointed (None: nothing)."""
    if choice in (None, "none"):  # YAML reads a bare `none` as null
        return None
    every = 1 if choice == "full" else int(match[1]) if (match := re.fullmatch(r"every-(\d+)", choice)) else 0
    if every < 1:
        raise ValueError(f"--activation_checkpointing must be {CHOICES}, not {choice!r}")
    # a Block knows its index through its attention layer (LitGPT's Block(config, block_idx) passes it there)
    return lambda module: isinstance(module, Block) and module.attn.block_idx % every == 0


def checkpoint_blocks(model: torch.nn.Module, checkpointed: Callable[[torch.nn.Module], bool]) -> torch.nn.Module:
    """Wrap the chosen blocks of ``model`` in place (one device; FSDP does the same through Lightning)."""
    apply_activation_checkpointing(model, checkpoint_wrapper_fn=checkpoint_wrapper, check_fn=checkpointed)
    return model


def describe(model: torch.nn.Module) -> str:
    """What a training log says about a model's checkpointing."""
    blocks = [m for m in model.modules() if isinstance(m, Block)]
    wrapped = [m for m in model.modules() if isinstance(m, CheckpointWrapper)]
    return f"activation checkpointing: {len(wrapped)} of {len(blocks)} transformer blocks"


@contextmanager
def checkpointing_in_litgpt(checkpointed: Callable[[torch.nn.Module], bool] | None) -> Iterator[None]:
    """While open, ``litgpt.pretrain`` checkpoints the blocks ``checkpointed`` chooses (None: none) and
    records this module's command line in its checkpoints."""
    fsdp_made = False

    class CheckpointingFSDPStrategy(FSDPStrategy):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            nonlocal fsdp_made
            fsdp_made = True
            super().__init__(*args, activation_checkpointing_policy=CustomPolicy(checkpointed), **kwargs)

        def setup_module(self, module: torch.nn.Module) -> torch.nn.Module:
            module = super().setup_module(module)  # FSDP wraps, then Lightning checkpoints the chosen blocks
            if self.global_rank == 0:
                print(describe(module))
            return module

    def checkpointed_gpt(config: Config) -> GPT:
        model = GPT(config)
        on_meta = any(parameter.is_meta for parameter in model.parameters())
        if fsdp_made or on_meta:
            return model
        checkpoint_blocks(model, checkpointed)
        print(describe(model))
        return model

    names = ("setup", "FSDPStrategy", "GPT")
    originals = [getattr(litgpt_pretrain, name) for name in names]
    swapped = [setup] + ([CheckpointingFSDPStrategy, checkpointed_gpt] if checkpointed else originals[1:])
    for name, value in zip(names, swapped):
        setattr(litgpt_pretrain, name, value)
    try:
        yield
    finally:
        for name, value in zip(names, originals):
            setattr(litgpt_pretrain, name, value)


def setup(activation_checkpointing: str | None = "none", **litgpt_arguments: Any) -> None:
    try:
        checkpointed = blocks_to_checkpoint(activation_checkpointing)
    except ValueError as error:
        raise SystemExit(f"python -m train.pretrain: error: {error}") from None
    with checkpointing_in_litgpt(checkpointed):
        LITGPT_SETUP(**litgpt_arguments)


# The command line is litgpt pretrain's: its parameters (and their documentation), then ours.
_litgpt_signature = inspect.signature(LITGPT_SETUP)
setup.__signature__ = _litgpt_signature.replace(parameters=[
    *_litgpt_signature.parameters.values(),
    inspect.Parameter("activation_checkpointing", inspect.Parameter.KEYWORD_ONLY, default="none",
                      annotation=str | None),
])
setup.__doc__ = (LITGPT_SETUP.__doc__ or "").rstrip() + f"""
        activation_checkpointing: Which transformer blocks recompute their activations in the backward pass
            instead of keeping them: {CHOICES}. See ``python -m train.estimate``.
"""


def main() -> None:
    # As `litgpt pretrain` (litgpt/__main__.py): docstrings as help, configs from files or URLs, TF32 matmuls.
    set_parsing_settings(docstring_parse_attribute_docstrings=True, config_read_mode_urls_enabled=True)
    warnings.filterwarnings("ignore", message=r"The epoch parameter in `scheduler.step\(\)` was not necessary.*",
                            category=UserWarning, module=r".*torch\.optim\.lr_scheduler.*")
    torch.set_float32_matmul_precision("high")
    CLI(setup)


if __name__ == "__main__":
    main()
