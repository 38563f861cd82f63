"""What a search steps through: each row's newest token in, next-token logits out.

Shapes: B sentences, G hypotheses per sentence, N = B * G rows, S source length, M positions,
V vocabulary. A decoder takes the newest token of every row (N,) and returns next-token logits
(N, V) (an ensemble: log-probabilities, which log_softmax leaves as they are), follows beam
re-ranking through reorder, takes a new batch of the same shape through load, and drops
finished sentences through keep. The searches are the same code over every decoder.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from seq2seq.cache import sentence_rows
from seq2seq.ensemble import Ensemble
from seq2seq.model import Transformer


class CachedDecoder:
    """Encodes once, projects cross-attention K/V once, then runs one new position a step.

    dynamic: built for this batch alone, whose steps read exactly the positions written (not a
    captured step, whose shapes are fixed and whose span is rounded up). Then the first step
    runs one row per sentence, and every row of the sentence takes its logits and its K/V: all
    of them start from BOS (or the same prefix) with the same source, so the other G - 1 rows
    would compute the same; and the K/V buffers are not zeroed first."""

    def __init__(self, model: Transformer, src: Tensor, beam_size: int, max_steps: int, dynamic: bool = False):
        self.model = model
        self.cache = model.init_cache(model.encode(src), model.padding_mask(src), beam_size, max_steps,
                                      zeroed=not dynamic)
        self.fresh = dynamic and beam_size > 1  # the next step is the batch's first

    def load(self, src: Tensor) -> None:
        """A new batch of the shape this decoder was built for, in the same buffers."""
        self.cache.load(self.model.cross_kv(self.model.encode(src)), self.model.padding_mask(src))

    def step(self, last: Tensor, span: int) -> Tensor:
        """last (N,) -> logits (N, V), attending over the first `span` positions."""
        if self.fresh:
            self.fresh = False
            g = self.cache.beam_size
            logits = self.model.step(last[::g], self.cache.first_slot())  # (B, V)
            self.cache.share_first_position()
            self.cache.advance()
            return logits.repeat_interleave(g, dim=0)
        self.cache.span = span
        return self.model.step(last, self.cache)

    def reorder(self, rows: Tensor) -> None:
        self.cache.reorder(rows)

    def keep(self, sentences: Tensor) -> None:
        self.cache.keep(sentences)


class RecomputeDecoder:
    """The reference: every step runs the uncached decoder over each row's whole prefix."""

    def __init__(self, model: Transformer, src: Tensor, beam_size: int, max_steps: int):
        self.model, self.beam_size = model, beam_size
        self.prefix = src.new_empty(src.size(0) * beam_size, max_steps)  # (N, M)
        self.load(src)

    def load(self, src: Tensor) -> None:
        # Memory copied per beam, so this path never relies on the cached path's row folding.
        self.memory = self.model.encode(src).repeat_interleave(self.beam_size, dim=0)  # (N, S, D)
        self.src_mask = self.model.padding_mask(src).repeat_interleave(self.beam_size, dim=0)
        self.length = 0

    def step(self, last: Tensor, span: int) -> Tensor:
        self.prefix[:, self.length] = last
        self.length += 1
        hidden = self.model.decode(self.prefix[:, : self.length], self.memory, self.src_mask)
        return self.model.project(hidden[:, -1])

    def reorder(self, rows: Tensor) -> None:
        self.prefix = self.prefix.index_select(0, rows)

    def keep(self, sentences: Tensor) -> None:
        rows = sentence_rows(sentences, self.beam_size)
        self.prefix, self.memory, self.src_mask = (x.index_select(0, rows) for x in (self.prefix, self.memory, self.src_mask))


class EnsembleDecoder:
    """One decoder per member, stepped and re-ranked together; a step returns the log of the
    members' mean next-token probability (fairseq's and OpenNMT-py's rule)."""

    def __init__(self, members: list):
        self.members = members
        self.log_n = math.log(len(members))

    def load(self, src: Tensor) -> None:
        for m in self.members:
            m.load(src)

    def step(self, last: Tensor, span: int) -> Tensor:
        log_probs = torch.stack([torch.log_softmax(m.step(last, span).float(), dim=-1) for m in self.members])  # (E, N, V)
        return torch.logsumexp(log_probs, dim=0) - self.log_n

    def reorder(self, rows: Tensor) -> None:
        for m in self.members:
            m.reorder(rows)

    def keep(self, sentences: Tensor) -> None:
        for m in self.members:
            m.keep(sentences)


def make_decoder(model: Transformer | Ensemble, src: Tensor, beam_size: int, max_steps: int, use_cache: bool = True,
                 dynamic: bool = False):
    """A decoder over src (B, S) for beam_size rows per sentence and max_steps positions;
    dynamic: see CachedDecoder."""
    if isinstance(model, Ensemble):
        return EnsembleDecoder([make_decoder(m, src, beam_size, max_steps, use_cache, dynamic)
                                for m in model.members])
    if not use_cache:
        return RecomputeDecoder(model, src, beam_size, max_steps)
    return CachedDecoder(model, src, beam_size, max_steps, dynamic)
