"""The speed layer: how a model runs faster on a device, as plug-ins that the model, attention,
cache and search code neither import nor branch on.

- packed.py: on CPU in fp32, every linear layer swapped for one that multiplies a weight laid
  out once for oneDNN's packed product.
- attention.py: on CPU, attention by batched products instead of the flash kernel.
- int8.py: on CPU, every linear layer dynamically quantized to int8 (--dtype int8).
- graphs.py: a decoding step captured once as a CUDA graph and replayed (infer.engine).
- dropout.py: on CPU, training's dropout masks drawn four elements per random word.
- projections.py: on CUDA, training's attention input projections as one product each.
- memory.py: on CPU, memory a step frees kept for the next step instead of given back to the
  kernel and faulted in again.
- training_attention(): on CUDA, the attention kernels training runs with.
- compiled(): a training forward-and-loss compiled by torch.compile (train.compile=true).
"""
from __future__ import annotations

import contextlib
import functools

import torch
from torch import nn


def untie_output(model: nn.Module) -> nn.Module:
    """Give a Transformer with a tied output projection an explicit nn.Linear reading the target
    embedding table (the same parameter), so that a plug-in that swaps linear layers swaps the
    projection too; in place, for inference only. Returns the model."""
    if model.output_proj is None:
        model.output_proj = nn.Linear(model.config.d_model, model.config.tgt_vocab_size, bias=False,
                                      device=model.tgt_embed.weight.device, dtype=model.tgt_embed.weight.dtype)
        model.output_proj.weight = model.tgt_embed.weight
    return model


def for_inference(model: nn.Module, pack: bool = True) -> nn.Module:
    """The model (a Transformer or an Ensemble of them, ours alone: changed in place) made
    faster for decoding where it sits: on CPU, attention by batched products
    (seq2seq.speed.attention), freed memory kept for reuse (seq2seq.speed.memory: process-wide),
    and in fp32 its products packed (seq2seq.speed.packed) unless pack is False (int8 has its
    own)."""
    from seq2seq.speed import packed
    from seq2seq.speed.attention import use_products_attention
    from seq2seq.speed.memory import keep_freed_memory

    first = next(model.parameters())
    if first.device.type != "cpu":
        return model
    keep_freed_memory()
    use_products_attention(model)
    if not pack or first.dtype != torch.float32 or not packed.available():
        return model
    for member in getattr(model, "members", [model]):
        packed.pack_for_cpu(member)
    return model


def for_training(model: nn.Module) -> nn.Module:
    """The model (changed in place; checkpoints are unchanged) made faster to train where it
    sits: on CPU, its dropout drawn by seq2seq.speed.dropout and freed memory kept for reuse
    (seq2seq.speed.memory: process-wide); elsewhere (CUDA), attention's input projections as
    one product each (seq2seq.speed.projections: eager transformer-base training on an H200
    ran 1.09x faster, docs/RESULTS.md; on our CPU the two were level)."""
    from seq2seq.speed.dropout import swap_dropout
    from seq2seq.speed.memory import keep_freed_memory
    from seq2seq.speed.projections import fuse_projections

    if next(model.parameters()).device.type != "cpu":
        return fuse_projections(model)
    keep_freed_memory()
    return swap_dropout(model)


def training_attention(device: torch.device):
    """A context for training steps: on CUDA, attention over padded batches by PyTorch's
    memory-efficient kernel (or flash where there is no mask) rather than cuDNN's, which
    PyTorch prefers on Hopper but which ran a transformer-base update 1.2x slower on an H200
    with our short, padded sentences (docs/RESULTS.md). Elsewhere, nothing changes."""
    if device.type != "cuda":
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH])


def compiled(fn, backend="inductor"):
    """fn (a training step's forward and loss) compiled by torch.compile, forward and backward,
    with dynamic shapes: token-sized batches come in many (sentences, length) shapes, and one
    graph serves them all. Inductor fuses what eager runs as separate kernels (layer norms,
    dropout, residual adds, bias and activation, casts, the loss over the vocabulary); the
    figures are in docs/RESULTS.md. The first updates take minutes to compile. backend: another
    torch.compile backend (tests capture the graphs without generating code).

    Every size gets its own symbol: by default PyTorch gives sizes that happen to be equal in
    the first batch one symbol (sources and targets both 26 wide, say) and compiles everything
    again at the first batch where they differ, which cost a second full compile of the
    transformer-base step on an H200."""
    from torch.fx.experimental import _config as shapes_config

    step = torch.compile(fn, dynamic=True, backend=backend)

    @functools.wraps(fn)
    def run(*args, **kwargs):
        with shapes_config.patch(use_duck_shape=False):  # read when a graph is traced
            return step(*args, **kwargs)

    return run
