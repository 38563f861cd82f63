"""Training: attention's input projections as one product each instead of two or three.

Self-attention projects the same input to q, k and v; cross-attention projects the encoder
output to k and v. Three products of (D, D) weights read the input three times and launch three
kernels; one product with the weights stacked to (3D, D) does the same arithmetic in one pass.
The weights stay the model's own q_proj/k_proj/v_proj parameters (stacked again at every step,
which autograd splits back), so checkpoints and exports are unchanged.

Shapes: N rows, T positions, D d_model, H heads, Dh head dim.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from seq2seq.attention import MultiHeadAttention


def _project(attention: MultiHeadAttention, x: Tensor, linears: list[nn.Linear]) -> tuple[Tensor, ...]:
    """x (N, T, D) through the linears stacked -> one (N, H, T, Dh) tensor per linear."""
    weight = torch.cat([linear.weight for linear in linears])
    bias = torch.cat([linear.bias for linear in linears])
    return tuple(attention._split_heads(t) for t in F.linear(x, weight, bias).chunk(len(linears), dim=-1))


class FusedProjectionAttention(MultiHeadAttention):
    """MultiHeadAttention whose q/k/v (self) and k/v (cross) projections run as one product."""

    def project_kv(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return _project(self, x, [self.k_proj, self.v_proj])

    def project_qkv(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        return _project(self, x, [self.q_proj, self.k_proj, self.v_proj])


def fuse_projections(model: nn.Module) -> nn.Module:
    """Every MultiHeadAttention of the model made a FusedProjectionAttention (same parameters,
    same results); in place, returns the model."""
    for module in model.modules():
        if type(module) is MultiHeadAttention:
            module.__class__ = FusedProjectionAttention
    return model
