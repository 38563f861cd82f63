"""Learning-rate schedules: linear warmup, then the inverse square-root decay of Vaswani et al.
or a cosine decay that reaches zero at the last update."""
from __future__ import annotations

import math

import torch

SCHEDULES = ("inverse_sqrt", "cosine")


def inverse_sqrt(warmup_steps: int):
    """Multiplier of the peak rate at update `step` (0-based): 1.0 exactly at the end of warmup."""

    def factor(step: int) -> float:
        s = step + 1
        if warmup_steps == 0:
            return 1.0
        return min(s / warmup_steps, math.sqrt(warmup_steps / s))

    return factor


def cosine(warmup_steps: int, max_steps: int):
    """Linear warmup to 1.0, then half a cosine down to 0.0 at update max_steps; a fixed budget ends
    at a low rate, which lands in a flatter minimum than stopping mid-decay."""

    def factor(step: int) -> float:
        s = step + 1
        if s <= warmup_steps:
            return s / warmup_steps
        progress = min(1.0, (s - warmup_steps) / max(1, max_steps - warmup_steps))
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


def make_scheduler(optimizer: torch.optim.Optimizer, kind: str, warmup_steps: int,
                   max_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    if kind == "inverse_sqrt":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, inverse_sqrt(warmup_steps))
    if kind == "cosine":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, cosine(warmup_steps, max_steps))
    raise ValueError(f"schedule={kind!r}: expected one of {', '.join(SCHEDULES)}")
