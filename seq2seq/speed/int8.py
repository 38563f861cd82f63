"""CPU inference with int8 weights: PyTorch's dynamic quantization of the linear layers.

quantize_int8 swaps every linear layer of a model (and its tied output projection) for
PyTorch's dynamically quantized one (fbgemm): the weight is stored as int8 with one scale per
output row, and each product quantizes its input rows to 8 bits on the fly, multiplies in
integers and returns fp32. Embeddings, layer norms and attention stay fp32, as CTranslate2's
int8 does. On our 2-core AVX2 EPYC, seq2seq-translate --dtype int8 translated Multi30k's test
set 1.27x (beam 5) and 1.05x (greedy) as fast as the packed fp32 products (seq2seq.speed.packed),
within 0.14 BLEU (docs/RESULTS.md). Inference only.

torch.ao.quantization is marked deprecated in favour of torchao, but torchao 0.18's eager int8
path ran 10-20x slower than fp32 on this CPU; the torch.ao kernels are the ones that pay here,
so their deprecation notices are silenced where we call them.
"""
from __future__ import annotations

import warnings

import torch
from torch import nn

from seq2seq.model import Transformer
from seq2seq.speed import untie_output


def available() -> bool:
    """PyTorch was built with its x86 quantized kernels (fbgemm)."""
    return "fbgemm" in torch.backends.quantized.supported_engines


def quantize_int8(model: Transformer) -> Transformer:
    """Swap the model's linear layers (and its tied output projection) for dynamically
    quantized int8 ones, in place; returns the model. Needs an fp32 model on CPU."""
    first = next(model.parameters())
    if first.device.type != "cpu" or first.dtype != torch.float32:
        raise ValueError("int8 needs an fp32 model on CPU")
    if not available():
        raise RuntimeError("this PyTorch build has no fbgemm quantized kernels (int8 on CPU)")
    torch.backends.quantized.engine = "fbgemm"
    untie_output(model)  # the tied projection becomes a linear layer, quantized below like the rest
    with torch.no_grad(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*torch\.ao\.quantization is deprecated")
        warnings.filterwarnings("ignore", message=r".*quantized tensor creation functions")
        torch.ao.quantization.quantize_dynamic(model.eval(), {nn.Linear}, dtype=torch.qint8, inplace=True)
    return model
