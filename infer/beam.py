"""Beam search: the K best hypotheses of every sentence, extended a token at a time.

Shapes: B sentences, K beam size, N = B * K decoder rows, M steps (the longest budget, plus
EOS), V vocabulary, C = 2K candidates per sentence and step, F finished hypotheses kept per
sentence: n_best under stop "bound", else K.

Each step ranks the C best extensions of a sentence's K live hypotheses. EOS among the top K
finishes a hypothesis, which is set aside; the best K extensions that are not EOS stay live. A
sentence is done once its budget is spent, or it has F finished hypotheses (stop "early", as
fairseq and CTranslate2 stop), and under the other stops its best live one cannot beat the worst
of them either: scored at its length were it to end next step ("current", as Hugging Face's
default stops), or at its budget ("bound": exact, since no future can do better, but with a
length penalty it rarely stops before the budget). As in greedy search, every tensor lives on
the device with a fixed shape and the step reads no host value: a done sentence keeps stepping
but changes nothing, until a dynamic batch drops it (keep).
Re-ranking gathers the token histories and the decoder's ancestor table, never its K/V.
"""
from __future__ import annotations

import torch
from torch import Tensor

from infer.search import Hypothesis, SearchConfig, log_probs, row_topk
from seq2seq.cache import sentence_rows
from seq2seq.config import ModelConfig


class BeamSearch:
    """BeamSearch(decoder, ids, cfg, B, M).start(max_lens); step(span) per token; results()."""

    def __init__(self, decoder, ids: ModelConfig, cfg: SearchConfig, batch: int, steps: int, device: torch.device):
        self.decoder, self.ids, self.cfg, self.steps = decoder, ids, cfg, steps
        k, f = cfg.beam_size, (cfg.n_best if cfg.stop == "bound" else cfg.beam_size)
        self.max_lens = torch.zeros(batch, dtype=torch.long, device=device)  # each sentence's budget
        self.row_max_lens = torch.zeros(batch * k, dtype=torch.long, device=device)  # ... of each row
        self.budget_penalty = torch.ones(batch, device=device)  # length penalty at each budget
        self.t = torch.zeros(1, dtype=torch.long, device=device)  # the index of the token a step emits
        self.sentence = torch.arange(batch, device=device).unsqueeze(1)  # (B, 1)
        self.last = torch.full((batch * k,), ids.bos_id, device=device)  # each row's newest token
        self.history = torch.full((batch * k, steps), ids.pad_id, device=device)  # each row's tokens
        self.scores = torch.zeros(batch, k, device=device)  # cumulative log-probs of live hypotheses
        self.done = torch.zeros(batch, dtype=torch.bool, device=device)
        self.fin_scores = torch.zeros(batch, f, device=device)  # finished, best first; -inf: empty
        self.fin_log_probs = torch.zeros(batch, f, device=device)
        self.fin_lengths = torch.zeros(batch, f, dtype=torch.long, device=device)
        self.fin_tokens = torch.zeros(batch, f, steps, dtype=torch.long, device=device)
        self.prefix: tuple[Tensor, Tensor] | None = None  # (N, P) tokens and (N,) lengths each row begins with

    def start(self, max_lens: Tensor, prefix: tuple[Tensor, Tensor] | None = None) -> None:
        """A new batch (the decoder loaded with it) with budgets max_lens (B,); prefix: tokens
        (B, P) and lengths (B,) each sentence's hypotheses must begin with (infer.search.log_probs)."""
        self.prefix = None if prefix is None else tuple(x.repeat_interleave(self.cfg.beam_size, dim=0) for x in prefix)
        self.max_lens.copy_(max_lens)
        self.row_max_lens.copy_(max_lens.repeat_interleave(self.cfg.beam_size))
        self.budget_penalty.copy_(self.cfg.length_penalty(max_lens + 1))
        self.t.zero_()
        self.last.fill_(self.ids.bos_id)
        self.history.fill_(self.ids.pad_id)
        self.scores.fill_(float("-inf"))
        self.scores[:, 0] = 0.0  # all beams start identical: let only the first expand
        self.done.zero_()
        self.fin_scores.fill_(float("-inf"))

    def step(self, span: int) -> None:
        """One token for every hypothesis; the decoder attends over `span` positions."""
        ids, cfg, k, f = self.ids, self.cfg, self.cfg.beam_size, self.fin_scores.size(1)
        b, t = self.scores.size(0), self.t
        logits = self.decoder.step(self.last, span)  # (N, V)
        lp, forced = log_probs(logits, t, self.row_max_lens, cfg.min_len, ids.pad_id, ids.bos_id, ids.eos_id, self.prefix)
        cand_scores, cand_beam, cand_tok = self._candidates(lp, forced.view(b, k))
        is_eos = cand_tok == ids.eos_id

        # EOS among the top K finishes a hypothesis, unless its sentence is done; the new ones go
        # after those kept and the best F stay, ties in that order.
        ends = is_eos[:, :k] & torch.isfinite(cand_scores[:, :k]) & ~self.done.unsqueeze(1)  # (B, K)
        new_scores = torch.where(ends, cand_scores[:, :k] / cfg.length_penalty(t + 1), float("-inf"))
        new_tokens = self.history.index_select(0, (self.sentence * k + cand_beam[:, :k]).view(-1)).view(b, k, -1)
        merged = torch.cat([self.fin_scores, new_scores], dim=1)  # (B, F + K)
        keep = torch.sort(merged, dim=1, descending=True, stable=True).indices[:, :f]
        self.fin_scores.copy_(merged.gather(1, keep))
        self.fin_log_probs.copy_(torch.cat([self.fin_log_probs, cand_scores[:, :k]], 1).gather(1, keep))
        self.fin_lengths.copy_(torch.cat([self.fin_lengths, t.expand(b, k)], 1).gather(1, keep))
        tokens = torch.cat([self.fin_tokens, new_tokens], 1)
        self.fin_tokens.copy_(tokens.gather(1, keep.unsqueeze(2).expand(-1, -1, self.steps)))

        # The best K candidates that are not EOS stay live; a stable sort keeps their order.
        order = torch.argsort(is_eos.int(), dim=1, stable=True)[:, :k]
        self.scores.copy_(cand_scores.gather(1, order))
        rows = (self.sentence * k + cand_beam.gather(1, order)).view(-1)
        chosen = cand_tok.gather(1, order).view(-1)
        self.history.copy_(self.history.index_select(0, rows))
        self.history.index_copy_(1, t, chosen.unsqueeze(1))
        self.decoder.reorder(rows)
        self.last.copy_(chosen)

        # Done (see the module docstring). Under "bound": log-probs only fall as a hypothesis
        # grows, and a penalty growing with length divides a negative log-prob by more.
        worst = self.fin_scores[:, f - 1]
        settled = torch.isfinite(worst)
        if cfg.stop != "early":
            live_best = self.scores[:, 0]
            penalty = self.budget_penalty if cfg.stop == "bound" else cfg.length_penalty(t + 2)
            settled &= worst >= torch.where(live_best < 0, live_best / penalty, live_best)
        self.done.logical_or_(settled | (t >= self.max_lens))
        self.t.add_(1)

    def _candidates(self, lp: Tensor, forced: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """The best C = 2K continuations of each sentence, best first: scores (B, C), beams and
        tokens, from the log-probs (N, V) of its K rows and forced (B, K), rows whose budget is
        spent. Each row offers its best C tokens other than EOS, and EOS: the sentence's best C
        over all K x V are among these K x (C + 1), and no (B, K x V) sum is written. A row whose
        budget is spent offers EOS alone; the sentence's rows are forced together."""
        eos = self.ids.eos_id
        b, k = forced.shape
        eos_lp = lp[:, eos].clone()
        lp[:, eos] = float("-inf")
        row_lp, row_tok = row_topk(lp, min(2 * k, lp.size(-1)))  # (N, C)
        row_lp = row_lp.masked_fill(forced.view(-1, 1), float("-inf"))  # a spent budget: EOS alone
        offered_lp = torch.cat([row_lp, eos_lp.unsqueeze(1)], dim=1)  # (N, C + 1)
        offered_tok = torch.cat([row_tok, torch.full_like(row_tok[:, :1], eos)], dim=1)
        per_row = offered_lp.size(1)
        cand = (self.scores.unsqueeze(2) + offered_lp.view(b, k, per_row)).view(b, k * per_row)
        cand_scores, cand_ids = cand.topk(min(2 * k, cand.size(1)), dim=1)  # (B, C), best first
        return cand_scores, cand_ids // per_row, offered_tok.view(b, -1).gather(1, cand_ids)

    def sentences_done(self) -> Tensor:
        """(B,) bool: which sentences are done."""
        return self.done

    def keep(self, sentences: Tensor) -> None:
        """Go on with these sentences only (indices into the batch); the caller shrinks the decoder."""
        rows = sentence_rows(sentences, self.cfg.beam_size)
        for name in ("max_lens", "budget_penalty", "scores", "done", "fin_scores", "fin_log_probs", "fin_lengths",
                     "fin_tokens"):
            setattr(self, name, getattr(self, name).index_select(0, sentences))
        for name in ("row_max_lens", "last", "history"):
            setattr(self, name, getattr(self, name).index_select(0, rows))
        if self.prefix is not None:
            self.prefix = tuple(x.index_select(0, rows) for x in self.prefix)
        self.sentence = self.sentence[: sentences.numel()]

    def results(self, sentences: Tensor | None = None) -> list[list[Hypothesis]]:
        """Per sentence (all, or these indices), up to n_best hypotheses, best first."""
        pick = (lambda x: x) if sentences is None else (lambda x: x.index_select(0, sentences))  # noqa: E731
        scores, log_probs = pick(self.fin_scores).tolist(), pick(self.fin_log_probs).tolist()
        lengths, tokens = pick(self.fin_lengths).tolist(), pick(self.fin_tokens).tolist()
        return [[Hypothesis(toks[:n], s, lp) for s, lp, n, toks in zip(*row) if s != float("-inf")][: self.cfg.n_best]
                for row in zip(scores, log_probs, lengths, tokens)]
