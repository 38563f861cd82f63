"""Greedy search: the most probable allowed token at every step, or with cfg.sample a token
drawn from the distribution (infer.search.draw), n_best rows per sentence giving n_best samples.

Shapes: B sentences, G rows per sentence (1, or the samples), N = B * G rows, M steps (the
longest budget, plus EOS), V vocabulary.

Every tensor the search reads or writes lives on the device and keeps its shape from step to
step; the step reads no host value. A sentence that has ended keeps stepping (the batch keeps
its shape) but no longer changes its result, until a dynamic batch drops it (keep). So the
same step runs eagerly or captured once and replayed (seq2seq.speed), and the caller asks
sentences_done() only as often as it likes.
"""
from __future__ import annotations

import torch
from torch import Tensor

from infer.search import Hypothesis, SearchConfig, draw, log_probs, rows_per_sentence
from seq2seq.cache import sentence_rows
from seq2seq.config import ModelConfig


class GreedySearch:
    """GreedySearch(decoder, ids, cfg, B, M).start(max_lens); step(span) per token; results()."""

    def __init__(self, decoder, ids: ModelConfig, cfg: SearchConfig, batch: int, steps: int, device: torch.device):
        self.decoder, self.ids, self.cfg, self.steps = decoder, ids, cfg, steps
        self.group = rows_per_sentence(cfg, greedy=True)  # G
        rows = batch * self.group
        self.max_lens = torch.zeros(batch, dtype=torch.long, device=device)  # each sentence's budget
        self.row_max_lens = torch.zeros(rows, dtype=torch.long, device=device)  # ... and each row's
        self.t = torch.zeros(1, dtype=torch.long, device=device)  # the index of the token a step emits
        self.last = torch.full((rows,), ids.bos_id, device=device)  # each row's newest token
        self.out = torch.full((rows, steps), ids.pad_id, device=device)  # emitted tokens
        self.log_probs = torch.zeros(rows, device=device)  # the model's, whatever the sampling
        self.ended_at = torch.full((rows,), -1, dtype=torch.long, device=device)  # the step of EOS
        self.generator = torch.Generator(device) if cfg.sample else None
        self.prefix: tuple[Tensor, Tensor] | None = None  # (N, P) tokens and (N,) lengths each row begins with

    def start(self, max_lens: Tensor, prefix: tuple[Tensor, Tensor] | None = None) -> None:
        """A new batch (the decoder loaded with it) with budgets max_lens (B,); prefix: tokens
        (B, P) and lengths (B,) each sentence's hypotheses must begin with (infer.search.log_probs)."""
        self.prefix = None if prefix is None else tuple(x.repeat_interleave(self.group, dim=0) for x in prefix)
        self.max_lens.copy_(max_lens)
        self.row_max_lens.copy_(max_lens.repeat_interleave(self.group))
        if self.generator is not None:
            self.generator.manual_seed(self.cfg.seed)
        self.t.zero_()
        self.last.fill_(self.ids.bos_id)
        self.out.fill_(self.ids.pad_id)
        self.log_probs.zero_()
        self.ended_at.fill_(-1)

    def step(self, span: int) -> None:
        """One token for every row; the decoder attends over `span` positions."""
        ids = self.ids
        logits = self.decoder.step(self.last, span)  # (N, V)
        lp, forced = log_probs(logits, self.t, self.row_max_lens, self.cfg.min_len, ids.pad_id, ids.bos_id, ids.eos_id,
                               self.prefix)
        if self.generator is None:
            best_lp, best = lp.max(dim=-1)
        else:
            best = draw(lp, self.cfg, self.generator)
            best_lp = lp.gather(1, best.unsqueeze(1)).squeeze(1)
        best_lp = torch.where(forced, lp[:, ids.eos_id], best_lp)
        best = torch.where(forced, ids.eos_id, best)
        running = self.ended_at < 0
        self.log_probs.add_(torch.where(running, best_lp, 0.0))
        best = torch.where(running, best, ids.pad_id)
        self.out.index_copy_(1, self.t, best.unsqueeze(1))
        self.ended_at.copy_(torch.where(running & (best == ids.eos_id), self.t, self.ended_at))
        self.last.copy_(torch.where(running, best, ids.eos_id))
        self.t.add_(1)

    def sentences_done(self) -> Tensor:
        """(B,) bool: which sentences have ended in every row (a budget forces EOS at its last step)."""
        return (self.ended_at >= 0).view(-1, self.group).all(dim=1)

    def keep(self, sentences: Tensor) -> None:
        """Go on with these sentences only (indices into the batch); the caller shrinks the decoder."""
        rows = sentence_rows(sentences, self.group)
        self.max_lens = self.max_lens.index_select(0, sentences)
        for name in ("row_max_lens", "last", "out", "log_probs", "ended_at"):
            setattr(self, name, getattr(self, name).index_select(0, rows))
        if self.prefix is not None:
            self.prefix = tuple(x.index_select(0, rows) for x in self.prefix)

    def results(self, sentences: Tensor | None = None) -> list[list[Hypothesis]]:
        """Per sentence (all, or these indices), its hypothesis, or its samples best first."""
        rows = None if sentences is None else sentence_rows(sentences, self.group)
        pick = (lambda x: x) if rows is None else (lambda x: x.index_select(0, rows))  # noqa: E731
        out, ended, log_probs = pick(self.out).tolist(), pick(self.ended_at).tolist(), pick(self.log_probs).tolist()
        hyps = [Hypothesis(row[:end], lp / self.cfg.length_penalty(end + 1), lp) for row, end, lp in zip(out, ended, log_probs)]
        g = self.group
        return [sorted(hyps[i : i + g], key=lambda h: -h.score) for i in range(0, len(hyps), g)]
