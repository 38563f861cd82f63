"""Decoder states that searches step through: cached (fast) and full-prefix recompute (reference).

Shapes: B sentences, G hypotheses per sentence, N = B * G rows, S source length, t steps so
far, V vocabulary. Every state takes the newest token of every row and returns next-token
logits (N, V) (an ensemble: log-probabilities, which log_softmax leaves as they are); the search
above them is the same code either way.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from seq2seq.cache import sentence_rows
from seq2seq.ensemble import Ensemble
from seq2seq.model import Transformer


class CachedState:
    """Encodes once, projects cross-attention K/V once, then runs one new position a step."""

    def __init__(self, model: Transformer, src: Tensor, beam_size: int, max_steps: int):
        memory = model.encode(src)
        self.model = model
        self.cache = model.init_cache(memory, model.padding_mask(src), beam_size, max_steps)

    def step(self, last: Tensor) -> Tensor:
        return self.model.step(last.unsqueeze(1), self.cache)[:, -1]

    def reorder(self, rows: Tensor) -> None:
        self.cache.reorder(rows)

    def keep_sentences(self, keep: Tensor) -> None:
        self.cache.keep_sentences(keep)


class RecomputeState:
    """The reference: every step runs the uncached decoder over the whole prefix again."""

    def __init__(self, model: Transformer, src: Tensor, beam_size: int, max_steps: int):
        self.model = model
        self.beam_size = beam_size
        # Memory copied per beam, so this path never relies on the cached path's row folding.
        self.memory = model.encode(src).repeat_interleave(beam_size, dim=0)  # (N, S, D)
        self.src_mask = model.padding_mask(src).repeat_interleave(beam_size, dim=0)
        self.prefix = src.new_empty(src.size(0) * beam_size, 0)  # (N, t)

    def step(self, last: Tensor) -> Tensor:
        self.prefix = torch.cat([self.prefix, last.unsqueeze(1)], dim=1)
        hidden = self.model.decode(self.prefix, self.memory, self.src_mask)
        return self.model.project(hidden[:, -1])

    def reorder(self, rows: Tensor) -> None:
        self.prefix = self.prefix[rows]

    def keep_sentences(self, keep: Tensor) -> None:
        rows = sentence_rows(keep, self.beam_size)
        self.prefix, self.memory, self.src_mask = self.prefix[rows], self.memory[rows], self.src_mask[rows]


class EnsembleState:
    """One state per member, stepped, re-ranked and shrunk together; a step returns the log of
    the members' mean next-token probability (fairseq's and OpenNMT-py's rule)."""

    def __init__(self, states: list):
        self.states = states
        self.log_n = math.log(len(states))

    def step(self, last: Tensor) -> Tensor:
        log_probs = torch.stack([torch.log_softmax(s.step(last).float(), dim=-1) for s in self.states])  # (M, N, V)
        return torch.logsumexp(log_probs, dim=0) - self.log_n

    def reorder(self, rows: Tensor) -> None:
        for s in self.states:
            s.reorder(rows)

    def keep_sentences(self, keep: Tensor) -> None:
        for s in self.states:
            s.keep_sentences(keep)


def decoder_state(model: Transformer | Ensemble, src: Tensor, beam_size: int, max_steps: int, use_cache: bool):
    if isinstance(model, Ensemble):
        return EnsembleState([decoder_state(m, src, beam_size, max_steps, use_cache) for m in model.members])
    state_cls = CachedState if use_cache else RecomputeState
    return state_cls(model, src, beam_size, max_steps)
