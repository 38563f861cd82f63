"""The speed layer: how a model runs faster on a device, as plug-ins that the model, attention,
cache and search code neither import nor branch on.

- packed.py: on CPU in fp32, every linear layer swapped for one that multiplies a weight laid
  out once for oneDNN's packed product.
- graphs.py: a decoding step captured once as a CUDA graph and replayed (infer.engine).
- dropout.py: on CPU, training's dropout masks drawn four elements per random word.
"""
from __future__ import annotations

import torch
from torch import nn


def for_inference(model: nn.Module) -> nn.Module:
    """The model (a Transformer or an Ensemble of them, ours alone: changed in place) made
    faster for decoding where it sits: on CPU in fp32, its products packed (seq2seq.speed.packed)."""
    from seq2seq.speed import packed

    first = next(model.parameters())
    if first.device.type != "cpu" or first.dtype != torch.float32 or not packed.available():
        return model
    for member in getattr(model, "members", [model]):
        packed.pack_for_cpu(member)
    return model


def for_training(model: nn.Module) -> nn.Module:
    """The model (changed in place) made faster to train where it sits: on CPU, its dropout
    drawn by seq2seq.speed.dropout. Checkpoints are unchanged: dropout holds no weights."""
    from seq2seq.speed.dropout import swap_dropout

    if next(model.parameters()).device.type != "cpu":
        return model
    return swap_dropout(model)
