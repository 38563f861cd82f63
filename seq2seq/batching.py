"""Token-budget batches: sentences of similar length together, so little of a batch is padding.

A batch's cost is its rows times its longest side (source or target, BOS/EOS included):
the padded tensor size the model sees. Plans are deterministic for a (seed, epoch).
"""
from __future__ import annotations

import bisect

import torch


def batch_plan(src_lens, tgt_lens, max_tokens: int, seed: int, epoch: int, shuffle: bool = True) -> list[list[int]]:
    """Partition sentence indices into batches of at most max_tokens padded tokens.

    Sentences are ordered by length (ties broken randomly when shuffling), cut greedily into
    batches, and the batches shuffled. Every index appears in exactly one batch; a sentence
    longer than max_tokens gets a batch of its own. Lengths are sequences or arrays of ints;
    the work is array operations and one bisection per batch, so millions of sentences plan
    in seconds.
    """
    src = torch.as_tensor(src_lens, dtype=torch.long)
    tgt = torch.as_tensor(tgt_lens, dtype=torch.long)
    n = src.numel()
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    tiebreak = torch.randperm(n, generator=g) if shuffle else torch.arange(n)
    width = torch.maximum(src, tgt)
    # Sort by (width, source length, tiebreak): stable sorts from the last key to the first.
    order = torch.argsort(tiebreak, stable=True)
    order = order[torch.argsort(src[order], stable=True)]
    order = order[torch.argsort(width[order], stable=True)]
    widths = width[order].tolist()
    # Widths ascend, so a batch from `start` costs widths[end - 1] * (end - start), which grows
    # with end: its last sentence is the last end that fits.
    bounds = [0]
    while bounds[-1] < n:
        start = bounds[-1]
        fits = bisect.bisect_right(range(start + 1, n + 1), max_tokens, key=lambda end: widths[end - 1] * (end - start))
        bounds.append(start + max(fits, 1))  # a sentence alone is a batch, however long
    flat = order.tolist()
    batches = [flat[a:b] for a, b in zip(bounds, bounds[1:])]
    if shuffle:
        batches = [batches[j] for j in torch.randperm(len(batches), generator=g).tolist()]
    return batches


def pad(seqs: list[list[int]], pad_id: int) -> torch.Tensor:
    """Right-pad id lists into a (B, L) long tensor."""
    width = max(len(s) for s in seqs)
    out = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    for row, s in enumerate(seqs):
        out[row, : len(s)] = torch.tensor(s, dtype=torch.long)
    return out
