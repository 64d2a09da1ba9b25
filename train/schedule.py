"""The learning rate: a function of the optimizer step alone, so every process layout at the same global batch
trains at the same rate at every step.

Linear warmup to ``lr`` over ``warmup_steps`` optimizer steps, then a cosine from ``lr`` down to ``min_lr`` at
the last step. Step ``s`` (1-based: the step about to be taken) trains at ``lr * s / warmup_steps`` while
``s <= warmup_steps``, so no step trains at rate 0 and the last warmup step trains at ``lr``. How this
differs from `litgpt pretrain`'s schedule (which counts micro-batches): docs/training.md.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Schedule:
    lr: float
    min_lr: float
    warmup_steps: int
    max_steps: int

    @classmethod
    def of(cls, *, lr: float, min_lr: float, max_steps: int, warmup_steps: int | None,
           warmup_fraction: float | None) -> Schedule:
        """From `litgpt pretrain`'s settings: a warmup in steps, or as a fraction of the run's optimizer steps."""
        warmup = math.ceil(warmup_fraction * max_steps) if warmup_fraction else (warmup_steps or 0)
        return cls(lr=lr, min_lr=min_lr, warmup_steps=min(warmup, max_steps), max_steps=max_steps)

    def at(self, step: int) -> float:
        """The learning rate of optimizer step ``step`` (1, 2, … max_steps)."""
        if step <= self.warmup_steps:
            return self.lr * step / self.warmup_steps
        if self.max_steps <= self.warmup_steps:
            return self.lr
        progress = min(1.0, (step - self.warmup_steps) / (self.max_steps - self.warmup_steps))
        return self.min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (self.lr - self.min_lr)

    def describe(self) -> dict[str, float | int]:
        """What a checkpoint records, so that a resume with other settings is noticed."""
        return {"lr": self.lr, "min_lr": self.min_lr, "warmup_steps": self.warmup_steps, "max_steps": self.max_steps}
