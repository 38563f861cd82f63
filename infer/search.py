"""What greedy and beam search share: options, hypotheses, length limits and penalties.

Shapes: B sentences, N decoder rows (B * beams), V vocabulary.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

LENGTH_NORMS = ("none", "average", "gnmt")


@dataclass(frozen=True)
class SearchConfig:
    beam_size: int = 5  # 1 still runs beam search; use greedy_search for greedy
    n_best: int = 1  # hypotheses returned per sentence, best first; at most beam_size
    length_norm: str = "average"  # "none" (raw log-prob), "average" (per token), "gnmt"
    alpha: float = 0.6  # GNMT length penalty exponent: score / ((5 + len) / 6) ** alpha
    max_len_a: float = 1.5  # at most a * source_length + b output tokens (EOS not counted)
    max_len_b: int = 10
    max_len: int = 256  # hard cap on output tokens, whatever the source length
    min_len: int = 0  # EOS is forbidden before this many output tokens

    def __post_init__(self) -> None:
        if self.beam_size < 1:
            raise ValueError(f"beam_size={self.beam_size} must be at least 1")
        if not 1 <= self.n_best <= self.beam_size:
            raise ValueError(f"n_best={self.n_best} must be in [1, beam_size={self.beam_size}]")
        if self.length_norm not in LENGTH_NORMS:
            raise ValueError(f"length_norm={self.length_norm!r}: expected one of {LENGTH_NORMS}")
        if self.max_len < 1 or self.min_len < 0:
            raise ValueError(f"need max_len >= 1 and min_len >= 0, got {self.max_len} and {self.min_len}")

    def length_penalty(self, length: int) -> float:
        """Divisor of a hypothesis's log-prob; length counts output tokens including EOS."""
        if self.length_norm == "average":
            return float(length)
        if self.length_norm == "gnmt":
            return ((5.0 + length) / 6.0) ** self.alpha
        return 1.0


@dataclass(frozen=True)
class Hypothesis:
    tokens: list[int]  # output token ids, without BOS and EOS
    score: float  # log_prob divided by the length penalty: what hypotheses are ranked by
    log_prob: float  # sum of token log-probabilities, EOS included


def max_output_lengths(src_lengths: Tensor, cfg: SearchConfig, max_positions: int) -> Tensor:
    """Per-sentence output budget, a * source_length + b, capped; src_lengths (B,) -> (B,) long.

    The decoder also needs one position for BOS, so the budget never exceeds max_positions - 1.
    """
    budget = torch.floor(cfg.max_len_a * src_lengths.double() + cfg.max_len_b).long()
    return budget.clamp(min=1, max=min(cfg.max_len, max_positions - 1))


def constrain(
    log_probs: Tensor, step: int, max_lens: Tensor, min_len: int, eos_id: int, banned: tuple[int, ...] = ()
) -> Tensor:
    """Apply output rules in place to log_probs (N, V) for the token at index step.

    Banned ids (padding, BOS) are never emitted; rows whose budget is spent may only emit
    EOS; rows under min_len may not emit it.
    """
    if banned:
        log_probs[:, list(banned)] = float("-inf")
    forced = max_lens <= step  # (N,)
    if step < min_len:
        log_probs[~forced, eos_id] = float("-inf")
    if forced.any():
        eos = log_probs[forced, eos_id].clone()
        log_probs[forced] = float("-inf")
        log_probs[forced, eos_id] = eos
    return log_probs
