"""Token-budget batches: sentences of similar length together, so little of a batch is padding.

A batch's cost is its rows times its longest side (source or target, BOS/EOS included):
the padded tensor size the model sees. Plans are deterministic for a (seed, epoch).
"""
from __future__ import annotations

import torch


def batch_plan(src_lens: list[int], tgt_lens: list[int], max_tokens: int, seed: int, epoch: int, shuffle: bool = True) -> list[list[int]]:
    """Partition sentence indices into batches of at most max_tokens padded tokens.

    Sentences are ordered by length (ties broken randomly when shuffling), cut greedily into
    batches, and the batches shuffled. Every index appears in exactly one batch; a sentence
    longer than max_tokens gets a batch of its own.
    """
    n = len(src_lens)
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    tiebreak = torch.randperm(n, generator=g).tolist() if shuffle else list(range(n))
    order = sorted(range(n), key=lambda i: (max(src_lens[i], tgt_lens[i]), src_lens[i], tiebreak[i]))
    batches, current, longest = [], [], 0
    for i in order:
        width = max(longest, src_lens[i], tgt_lens[i])
        if current and width * (len(current) + 1) > max_tokens:
            batches.append(current)
            current, width = [], max(src_lens[i], tgt_lens[i])
        current.append(i)
        longest = width
    if current:
        batches.append(current)
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
