"""The decoder's inference cache: an explicit object passed to each decoding step.

Shapes: Y decoder layers, B sentences, G hypotheses per sentence (beams), N = B * G rows,
H heads, S source length, M preallocated target positions, P positions a step reads (the span),
Dh head dim.

- Self-attention K/V live in buffers preallocated for M positions and written by index at the
  current position, which is a device tensor: a step never reallocates and reads no host value,
  so it keeps its shapes and can be captured as a CUDA graph and replayed.
- Cross-attention K/V are projected once from the encoder memory when the cache is built. All
  beams of a sentence share them, so re-ranking beams never touches them.
- Re-ranking beams moves no self-attention K/V either. Each beam slot g of a sentence writes its
  own K/V, and an ancestor table records, for every row and position, which slot holds that
  position of the row's history; re-ranking gathers only that (N, M) table. A sentence's beams
  attend over the keys of all its slots, masked to each row's own history (the grouped path of
  MultiHeadAttention.attend): the keys a reordered cache would hold, without copying it.
- A step reads the first `span` positions of every slot: a host value the caller sets (the
  positions written so far, or a bucket of them when one captured graph serves several steps).
"""
from __future__ import annotations

import torch
from torch import Tensor


def sentence_rows(sentences: Tensor, beam_size: int) -> Tensor:
    """The rows (len(sentences) * G,) of the hypotheses of these sentences (indices into a batch)."""
    return (sentences.unsqueeze(1) * beam_size + torch.arange(beam_size, device=sentences.device)).view(-1)


class KVCache:
    """self_kv: per layer a K and a V buffer (B, H, M * G, Dh), position p of slot g at index
    p * G + g, so the first P positions of every slot are one slice; separate buffers so that a
    compiled step writes a position in place. cross_kv (Y, 2, B, H, S, Dh). src_mask (B, 1, 1, S).
    ancestors (N, M): the slot holding each position of each row's history."""

    def __init__(self, self_kv: list[tuple[Tensor, Tensor]], cross_kv: Tensor, src_mask: Tensor, beam_size: int):
        self.self_kv, self.cross_kv, self.src_mask, self.beam_size = self_kv, cross_kv, src_mask, beam_size
        device = cross_kv.device
        self.length = torch.zeros(1, dtype=torch.long, device=device)  # the next position to write
        self.key_positions = torch.arange(self.capacity, device=device)  # (M,)
        self.slots = torch.arange(beam_size, device=device)  # (G,)
        self.own_slot = self.slots.repeat(cross_kv.size(2)).unsqueeze(1)  # (N, 1): each row's slot
        self.ancestors = self.own_slot.expand(-1, self.capacity).clone()  # (N, M)
        self.span = self.capacity  # positions a step reads; it must cover the one it writes
        self.step_mask: Tensor | None = None  # built by layer 0 each step, read by the others

    @classmethod
    def allocate(cls, cross_kv: Tensor, src_mask: Tensor, beam_size: int, max_len: int,
                 zeroed: bool = True) -> "KVCache":
        """Self-attention buffers for max_len positions of beam_size rows per sentence. zeroed:
        filled with zeros, for steps that read positions not yet written (a span rounded up),
        where a masked key still meets its value in the product and garbage could be NaN."""
        y, _, b, h, _, dh = cross_kv.shape
        new = cross_kv.new_zeros if zeroed else cross_kv.new_empty
        buffer = lambda: new(b, h, max_len * beam_size, dh)  # noqa: E731
        return cls([(buffer(), buffer()) for _ in range(y)], cross_kv, src_mask, beam_size)

    @property
    def capacity(self) -> int:
        return self.self_kv[0][0].size(2) // self.beam_size

    @property
    def rows(self) -> int:
        return self.cross_kv.size(2) * self.beam_size

    def layer(self, index: int) -> "LayerCache":
        return LayerCache(self, index)

    def load(self, cross_kv: Tensor, src_mask: Tensor) -> None:
        """A new batch of the same shape in the same buffers (a captured graph reads these)."""
        self.cross_kv.copy_(cross_kv)
        self.src_mask.copy_(src_mask)
        self.reset()

    def reset(self) -> None:
        self.length.zero_()
        self.ancestors.copy_(self.own_slot.expand_as(self.ancestors))

    def keep(self, sentences: Tensor) -> None:
        """Shrink every buffer to these sentences (indices into the batch), for a batch whose
        finished sentences leave it. Buffers change size: not for a captured step."""
        rows = sentence_rows(sentences, self.beam_size)
        # Compacted in place, and only the positions written so far: the rest is never read
        # before a later step writes it.
        n, written = sentences.numel(), int(self.length) * self.beam_size
        for buffer in (b for kv in self.self_kv for b in kv):
            buffer[:n, :, :written] = buffer[:, :, :written].index_select(0, sentences)
        self.self_kv = [(k[:n], v[:n]) for k, v in self.self_kv]
        self.cross_kv = self.cross_kv.index_select(2, sentences)
        self.src_mask = self.src_mask.index_select(0, sentences)
        self.ancestors = self.ancestors.index_select(0, rows)
        self.own_slot = self.own_slot[: rows.numel()]

    def first_slot(self) -> "KVCache":
        """For a batch's first step on one row per sentence: a cache of one slot over the same
        buffers, whose position 0 is slot 0's (index 0 in either layout). Only before anything
        is written; afterwards the caller calls share_first_position and advance."""
        view = KVCache([(k[:, :, : self.capacity], v[:, :, : self.capacity]) for k, v in self.self_kv],
                       self.cross_kv, self.src_mask, 1)
        view.span = 1
        return view

    def share_first_position(self) -> None:
        """Slot 0's position 0 copied to every slot, as if each row had computed it."""
        for k, v in self.self_kv:
            k[:, :, 1 : self.beam_size] = k[:, :, :1]
            v[:, :, 1 : self.beam_size] = v[:, :, :1]

    def advance(self) -> None:
        """One more position written; called once a step, after every layer wrote."""
        self.length.add_(1)

    def reorder(self, rows: Tensor) -> None:
        """Row i continues old row rows[i] (N,), a row of the same sentence: it takes over that
        row's history up to the current length and writes later positions into its own slot."""
        inherited = self.ancestors.index_select(0, rows)
        self.ancestors.copy_(torch.where(self.key_positions < self.length, inherited, self.own_slot))

    def build_mask(self) -> Tensor:
        """(B, 1, G, P * G), True where a row may attend: its history's slot at every position
        written so far, this step's included. One row per sentence: (1, 1, 1, P)."""
        written = self.key_positions[: self.span] <= self.length  # (P,)
        if self.beam_size == 1:
            return written[None, None, None, :]
        g, p = self.beam_size, self.span
        own = self.ancestors[:, :p].reshape(-1, g, 1, p, 1) == self.slots  # (B, G, 1, P, G)
        mask = own & written[None, None, None, :, None]
        return mask.view(-1, 1, g, p * g)


class LayerCache:
    """One decoder layer's view of the cache: where its K and V come from."""

    def __init__(self, cache: KVCache, index: int):
        self.cache = cache
        self.index = index

    @property
    def cross_kv(self) -> tuple[Tensor, Tensor]:
        kv = self.cache.cross_kv[self.index]
        return kv[0], kv[1]  # each (B, H, S, Dh)

    def append(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Write the newest position's k/v (N, H, 1, Dh), each row into its own slot; return the
        first `span` positions of every slot, each (B, H, P * G, Dh). The caller keeps the
        position below the span: a device-side position cannot be checked without a sync."""
        c = self.cache
        g, (n, h, _, dh) = c.beam_size, k.shape
        index = c.length * g + c.slots  # (G,): where each slot's position goes
        keys, values = c.self_kv[self.index]
        # Indexed assignment: a copy of the G new positions, at a position held on the device.
        keys[:, :, index] = k.view(n // g, g, h, dh).transpose(1, 2)  # (B, H, G, Dh)
        values[:, :, index] = v.view(n // g, g, h, dh).transpose(1, 2)
        return keys[:, :, : c.span * g], values[:, :, : c.span * g]

    def self_mask(self) -> Tensor:
        """Which keys each row sees (KVCache.build_mask); built once a step, by layer 0."""
        if self.index == 0:
            self.cache.step_mask = self.cache.build_mask()
        return self.cache.step_mask
