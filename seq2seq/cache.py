"""The decoder's inference cache: an explicit object passed to each decoding step.

Shapes: Y decoder layers, B sentences, G hypotheses per sentence (beams), N = B * G rows,
H heads, S source length, M preallocated target positions, Dh head dim.

Self-attention K/V live in one preallocated buffer written by slice at the current position,
so a step never reallocates and the buffer shape stays fixed. Cross-attention K/V are
projected once from the encoder memory when the cache is built; all beams of a sentence share
them, so reordering beams never touches them and only dropping sentences shrinks them.

Beam re-ranking moves no K/V either. Each beam slot g of a sentence writes its own K/V, and an
ancestor table records, for every row and position, which slot holds that position of the row's
history; re-ranking gathers only that table. A sentence's beams attend over the keys of all its
slots, masked to each row's own history (the grouped path of MultiHeadAttention.attend): the
same keys a reordered cache would hold, without copying the cache every step.
"""
from __future__ import annotations

import torch
from torch import Tensor


def sentence_rows(sentences: Tensor, beam_size: int) -> Tensor:
    """Row indices (len(sentences) * G,) of the hypotheses of the given sentences."""
    offsets = torch.arange(beam_size, device=sentences.device)
    return (sentences.unsqueeze(1) * beam_size + offsets).reshape(-1)


class DecoderCache:
    """self_kv (Y, 2, B, H, M * G, Dh): position p of slot g at index p * G + g, so the written
    prefix of every slot is one slice. ancestors (N, M): the slot (0..G-1) holding each position
    of each row's history; positions not written yet hold the row's own slot."""

    def __init__(self, self_kv: Tensor, cross_kv: Tensor, src_mask: Tensor, beam_size: int = 1):
        self.self_kv = self_kv  # (Y, 2, B, H, M * G, Dh)
        self.cross_kv = cross_kv  # (Y, 2, B, H, S, Dh)
        self.src_mask = src_mask  # (B, 1, 1, S), True at real source tokens
        self.beam_size = beam_size
        self.length = 0  # target positions written so far
        own_slot = torch.arange(beam_size, device=self_kv.device).repeat(cross_kv.size(2)).unsqueeze(1)
        self.ancestors = own_slot.expand(-1, self.capacity).clone()  # (N, M)
        self.step_mask: Tensor | None = None  # the beams' history mask, built once a step

    @classmethod
    def allocate(cls, cross_kv: Tensor, src_mask: Tensor, beam_size: int, max_len: int) -> "DecoderCache":
        """Empty self-attention buffers for max_len positions, beam_size rows per sentence."""
        y, _, b, h, _, dh = cross_kv.shape
        self_kv = cross_kv.new_empty(y, 2, b, h, max_len * beam_size, dh)
        return cls(self_kv, cross_kv, src_mask, beam_size)

    @property
    def rows(self) -> int:
        return self.cross_kv.size(2) * self.beam_size

    @property
    def capacity(self) -> int:
        return self.self_kv.size(4) // self.beam_size

    def layer(self, index: int) -> "LayerCache":
        return LayerCache(self, index)

    def advance(self, n: int) -> None:
        """Mark n more positions as written; called once per step after every layer wrote."""
        self.length += n
        self.step_mask = None

    def reorder(self, rows: Tensor) -> None:
        """Row i continues old row rows[i], which must be a row of the same sentence (beam
        re-ranking): row i takes over that row's history. Only the (N, t) prefix of the
        ancestor table moves; K/V and cross-attention K/V stay where they are."""
        if rows.numel() != self.rows:
            raise ValueError(f"reorder needs {self.rows} row indices, got {rows.numel()}")
        if self.beam_size > 1:
            t = self.length
            self.ancestors[:, :t] = self.ancestors[rows, :t]
            self.step_mask = None

    def keep_sentences(self, keep: Tensor) -> None:
        """Shrink every tensor to the sentences in keep (indices into the current batch)."""
        self.self_kv = self.self_kv.index_select(2, keep)
        self.ancestors = self.ancestors.index_select(0, sentence_rows(keep, self.beam_size))
        self.cross_kv = self.cross_kv.index_select(2, keep)
        self.src_mask = self.src_mask.index_select(0, keep)
        self.step_mask = None

    def history_mask(self, t_new: int) -> Tensor:
        """(B, 1, G * T, (t + T) * G): which written keys each new position of each row may see,
        its own history's slot at every earlier position and itself, nothing later. T = t_new."""
        t_all = self.length + t_new
        device = self.ancestors.device
        causal = torch.arange(t_all, device=device) <= torch.arange(self.length, t_all, device=device).unsqueeze(1)
        return slot_mask(self.ancestors[:, :t_all], self.beam_size, causal)


def slot_mask(ancestors: Tensor, beam_size: int, visible: Tensor) -> Tensor:
    """(B, 1, G * T, P * G) over position-major keys (position p of slot g at p * G + g): each
    row's T new positions may see, at each position p that visible (T, P) allows, the slot that
    ancestors (N, P) says holds p of the row's history."""
    g, p = beam_size, ancestors.size(1)
    own = ancestors.reshape(-1, g, 1, p, 1) == torch.arange(g, device=ancestors.device)  # (B, G, 1, P, G)
    mask = own & visible[None, None, :, :, None]  # (B, G, T, P, G)
    return mask.view(-1, 1, g * visible.size(0), p * g)


class LayerCache:
    """One decoder layer's view of the cache."""

    def __init__(self, cache: "DecoderCache | StaticCache", index: int):
        self.cache = cache
        self.index = index

    @property
    def cross_kv(self) -> tuple[Tensor, Tensor]:
        kv = self.cache.cross_kv[self.index]
        return kv[0], kv[1]  # each (B, H, S, Dh)

    def append(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Write the newest T positions' k/v (N, H, T, Dh), each row into its own slot; return
        the written keys and values of every slot, (B, H, (t + T) * G, Dh)."""
        c = self.cache
        start, end = c.length, c.length + k.size(2)
        if end > c.capacity:
            raise ValueError(f"decoder cache holds {c.capacity} positions, step needs {end}")
        g, (n, h, t_new, dh) = c.beam_size, k.shape
        kv = c.self_kv[self.index]
        for buffer, new in zip(kv, (k, v)):  # (N, H, T, Dh) -> (B, H, T * G, Dh), position-major
            buffer[:, :, start * g : end * g] = new.view(n // g, g, h, t_new, dh).permute(0, 2, 3, 1, 4).reshape(n // g, h, t_new * g, dh)
        return kv[0, :, :, : end * g], kv[1, :, :, : end * g]

    def self_mask(self, t_new: int) -> Tensor | None:
        """Which keys each new position may see; called after append. One row per sentence:
        all of them for one new token; for several, the prefix and themselves. Beams: their
        own histories (DecoderCache.history_mask), built by the first layer of the step."""
        c = self.cache
        if c.beam_size > 1:
            if c.step_mask is None:
                c.step_mask = c.history_mask(t_new)
            return c.step_mask
        if t_new == 1:
            return None
        t_all = c.length + t_new
        return torch.ones(t_new, t_all, dtype=torch.bool, device=c.self_kv.device).tril(t_all - t_new)


class StaticCache:
    """A decoder cache whose every step has the same shapes and reads no host value, so the step
    can be captured once as a CUDA graph and replayed: the position is a device tensor, new K/V
    are written at it by index, and self-attention reads the first `span` positions under a mask.
    `span` is a host value fixed per captured graph: a search captures one graph per length
    bucket, so attention reads about the written prefix rather than the whole buffer.

    Beam re-ranking moves no K/V. Each row (beam slot g of a sentence) writes its K/V into its own
    slot, and `ancestors` records, for every row and position, which slot of its sentence holds
    that position of the row's history; re-ranking gathers only that (N, M) table. The beams of
    a sentence attend over all G * M keys of the sentence (the grouped path of
    MultiHeadAttention.attend), masked to each row's own history: the same keys as a reordered
    cache, without copying the cache each step.

    self_kv: per layer, a K and a V buffer (B, H, M * G, Dh), each its own allocation: slot g's
    position p at index p * G + g, as in DecoderCache, so the first `span` positions of every
    slot are one slice. Separate buffers let torch.compile write a position in place; a write
    into a view of one shared buffer makes it rebuild that whole buffer every layer.
    values_last: V is held as (B, H, Dh, M * G) instead, and append returns a transposed view of
    it. Compiled on CPU, attention's weighted sum over positions (seq2seq.attention's reduction)
    then reads each value dimension's positions contiguously: 2.3 against 3.2 ms per layer at
    batch 32 beam 4 over 128 keys (a scratch timing, 2-core AMD EPYC).
    ancestors (N, M). cross_kv (Y, 2, B, H, S, Dh) as in DecoderCache.
    """

    def __init__(self, self_kv: list[tuple[Tensor, Tensor]], cross_kv: Tensor, src_mask: Tensor, beam_size: int,
                 values_last: bool = False):
        self.self_kv, self.cross_kv, self.src_mask, self.beam_size = self_kv, cross_kv, src_mask, beam_size
        self.values_last = values_last
        device = cross_kv.device
        self.length = torch.zeros(1, dtype=torch.long, device=device)  # next position to write
        self.key_positions = torch.arange(self.capacity, device=device)  # (M,)
        self.slots = torch.arange(beam_size, device=device)  # (G,)
        rows = cross_kv.size(2) * beam_size
        self.own_slot = self.slots.repeat(rows // beam_size).unsqueeze(1)  # (N, 1): row i's slot
        self.ancestors = self.own_slot.expand(rows, self.capacity).clone()  # (N, M)
        self.span = self.capacity  # positions attention reads; a step must have length < span
        self.step_mask: Tensor | None = None  # built by layer 0 each step, shared by the others

    @classmethod
    def allocate(cls, cross_kv: Tensor, src_mask: Tensor, max_len: int, beam_size: int = 1,
                 values_last: bool = False) -> "StaticCache":
        y, _, b, h, _, dh = cross_kv.shape
        keys = lambda: cross_kv.new_zeros(b, h, beam_size * max_len, dh)  # noqa: E731
        values = lambda: cross_kv.new_zeros(b, h, dh, beam_size * max_len) if values_last else keys()  # noqa: E731
        return cls([(keys(), values()) for _ in range(y)], cross_kv, src_mask, beam_size, values_last)

    @property
    def capacity(self) -> int:
        return self.self_kv[0][0].size(2) // self.beam_size  # keys: (B, H, M * G, Dh) either way

    def load(self, cross_kv: Tensor, src_mask: Tensor) -> None:
        """Start a new batch of the same shape in the same buffers (a captured graph reads them)."""
        self.cross_kv.copy_(cross_kv)
        self.src_mask.copy_(src_mask)
        self.reset()

    def reset(self) -> None:
        self.length.zero_()
        self.ancestors.copy_(self.own_slot.expand_as(self.ancestors))

    def layer(self, index: int) -> "StaticLayerCache":
        return StaticLayerCache(self, index)

    def first_slots(self) -> "StaticCache":
        """For the first position only: a cache of one row per sentence that writes slot 0 and
        reads it alone, on this cache's buffers and length. Every beam of a sentence would
        compute the same first step; after it, reorder makes slot 0 every row's ancestor there."""
        view = StaticCache(self.self_kv, self.cross_kv, self.src_mask, 1, self.values_last)
        view.length = self.length  # shared: the step advances both
        view.span = 1  # position 0 of slot 0 is index 0 (p * G + g) in either view
        return view

    def advance(self, n: int) -> None:
        self.length.add_(n)

    def reorder(self, rows: Tensor) -> None:
        """Row i continues old row rows[i] (a row of the same sentence): it takes over that row's
        history up to the current length and writes later positions into its own slot."""
        inherited = self.ancestors.index_select(0, rows)
        self.ancestors.copy_(torch.where(self.key_positions < self.length, inherited, self.own_slot))

    def build_mask(self) -> Tensor:
        """(B, 1, G, P * G) for P = span, True where a row may attend: its history's slot at
        positions written so far, this step's included. With G = 1: (1, 1, 1, P)."""
        written = self.key_positions[: self.span] <= self.length  # (P,)
        if self.beam_size == 1:
            return written[None, None, None, :]
        return slot_mask(self.ancestors[:, : self.span], self.beam_size, written.unsqueeze(0))


class StaticLayerCache(LayerCache):
    """One decoder layer's view of a StaticCache: the cross K/V as LayerCache reads them; its own
    append and mask."""

    def append(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Write one position's k/v (N, H, 1, Dh), each row into its own slot; return the first
        `span` positions of every slot, (B, H, P * G, Dh). The caller keeps the position below
        span: a device-side position cannot be checked without a sync."""
        if k.size(2) != 1:
            raise ValueError("a static cache takes one new position a step")
        c = self.cache
        g, (n, h, _, dh) = c.beam_size, k.shape
        index = c.length * g + c.slots  # (G,): where each slot's position goes
        keys, values = c.self_kv[self.index]
        # Indexed assignment, not index_copy_: compiled, it stores the G new positions only,
        # where index_copy_ becomes a pass over the whole buffer.
        keys[:, :, index] = k.view(n // g, g, h, dh).transpose(1, 2)
        if c.values_last:
            values[:, :, :, index] = v.view(n // g, g, h, dh).permute(0, 2, 3, 1)
            return keys[:, :, : c.span * g], values[..., : c.span * g].transpose(2, 3)
        values[:, :, index] = v.view(n // g, g, h, dh).transpose(1, 2)
        return keys[:, :, : c.span * g], values[:, :, : c.span * g]

    def self_mask(self, t_new: int) -> Tensor:
        """Which keys each row sees (see StaticCache.build_mask); built once a step, by layer 0."""
        if self.index == 0:
            self.cache.step_mask = self.cache.build_mask()
        return self.cache.step_mask
