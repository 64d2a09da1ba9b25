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
both. Checkpoints hold both parts' state, so ``--resume`` continues exactly.

Single-process and DDP runs only: FSDP shards each matrix into flat pieces, which Muon cannot
orthogonalise; the 7B configs keep AdamW, as the paper trained them.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch


class MuonAdamW(torch.optim.Optimizer):
    """torch.optim.Muon on the hidden matrices, torch.optim.AdamW on the embedding, the head and vectors."""

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
                "Flat shards (FSDP) are not matrices: use AdamW for sharded runs"
            )
        if not hidden:
            raise ValueError("MuonAdamW found no hidden matrices for Muon: use AdamW")
        self.muon = torch.optim.Muon(
            hidden, lr=lr, weight_decay=weight_decay, momentum=momentum, adjust_lr_fn="match_rms_adamw"
        )
        self.adamw = torch.optim.AdamW(rest, lr=lr, weight_decay=weight_decay, betas=betas)
        super().__init__(params, {"lr": lr})
        self._use_the_parts_groups()

    def _use_the_parts_groups(self) -> None:
        # the parts' own group dicts, so whatever sets a group's lr (LitGPT's schedule) sets it for the part;
        # filled into the same list object, which wrappers (Fabric's) copied a reference to
        self.param_groups[:] = self.muon.param_groups + self.adamw.param_groups

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self.muon.step()
        self.adamw.step()
        return loss

    def state_dict(self) -> dict[str, Any]:
        return {"muon": self.muon.state_dict(), "adamw": self.adamw.state_dict()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if set(state_dict) != {"muon", "adamw"}:
            raise ValueError(f"not a MuonAdamW state (keys {sorted(state_dict)}): was it saved by another optimizer?")
        self.muon.load_state_dict(state_dict["muon"])
        self.adamw.load_state_dict(state_dict["adamw"])
        self._use_the_parts_groups()  # loading gave the parts new group dicts
