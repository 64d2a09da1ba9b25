"""Muon for a model's hidden matrices and AdamW for the rest, as one optimizer `litgpt pretrain` can take.

    optimizer:
      class_path: train.optimizer.MuonAdamW
      init_args: {lr: 0.01, weight_decay: 0.1, betas: [0.9, 0.95], vocab_size: 320}

Muon (torch.optim.Muon) orthogonalises each matrix's momentum before the update; on the tiny configs it
reaches a lower held-out loss than AdamW in the same steps (measured in train/jpeg-tiny.yaml). It is
meant for matrices inside the network only, so the token embedding and the output head (the matrices
with a row per vocabulary entry) and every vector (norms, biases) stay with AdamW (torch.optim.AdamW).
`litgpt pretrain` hands an optimizer bare parameters, without names: the vocabulary size is what tells
the embedding and the head apart, and a model without such a matrix is an error rather than a silent
all-Muon run.

Both parts follow one learning rate: ``adjust_lr_fn="match_rms_adamw"`` scales Muon's update to the size
of AdamW's, so LitGPT's warm-up and cosine schedule (which sets ``lr`` on every parameter group) drives
both. The two parts share one ``state`` and one list of groups, so ``state_dict()`` is a standard
optimizer state: torch.distributed.checkpoint saves and reshards it like AdamW's, and ``--resume``
continues exactly.

**Sharded (FSDP2) runs.** A parameter sharded by ``fully_shard`` is a DTensor holding a slice of rows;
orthogonalising a slice is not orthogonalising the matrix. So each Muon step gathers each matrix's
momentum-blended update (one all-gather per matrix, as distributed Muon implementations do), runs
Newton-Schulz on the whole matrix and keeps this rank's slice. The momentum buffers stay sharded.
Every rank orthogonalises every matrix (redundant compute, no further communication): measured on
2 CPU processes this gives bit-identical updates to one process, where computing on the DTensors
directly differs in bf16 rounding and was 2-3x slower. FSDP1's flat shards are not matrices and are
refused.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch.distributed.tensor import DTensor, distribute_tensor
from torch.optim._muon import _adjust_lr, _zeropower_via_newtonschulz  # torch.optim.Muon's own two steps


class MuonAdamW(torch.optim.Optimizer):
    """Muon on the hidden matrices (whole, also when sharded), torch.optim.AdamW on the embedding, the head
    and vectors."""

    def __init__(
        self,
        params: Iterable[torch.nn.Parameter],
        vocab_size: int,
        lr: float = 0.01,
        weight_decay: float = 0.1,
        betas: tuple[float, float] = (0.9, 0.95),
        momentum: float = 0.95,
    ) -> None:
        params = [p for p in params if p.requires_grad]
        is_vocabulary_matrix = [p.ndim == 2 and p.shape[0] == vocab_size for p in params]
        hidden = [p for p, vocab in zip(params, is_vocabulary_matrix) if p.ndim == 2 and not vocab]
        rest = [p for p, vocab in zip(params, is_vocabulary_matrix) if p.ndim != 2 or vocab]
        if not any(is_vocabulary_matrix):
            shapes = sorted({tuple(p.shape) for p in params})
            raise ValueError(
                f"MuonAdamW found no matrix with vocab_size={vocab_size} rows (the embedding and the output "
                f"head) among parameter shapes {shapes}: set vocab_size to the model's padded_vocab_size. "
                "FSDP1's flat shards are not matrices: train sharded with `python -m train.pretrain` (FSDP2), "
                "or use AdamW for sharded runs"
            )
        if not hidden:
            raise ValueError("MuonAdamW found no hidden matrices for Muon: use AdamW")
        # the parts keep their hyperparameters (group keys and defaults); this optimizer keeps the groups and state
        self.muon = torch.optim.Muon(
            hidden, lr=lr, weight_decay=weight_decay, momentum=momentum, adjust_lr_fn="match_rms_adamw"
        )
        self.adamw = torch.optim.AdamW(rest, lr=lr, weight_decay=weight_decay, betas=betas)
        super().__init__(params, {"lr": lr})
        self._share(self.muon.param_groups + self.adamw.param_groups, self.state)

    def _share(self, groups: list[dict[str, Any]], state: Any) -> None:
        # one list of groups and one state for this optimizer and its parts; filled into the objects this
        # optimizer already had, which wrappers (Fabric's) copied references to, so LitGPT's schedule
        # (which sets each group's lr) and checkpoints reach them after a restore too
        muon_groups = len(self.muon.param_groups)
        self.param_groups[:] = groups
        if state is not self.state:
            self.state.clear()
            self.state.update(state)
        self.muon.param_groups = self.param_groups[:muon_groups]
        self.adamw.param_groups = self.param_groups[muon_groups:]
        self.muon.state = self.adamw.state = self.state

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.muon.param_groups:
            for parameter in group["params"]:
                if parameter.grad is not None:
                    muon_update(parameter, self.state[parameter], group)
        self.adamw.step()
        return loss

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        # a MuonAdamW state: its Muon groups first (they have Muon's settings), then AdamW's
        groups = state_dict.get("param_groups", [])
        kinds = ["ns_steps" in group for group in groups if isinstance(group, dict)]
        if kinds != [True] * len(self.muon.param_groups) + [False] * len(self.adamw.param_groups):
            raise ValueError(f"not a MuonAdamW state (keys {sorted(state_dict)}): was it saved by another optimizer?")
        groups_before, state_before = self.param_groups, self.state
        super().load_state_dict(state_dict)
        loaded_groups, loaded_state = self.param_groups, self.state
        self.param_groups, self.state = groups_before, state_before
        self._share(loaded_groups, loaded_state)


def muon_update(parameter: torch.Tensor, state: dict[str, Any], group: dict[str, Any]) -> None:
    """One step of torch.optim.Muon for one matrix (its single-tensor path), on the whole matrix when sharded."""
    grad = parameter.grad
    if "momentum_buffer" not in state:
        state["momentum_buffer"] = torch.zeros_like(grad, memory_format=torch.preserve_format)
    buffer = state["momentum_buffer"]
    buffer.lerp_(grad, 1 - group["momentum"])
    update = grad.lerp(buffer, group["momentum"]) if group["nesterov"] else buffer
    sharded = isinstance(update, DTensor)
    whole = update.full_tensor() if sharded else update
    orthogonal = _zeropower_via_newtonschulz(whole, group["ns_coefficients"], group["ns_steps"], group["eps"])
    if sharded:  # this rank's rows, cut locally (every rank holds the whole result)
        orthogonal = distribute_tensor(orthogonal, update.device_mesh, update.placements, src_data_rank=None)
    lr = group["lr"]
    parameter.mul_(1 - lr * group["weight_decay"])
    parameter.add_(orthogonal, alpha=-_adjust_lr(lr, group["adjust_lr_fn"], parameter.shape))
