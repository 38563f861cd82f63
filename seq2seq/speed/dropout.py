"""Dropout for CPU training, with a quarter of the random draws.

PyTorch's CPU dropout draws one random number per element (bernoulli_), then multiplies twice;
on our 2-core machine that was an eighth of a training step of the CPU recipe. KeepMask draws
one 64-bit word per four elements and keeps an element when its 16-bit field clears the
threshold round(p * 65536): the drop rate is p to within 1 / 131072, from torch's own seeded
generator, so runs repeat under torch.manual_seed. Gradients use the same mask.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

FIELDS = 4  # 16-bit fields per 64-bit draw


class _KeepMask(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, p: float) -> Tensor:
        n = x.numel()
        words = torch.randint(-(2**63), 2**63 - 1, (-(-n // FIELDS),), dtype=torch.int64, device=x.device)
        # Signed 16-bit fields, uniform over [-32768, 32767]: keep those at or above the threshold.
        keep = (words.view(torch.int16)[:n] >= round(p * 65536) - 32768).view(x.shape)
        ctx.save_for_backward(keep)
        ctx.scale = 1.0 / (1.0 - p)
        return x * keep * ctx.scale

    @staticmethod
    def backward(ctx, grad: Tensor):
        (keep,) = ctx.saved_tensors
        return grad * keep * ctx.scale, None


class MaskDropout(nn.Dropout):
    """nn.Dropout(p) with the mask drawn by _KeepMask; the same module otherwise (eval: identity)."""

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.p == 0:
            return x
        if self.p >= 1:
            return x * 0
        return _KeepMask.apply(x, self.p)


def swap_dropout(model: nn.Module) -> nn.Module:
    """Replace every nn.Dropout of the model by a MaskDropout of the same rate, in place."""
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if type(child) is nn.Dropout:
                setattr(module, name, MaskDropout(child.p))
    return model
