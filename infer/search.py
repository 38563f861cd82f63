"""The rules of search, written once for greedy and beam search: options, hypotheses, output
budgets, length penalties and which tokens a step may emit.

Shapes: B sentences, N decoder rows (B * beams), V vocabulary.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

LENGTH_NORMS = ("none", "average", "gnmt")
STOPS = ("current", "early", "bound")


@dataclass(frozen=True)
class SearchConfig:
    beam_size: int = 5  # hypotheses kept per sentence; greedy search ignores it
    n_best: int = 1  # hypotheses returned per sentence, best first; at most beam_size
    length_norm: str = "average"  # "none" (raw log-prob), "average" (per token), "gnmt"
    alpha: float = 0.6  # GNMT length penalty exponent: score / ((5 + len) / 6) ** alpha
    max_len_a: float = 1.5  # at most a * source_length + b output tokens (EOS not counted)
    max_len_b: int = 10
    max_len: int = 256  # hard cap on output tokens, whatever the source length
    min_len: int = 0  # EOS is forbidden before this many output tokens
    # Beam search: a sentence is done once "current": beam_size hypotheses are finished and the best
    # live one, scored as if it ended now, cannot beat them (Hugging Face's default); "early":
    # beam_size are finished (fairseq's and CTranslate2's rule, Hugging Face's early_stopping=True:
    # fewer steps, and on Multi30k's test set 0.1-0.3 BLEU less); "bound": n_best are finished and
    # no live one can beat them at the longest length its budget allows (exact, but with a length
    # penalty it rarely stops before the budget)
    stop: str = "current"
    # Sampling (greedy search draws each token instead of taking the most probable; n_best rows
    # per sentence give n_best samples): from the distribution at this temperature, cut to the
    # top_k most probable tokens (0: all) and to the smallest set of most probable tokens whose
    # probability reaches top_p; the generator is seeded with `seed` for every batch.
    sample: bool = False
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.beam_size < 1:
            raise ValueError(f"beam_size={self.beam_size} must be at least 1")
        if self.n_best < 1 or (not self.sample and self.n_best > self.beam_size):
            raise ValueError(f"n_best={self.n_best} must be in [1, beam_size={self.beam_size}]")
        if self.temperature <= 0 or self.top_k < 0 or not 0 < self.top_p <= 1:
            raise ValueError(f"need temperature > 0, top_k >= 0 and 0 < top_p <= 1, got {self.temperature}, "
                             f"{self.top_k} and {self.top_p}")
        if self.stop not in STOPS:
            raise ValueError(f"stop={self.stop!r}: expected one of {STOPS}")
        if self.length_norm not in LENGTH_NORMS:
            raise ValueError(f"length_norm={self.length_norm!r}: expected one of {LENGTH_NORMS}")
        if self.max_len < 1 or self.min_len < 0:
            raise ValueError(f"need max_len >= 1 and min_len >= 0, got {self.max_len} and {self.min_len}")

    def length_penalty(self, length):
        """Divisor of a hypothesis's log-prob; length (an int, or a tensor of them) counts output
        tokens including EOS."""
        if self.length_norm == "average":
            return length * 1.0
        if self.length_norm == "gnmt":
            return ((5.0 + length) / 6.0) ** self.alpha
        return length * 0.0 + 1.0


@dataclass(frozen=True)
class Hypothesis:
    tokens: list[int]  # output token ids, without BOS and EOS
    score: float  # log_prob divided by the length penalty: what hypotheses are ranked by
    log_prob: float  # sum of token log-probabilities, EOS included


def rows_per_sentence(cfg: SearchConfig, greedy: bool) -> int:
    """Decoder rows a sentence takes: its beams, its samples, or one."""
    if greedy:
        return cfg.n_best if cfg.sample else 1
    return cfg.beam_size


def draw(lp: Tensor, cfg: SearchConfig, generator: torch.Generator) -> Tensor:
    """One token per row, sampled from log-probs lp (N, V) (-inf: not allowed) under cfg's
    temperature, top_k and top_p -> (N,) long."""
    scores = lp / cfg.temperature
    if cfg.top_k:
        kth = scores.topk(min(cfg.top_k, scores.size(-1)), dim=-1).values[:, -1:]
        scores = scores.masked_fill(scores < kth, float("-inf"))
    if cfg.top_p < 1:
        probs, order = scores.softmax(-1).sort(dim=-1, descending=True)
        outside = (probs.cumsum(-1) - probs) >= cfg.top_p  # the mass before it already reaches p
        scores = scores.masked_fill(outside.scatter(1, order, outside), float("-inf"))
    return torch.multinomial(scores.softmax(-1), 1, generator=generator).squeeze(1)


def row_topk(x: Tensor, c: int, sets: int = 8) -> tuple[Tensor, Tensor]:
    """The c largest values of each row of x (N, V), largest first, and their columns: what
    x.topk(c) returns (on ties, perhaps other columns of the same values), in less time for a
    vocabulary-wide row. The row is cut into `sets` interleaved slices; the c columns j with the
    largest max over the slices of x[:, i * (V // sets) + j] hold every one of the c largest
    (each of them is the max of its column or below one that is), so a selection over
    sets * c candidates (and the V % sets last columns) replaces one over V."""
    n, v = x.shape
    cols = v // sets
    if cols < 4 * c:
        return x.topk(c, dim=-1)
    grid = x[:, : sets * cols].view(n, sets, cols)  # grid[:, i, j] = x[:, i * cols + j]
    best = grid.amax(1).topk(c, dim=-1).indices  # (N, c)
    cand = grid.gather(2, best.unsqueeze(1).expand(n, sets, c)).view(n, sets * c)
    cand_cols = (torch.arange(sets, device=x.device).view(1, sets, 1) * cols + best.unsqueeze(1)).view(n, sets * c)
    if v > sets * cols:
        cand = torch.cat([cand, x[:, sets * cols :]], 1)
        cand_cols = torch.cat([cand_cols, torch.arange(sets * cols, v, device=x.device).expand(n, -1)], 1)
    values, pos = cand.topk(c, dim=-1)
    return values, cand_cols.gather(1, pos)


def max_output_lengths(src_lengths: Tensor, cfg: SearchConfig, max_positions: int) -> Tensor:
    """Per-sentence output budget, a * source_length + b, capped; src_lengths (B,) -> (B,) long.

    The decoder also needs one position for BOS, so the budget never exceeds max_positions - 1.
    """
    budget = torch.floor(cfg.max_len_a * src_lengths.double() + cfg.max_len_b).long()
    return budget.clamp(min=1, max=min(cfg.max_len, max_positions - 1))


def log_probs(logits: Tensor, step: Tensor, max_lens: Tensor, min_len: int, pad_id: int, bos_id: int,
              eos_id: int, prefix: tuple[Tensor, Tensor] | None = None) -> tuple[Tensor, Tensor]:
    """Next-token log-probabilities (N, V) in fp32 from logits (N, V), which fp32 logits become
    (a step's logits are its own), with the tokens a step may not emit at -inf, and forced (N,):
    the rows whose budget is spent, which may only emit EOS, at its own log-prob (the caller
    picks EOS for them: one (N,) choice, not a pass over (N, V)).
    step (1,) is the index of the token being chosen, on the device (no host value, so a
    captured step can run it); max_lens (N,) each row's budget. Padding and BOS are never
    emitted; rows under min_len may not emit EOS unless forced. prefix: (tokens (N, P), lengths
    (N,)) each row must begin with: while in it, a row may emit only its prefix's token, at that
    token's own log-prob, so a prefix is scored like the rest of the hypothesis."""
    out = logits.float()
    torch.log_softmax(out, -1, out=out)  # in place: a fresh (N, V) costs more than the pass
    forced = max_lens <= step
    out[:, eos_id] = torch.where(forced | (step >= min_len), out[:, eos_id], float("-inf"))
    out[:, pad_id] = float("-inf")
    out[:, bos_id] = float("-inf")
    if prefix is not None:
        tokens, lengths = prefix
        token = tokens.gather(1, step.clamp(max=tokens.size(1) - 1).expand(tokens.size(0), 1))  # (N, 1)
        only = torch.full_like(out, float("-inf")).scatter(1, token, out.gather(1, token))
        out = torch.where((step < lengths).unsqueeze(1), only, out)
    return out, forced
