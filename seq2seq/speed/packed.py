"""CPU inference on weights laid out once for oneDNN's fp32 product.

Decoding multiplies every weight once a step. pack_for_cpu swaps every linear layer of a model
(and its tied output projection) for one that multiplies a weight reordered once, ahead of time,
for oneDNN's packed product, which PyTorch's x86 builds carry: no build, no download. On our
2-core AMD EPYC, translating Multi30k's test set (1,000 lines, a 3+3-layer d_model 256 model)
ran 1.12-1.2x faster than PyTorch's default product in the same process (docs/RESULTS.md).
Inference only: the packed weight has no gradient.

Shapes: M rows (tokens), I input features, O output features.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from seq2seq.model import Transformer
from seq2seq.speed import untie_output

# The row count oneDNN lays a weight out for: a decoding step's rows are sentences x beams.
ROWS_HINT = 128

# Rows at least this many (the encoder of a batch: sentences x source length) are multiplied by
# PyTorch's default product on the plain weight, where one is kept (keep_weight).
PLAIN_ROWS = 512


def available() -> bool:
    """oneDNN is built in and has the packed-linear kernels (every x86 PyTorch build since 2.0)."""
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


class PackedLinear(nn.Module):
    """y = x W^T + b on a W (O, I) laid out once for oneDNN; x (..., I) fp32 on CPU -> (..., O).
    keep_weight: also keep W unpacked, for the many-row products of a batch's encoder (see
    PLAIN_ROWS). rows_hint: the rows oneDNN lays W out for."""

    def __init__(self, weight: Tensor, bias: Tensor | None, rows_hint: int = ROWS_HINT, keep_weight: bool = False):
        super().__init__()
        self.out_features, self.in_features = weight.shape
        plain = weight.detach().float().contiguous()
        self.register_buffer("packed", torch.ops.mkldnn._reorder_linear_weight(plain, rows_hint))
        self.register_buffer("bias", None if bias is None else bias.detach().float().contiguous())
        self.register_buffer("weight", plain if keep_weight else None)

    def forward(self, x: Tensor) -> Tensor:
        rows = x.reshape(-1, self.in_features).contiguous()
        if self.weight is not None and rows.size(0) >= PLAIN_ROWS:
            y = F.linear(rows, self.weight, self.bias)
        else:
            y = torch.ops.mkldnn._linear_pointwise(rows, self.packed, self.bias, "none", [], "")
        return y.reshape(*x.shape[:-1], self.out_features)


def pack_for_cpu(model: Transformer, rows_hint: int = ROWS_HINT, keep_weights: bool = False) -> Transformer:
    """Swap the model's linear layers (and its tied output projection) for packed ones, in place;
    returns the model. rows_hint: the rows oneDNN lays a product out for. keep_weights: keep
    every weight unpacked as well (twice the memory), for products of PLAIN_ROWS rows or more.
    Needs an fp32 model on CPU and a PyTorch with oneDNN (available())."""
    if next(model.parameters()).device.type != "cpu" or next(model.parameters()).dtype != torch.float32:
        raise ValueError("pack_for_cpu needs an fp32 model on CPU")
    if not available():
        raise RuntimeError("this PyTorch build has no oneDNN packed linear kernels")
    untie_output(model)  # the tied projection becomes a linear layer, packed below like the rest
    with torch.no_grad():
        for module in list(model.modules()):
            for name, child in list(module.named_children()):
                if isinstance(child, nn.Linear):
                    setattr(module, name, PackedLinear(child.weight, child.bias, rows_hint, keep_weights))
    return model.eval()
