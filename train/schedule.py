"""Learning-rate schedule of Vaswani et al.: linear warmup, then inverse square-root decay."""
from __future__ import annotations

import math

import torch


def inverse_sqrt(warmup_steps: int):
    """Multiplier of the peak rate at update `step` (0-based): 1.0 exactly at the end of warmup."""

    def factor(step: int) -> float:
        s = step + 1
        if warmup_steps == 0:
            return 1.0
        return min(s / warmup_steps, math.sqrt(warmup_steps / s))

    return factor


def make_scheduler(optimizer: torch.optim.Optimizer, warmup_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(optimizer, inverse_sqrt(warmup_steps))
