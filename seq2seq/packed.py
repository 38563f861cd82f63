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


class PackedLinear(nn.Module):
    """y = x W^T + b on a oneDNN-packed W (O, I); x (..., I) fp32 on CPU -> (..., O)."""

    def __init__(self, weight: Tensor, bias: Tensor | None, rows_hint: int = ROWS_HINT):
        super().__init__()
        self.out_features, self.in_features = weight.shape
        self.register_buffer("packed", torch.ops.mkldnn._reorder_linear_weight(weight.detach().float().contiguous(), rows_hint))
        self.register_buffer("bias", None if bias is None else bias.detach().float().contiguous())

    def forward(self, x: Tensor) -> Tensor:
        rows = x.reshape(-1, self.in_features).contiguous()
        y = torch.ops.mkldnn._linear_pointwise(rows, self.packed, self.bias, "none", [], "")
        return y.reshape(*x.shape[:-1], self.out_features)


def pack_for_cpu(model: Transformer, rows_hint: int = ROWS_HINT) -> Transformer:
    """Swap the model's linear layers (and its tied output projection) for packed ones, and give
    each attention one packed q/k/v projection for self-attention, in place; returns the model.
    rows_hint: the rows a product is laid out for (see ROWS_HINT). Needs an fp32 model on CPU,
    and oneDNN."""
    if not available():
        raise RuntimeError("this PyTorch build has no oneDNN packed linear kernels")
    if next(model.parameters()).device.type != "cpu" or next(model.parameters()).dtype != torch.float32:
        raise ValueError("pack_for_cpu needs an fp32 model on CPU")
    with torch.no_grad():
        for attn in [layer.self_attn for layer in [*model.encoder_layers, *model.decoder_layers]]:
            # q, k and v of self-attention in one product: one call instead of three.
            attn.qkv_proj = PackedLinear(torch.cat([attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight]),
                                         torch.cat([attn.q_proj.bias, attn.k_proj.bias, attn.v_proj.bias]), rows_hint)
        for module in list(model.modules()):
            for name, child in list(module.named_children()):
                if isinstance(child, nn.Linear):
                    setattr(module, name, PackedLinear(child.weight, child.bias, rows_hint))
        if model.output_proj is None:  # tied: the projection reads the target embedding table
            model.output_proj = PackedLinear(model.tgt_embed.weight, None, rows_hint)
    return model.eval()
