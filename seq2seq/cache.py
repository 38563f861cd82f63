"""The decoder's inference cache: an explicit object passed to each decoding step.

Shapes: Y decoder layers, B sentences, G hypotheses per sentence (beams), N = B * G rows,
H heads, S source length, M preallocated target positions, Dh head dim.

Self-attention K/V live in one preallocated buffer written by slice at the current position,
so a step never reallocates and the buffer shape stays fixed. Cross-attention K/V are
projected once from the encoder memory when the cache is built; all beams of a sentence share
them, so reordering beams never touches them and only dropping sentences shrinks them.
"""
from __future__ import annotations

import torch
from torch import Tensor


def sentence_rows(sentences: Tensor, beam_size: int) -> Tensor:
    """Row indices (len(sentences) * G,) of the hypotheses of the given sentences."""
    offsets = torch.arange(beam_size, device=sentences.device)
    return (sentences.unsqueeze(1) * beam_size + offsets).reshape(-1)


class DecoderCache:
    def __init__(self, self_kv: Tensor, cross_kv: Tensor, src_mask: Tensor):
        self.self_kv = self_kv  # (Y, 2, N, H, M, Dh)
        self.cross_kv = cross_kv  # (Y, 2, B, H, S, Dh)
        self.src_mask = src_mask  # (B, 1, 1, S), True at real source tokens
        self.length = 0  # target positions written so far

    @classmethod
    def allocate(cls, cross_kv: Tensor, src_mask: Tensor, beam_size: int, max_len: int) -> "DecoderCache":
        """Empty self-attention buffers for max_len positions, beam_size rows per sentence."""
        y, _, b, h, _, dh = cross_kv.shape
        self_kv = cross_kv.new_empty(y, 2, b * beam_size, h, max_len, dh)
        return cls(self_kv, cross_kv, src_mask)

    @property
    def rows(self) -> int:
        return self.self_kv.size(2)

    @property
    def beam_size(self) -> int:
        return self.rows // self.cross_kv.size(2)

    @property
    def capacity(self) -> int:
        return self.self_kv.size(4)

    def layer(self, index: int) -> "LayerCache":
        return LayerCache(self, index)

    def advance(self, n: int) -> None:
        """Mark n more positions as written; called once per step after every layer wrote."""
        self.length += n

    def reorder(self, rows: Tensor) -> None:
        """Row i of every self-attention buffer becomes old row rows[i] (beam re-ranking).

        Only the written prefix moves. Cross-attention K/V are shared by a sentence's beams and
        rows never leave their sentence, so they stay as they are.
        """
        if rows.numel() != self.rows:
            raise ValueError(f"reorder needs {self.rows} row indices, got {rows.numel()}")
        t = self.length
        for layer_kv in self.self_kv:  # one layer at a time: the gather's copy stays 1/Y of the cache
            layer_kv[..., :t, :] = layer_kv[:, rows, :, :t]

    def keep_sentences(self, keep: Tensor) -> None:
        """Shrink every tensor to the sentences in keep (indices into the current batch)."""
        self.self_kv = self.self_kv.index_select(2, sentence_rows(keep, self.beam_size))
        self.cross_kv = self.cross_kv.index_select(2, keep)
        self.src_mask = self.src_mask.index_select(0, keep)


class LayerCache:
    """One decoder layer's view of the cache."""

    def __init__(self, cache: DecoderCache, index: int):
        self.cache = cache
        self.index = index

    @property
    def cross_kv(self) -> tuple[Tensor, Tensor]:
        kv = self.cache.cross_kv[self.index]
        return kv[0], kv[1]  # each (B, H, S, Dh)

    def append(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Write the newest T positions' k/v (N, H, T, Dh); return the whole prefix's k/v."""
        start, end = self.cache.length, self.cache.length + k.size(2)
        if end > self.cache.capacity:
            raise ValueError(f"decoder cache holds {self.cache.capacity} positions, step needs {end}")
        kv = self.cache.self_kv[self.index]
        kv[0, :, :, start:end] = k
        kv[1, :, :, start:end] = v
        return kv[0, :, :, :end], kv[1, :, :, :end]  # (N, H, t + T, Dh)
