"""CPU inference on weights laid out once for a fast fp32 product.

Decoding is bound by reading the weights once per token. pack_for_cpu swaps every linear layer
of a model for one that multiplies a weight reordered once, ahead of time, by one of:
- panel: seq2seq.speed.native's own product (x86 with AVX2; compiled on first use), which overlaps
  reading a weight with the arithmetic on the one before. On the model's shapes, weights cold,
  it ran 1.3-1.9x faster than oneDNN at 32 rows, 1.1-2.0x at 1-4 rows and 0.94-1.30x at 128
  (bench/cpu_linears.py), and level with MKL at 1,024 rows (a scratch timing);
- onednn: oneDNN's packed product, where the native one cannot be built. On the AMD EPYC we test
  on it streams a 32k x 512 output projection at about 30 GB/s for one row, where PyTorch's
  default fp32 path (MKL) reaches 13 GB/s.
Inference only: the packed weight has no gradient.

Shapes: M rows (tokens), I input features, O output features.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from seq2seq.speed import native
from seq2seq.speed.pages import to_huge_pages
from seq2seq.model import Transformer

KERNELS = ("panel", "onednn")
PANEL = 16  # output features per panel of the native product (csrc/panel_linear.cpp)


def available() -> bool:
    """oneDNN is built in and has the packed-linear kernels (every x86 PyTorch build since 2.0)."""
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


def default_kernel() -> str:
    """The native product where it builds, else oneDNN's."""
    return "panel" if native.load() else "onednn"


def to_panels(weight: Tensor) -> Tensor:
    """W (O, I) -> (ceil(O / 16), I, 16): panel p holds output features 16p..16p+15 by input
    feature, zero past O, so the native product reads each panel front to back."""
    out_f, in_f = weight.shape
    count = -(-out_f // PANEL)
    padded = torch.cat([weight, weight.new_zeros(count * PANEL - out_f, in_f)])
    return padded.view(count, PANEL, in_f).transpose(1, 2).contiguous()


# The row count oneDNN lays the weights out for (the onednn kernel). Laid out for 1 row, products
# of 4 and 32 rows ran 1.15-1.7x slower than laid out for 32, and 1-row products gained at most
# 13% (the 32k x 512 output projection; the others within 7%). End to end, batch 1 greedy stayed
# level and batch 1 beam 4 and batch 32 greedy gained 42% and 12% (bench/cpu_linears.py, 2-core
# AMD EPYC).
ROWS_HINT = 32


# Rows at least this many (the encoder of a batch: sentences x source length) are multiplied by
# PyTorch's default product (MKL) on the plain weight, where one is kept: from 512 rows it ran
# 1.11-1.21x faster than oneDNN on weights laid out for ROWS_HINT rows, at 128-256 rows level
# (the encoder's products, 2-core AMD EPYC, a scratch measurement).
PLAIN_ROWS = 512


class PackedLinear(nn.Module):
    """y = x W^T + b on a W (O, I) laid out once for `kernel` ("panel" or "onednn"; None picks
    default_kernel()); x (..., I) fp32 on CPU -> (..., O). keep_weight: also keep W unpacked, for
    the many-row products of a batch's encoder (see PLAIN_ROWS). rows_hint: the rows oneDNN lays
    W out for."""

    def __init__(self, weight: Tensor, bias: Tensor | None, rows_hint: int = ROWS_HINT, keep_weight: bool = False,
                 kernel: str | None = None):
        super().__init__()
        self.kernel = _check_kernel(kernel)
        self.out_features, self.in_features = weight.shape
        plain = weight.detach().float().contiguous()
        packed = to_panels(plain) if self.kernel == "panel" else torch.ops.mkldnn._reorder_linear_weight(plain, rows_hint)
        self.register_buffer("packed", packed)
        self.register_buffer("bias", None if bias is None else bias.detach().float().contiguous())
        self.register_buffer("weight", plain if keep_weight else None)

    def forward(self, x: Tensor) -> Tensor:
        rows = x.reshape(-1, self.in_features).contiguous()
        if self.weight is not None and rows.size(0) >= PLAIN_ROWS:
            y = F.linear(rows, self.weight, self.bias)
        elif self.kernel == "panel":
            y = torch.ops.seq2seq.panel_linear(rows, self.packed, self.bias, self.out_features)
        else:
            y = torch.ops.mkldnn._linear_pointwise(rows, self.packed, self.bias, "none", [], "")
        return y.reshape(*x.shape[:-1], self.out_features)


def _check_kernel(kernel: str | None) -> str:
    kernel = kernel or default_kernel()
    if kernel not in KERNELS:
        raise ValueError(f"kernel must be one of {', '.join(KERNELS)}, not {kernel!r}")
    if kernel == "panel" and not native.load():
        raise RuntimeError(f"the panel kernel is not available: {native.why_not}")
    if kernel == "onednn" and not available():
        raise RuntimeError("this PyTorch build has no oneDNN packed linear kernels")
    return kernel


def pack_for_cpu(model: Transformer, rows_hint: int = ROWS_HINT, keep_weights: bool = False,
                 kernel: str | None = None, huge_pages: bool = True) -> Transformer:
    """Swap the model's linear layers (and its tied output projection) for packed ones, in place;
    returns the model. kernel: "panel" or "onednn" (see the module docstring); None takes the
    native one where it builds. rows_hint: the rows oneDNN lays a product out for (see
    ROWS_HINT). keep_weights: keep every weight unpacked as well (twice the memory), for products
    of PLAIN_ROWS rows or more. huge_pages: move every weight onto transparent huge pages
    (seq2seq.speed.pages), where the OS offers them. Needs an fp32 model on CPU."""
    if next(model.parameters()).device.type != "cpu" or next(model.parameters()).dtype != torch.float32:
        raise ValueError("pack_for_cpu needs an fp32 model on CPU")
    kernel = _check_kernel(kernel)
    with torch.no_grad():
        for module in list(model.modules()):
            for name, child in list(module.named_children()):
                if isinstance(child, nn.Linear):
                    setattr(module, name, PackedLinear(child.weight, child.bias, rows_hint, keep_weights, kernel))
        if model.output_proj is None:  # tied: the projection reads the target embedding table
            model.output_proj = PackedLinear(model.tgt_embed.weight, None, rows_hint, keep_weights, kernel)
    if huge_pages:
        to_huge_pages(model)
    return model.eval()
