"""CPU inference on weights prepacked for oneDNN.

Decoding a sentence is bound by reading the weights once per token. On the AMD EPYC we test on,
PyTorch's default fp32 path (MKL) streams a 32k x 512 output projection at about 13 GB/s for one
row, and oneDNN at about 30 GB/s (bench/decode_cpu.py has the end-to-end figures). pack_for_cpu
swaps every linear layer of a model for one that calls oneDNN on a weight reordered once, ahead
of time. Inference only: the packed weight has no gradient.

Shapes: M rows (tokens), I input features, O output features.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from seq2seq.model import Transformer


def available() -> bool:
    """oneDNN is built in and has the packed-linear kernels (every x86 PyTorch build since 2.0)."""
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


# The row count oneDNN lays the weights out for. Laid out for 1 row, products of 4 and 32 rows
# ran 1.15-1.7x slower than laid out for 32, and 1-row products gained at most 13% (the 32k x 512
# output projection; the others within 7%). End to end, batch 1 greedy stayed level and batch 1
# beam 4 and batch 32 greedy gained 42% and 12% (bench/cpu_linears.py, 2-core AMD EPYC).
ROWS_HINT = 32


# Rows at most this many, under torch.compile, are multiplied as one fused reduction per row over
# a plain copy of the weight (PackedLinear(keep_weight=True)): inductor streams the weight once for
# all of them, near the memory bandwidth. A batch-1 step's 37 products at 4 rows took 5.7-5.9 ms
# so, 9.7-9.8 ms packed, and a plain sum over the same weights 5.2 ms (a scratch measurement on
# the 2-core AMD EPYC). More rows go to oneDNN's blocked product, which reuses each loaded weight.
REDUCE_ROWS = 4

# Rows at least this many (the encoder of a batch: sentences x source length) are multiplied by
# PyTorch's default product (MKL) on the plain weight, where one is kept: from 512 rows it ran
# 1.11-1.21x faster than oneDNN on weights laid out for ROWS_HINT rows, at 128-256 rows level
# (the encoder's products, 2-core AMD EPYC, a scratch measurement).
PLAIN_ROWS = 512


# Ops defined with torch.library's define and impl, not custom_op: a call costs about 6 us over
# the kernel, against 16 us through custom_op's wrappers (a scratch timing, 2-core AMD EPYC),
# and a batch-32 step makes 37 such calls.
torch.library.define("seq2seq::packed_linear", "(Tensor rows, Tensor packed, Tensor? bias, SymInt out_features) -> Tensor")
torch.library.define("seq2seq::materialize", "(Tensor x) -> Tensor")


@torch.library.impl("seq2seq::packed_linear", "CompositeExplicitAutograd")
def _packed_linear(rows: Tensor, packed: Tensor, bias: Tensor | None, out_features: int) -> Tensor:
    """oneDNN's packed product as one opaque call to torch.compile, which cannot trace the
    packed weight itself. rows (M, I) -> (M, O)."""
    return torch.ops.mkldnn._linear_pointwise(rows, packed, bias, "none", [], "")


@torch.library.register_fake("seq2seq::packed_linear")
def _(rows, packed, bias, out_features):
    return rows.new_empty(rows.size(0), out_features)


@torch.library.impl("seq2seq::materialize", "CompositeExplicitAutograd")
def _materialize(x: Tensor) -> Tensor:
    """A copy torch.compile cannot see through: the reductions below then read x from memory
    instead of recomputing x's producer (a layer norm, say) for every output feature of every
    row (beam 4 at batch 1: 85 tokens/s with it, 70 without)."""
    return x.clone()


@torch.library.register_fake("seq2seq::materialize")
def _(x):
    return torch.empty_like(x)


class PackedLinear(nn.Module):
    """y = x W^T + b on a oneDNN-packed W (O, I); x (..., I) fp32 on CPU -> (..., O).
    keep_weight: also keep W unpacked, for the few-row products of compiled decoding and the
    many-row products of a batch's encoder (see REDUCE_ROWS and PLAIN_ROWS)."""

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
        elif not torch.compiler.is_compiling():
            y = torch.ops.mkldnn._linear_pointwise(rows, self.packed, self.bias, "none", [], "")
        elif self.weight is not None and rows.size(0) <= REDUCE_ROWS:
            if rows.size(0) > 1:  # one row: recomputing the producer per output costs less than a copy
                rows = torch.ops.seq2seq.materialize(rows)
            y = torch.stack([(self.weight * row).sum(-1) for row in rows.unbind(0)])
            y = y if self.bias is None else y + self.bias
        else:
            y = torch.ops.seq2seq.packed_linear(rows, self.packed, self.bias, self.out_features)
        return y.reshape(*x.shape[:-1], self.out_features)


def pack_for_cpu(model: Transformer, rows_hint: int = ROWS_HINT, keep_weights: bool = False) -> Transformer:
    """Swap the model's linear layers (and its tied output projection) for packed ones, and give
    each attention one packed q/k/v projection for self-attention, in place; returns the model.
    rows_hint: the rows a product is laid out for (see ROWS_HINT). keep_weights: keep every
    weight unpacked as well (twice the memory), for infer.graphed's compiled searches and for
    products of PLAIN_ROWS rows or more. Needs an fp32 model on CPU, and oneDNN."""
    if not available():
        raise RuntimeError("this PyTorch build has no oneDNN packed linear kernels")
    if next(model.parameters()).device.type != "cpu" or next(model.parameters()).dtype != torch.float32:
        raise ValueError("pack_for_cpu needs an fp32 model on CPU")
    with torch.no_grad():
        for attn in [layer.self_attn for layer in [*model.encoder_layers, *model.decoder_layers]]:
            # q, k and v of self-attention in one product: one call instead of three.
            attn.qkv_proj = PackedLinear(torch.cat([attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight]),
                                         torch.cat([attn.q_proj.bias, attn.k_proj.bias, attn.v_proj.bias]), rows_hint, keep_weights)
        for module in list(model.modules()):
            for name, child in list(module.named_children()):
                if isinstance(child, nn.Linear):
                    setattr(module, name, PackedLinear(child.weight, child.bias, rows_hint, keep_weights))
        if model.output_proj is None:  # tied: the projection reads the target embedding table
            model.output_proj = PackedLinear(model.tgt_embed.weight, None, rows_hint, keep_weights)
    return model.eval()
