"""Batched beam search on a decoder state, with finished sentences leaving the batch.

Shapes: B sentences in the batch, n still decoding, K beam size, N = n * K decoder rows,
V vocabulary, C = 2K candidates per sentence and step.

Each step ranks the C best extensions of a sentence's K live hypotheses. EOS among the top K
finishes a hypothesis, which is set aside; the best K non-EOS extensions stay live. A
sentence stops once it has n_best finished hypotheses and no live one can still beat them.
"""
from __future__ import annotations

import torch
from torch import Tensor

from infer.search import Hypothesis, SearchConfig, constrain, max_output_lengths
from infer.state import decoder_state
from seq2seq.ensemble import Ensemble
from seq2seq.model import Transformer


@torch.no_grad()
def beam_search(
    model: Transformer | Ensemble, src: Tensor, cfg: SearchConfig = SearchConfig(), use_cache: bool = True
) -> list[list[Hypothesis]]:
    """src (B, S) right-padded -> per sentence, up to cfg.n_best hypotheses, best first.

    use_cache=False recomputes the whole prefix every step (the reference).
    """
    mc = model.config
    max_lens = max_output_lengths((src != mc.pad_id).sum(dim=1), cfg, mc.max_positions)
    state = decoder_state(model, src, cfg.beam_size, int(max_lens.max()) + 1, use_cache)
    return run_beam(state, max_lens, cfg, mc.bos_id, mc.eos_id, banned=(mc.pad_id, mc.bos_id))


def _best_reachable(live_best: Tensor, max_lens: Tensor, cfg: SearchConfig) -> Tensor:
    """Upper bound on the score a live hypothesis can still reach; live_best, max_lens (n,).

    Log-probs only fall as a hypothesis grows, while an increasing length penalty divides a
    negative log-prob by more, so the bound takes the longest length the budget allows.
    """
    penalty = torch.tensor([cfg.length_penalty(int(m) + 1) for m in max_lens.tolist()], device=live_best.device)
    return torch.where(live_best < 0, live_best / penalty, live_best)


def run_beam(
    state, max_lens: Tensor, cfg: SearchConfig, bos_id: int, eos_id: int, banned: tuple[int, ...] = ()
) -> list[list[Hypothesis]]:
    """Beam search over any decoder state (step / reorder / keep_sentences); max_lens (B,)."""
    k, device = cfg.beam_size, max_lens.device
    batch = max_lens.numel()
    alive = torch.arange(batch, device=device)  # original index of each live sentence
    tokens = torch.full((batch * k, 1), bos_id, dtype=torch.long, device=device)  # (N, 1 + t)
    scores = torch.zeros(batch, k, device=device)  # cumulative log-probs of live hypotheses
    scores[:, 1:] = float("-inf")  # all beams start identical: let only the first expand
    finished: list[list[Hypothesis]] = [[] for _ in range(batch)]
    for step in range(int(max_lens.max()) + 1):
        n = alive.numel()
        lp = torch.log_softmax(state.step(tokens[:, -1]).float(), dim=-1)  # (N, V)
        constrain(lp, step, max_lens[alive].repeat_interleave(k), cfg.min_len, eos_id, banned)
        vocab = lp.size(-1)
        cand = (scores.unsqueeze(2) + lp.view(n, k, vocab)).view(n, k * vocab)
        cand_scores, cand_ids = cand.topk(min(2 * k, k * vocab), dim=1)  # (n, C), best first
        cand_beam, cand_tok = cand_ids // vocab, cand_ids % vocab
        is_eos = cand_tok == eos_id

        # Finish the EOS candidates that rank among the top K.
        ends = (is_eos[:, :k] & torch.isfinite(cand_scores[:, :k])).nonzero().tolist()
        if ends:
            rows = torch.tensor([b * k + int(cand_beam[b, j]) for b, j in ends], device=device)
            ended_tokens = tokens[rows, 1:].tolist()
            ended_lp = cand_scores[[b for b, _ in ends], [j for _, j in ends]].tolist()
            for (b, _), toks, log_prob in zip(ends, ended_tokens, ended_lp):
                hyp = Hypothesis(toks, log_prob / cfg.length_penalty(step + 1), log_prob)
                _add_finished(finished[int(alive[b])], hyp, cfg.n_best)

        # The best K non-EOS candidates stay live; a stable sort keeps their rank order.
        order = torch.argsort(is_eos.int(), dim=1, stable=True)[:, :k]
        scores = cand_scores.gather(1, order)
        rows = (torch.arange(n, device=device).unsqueeze(1) * k + cand_beam.gather(1, order)).view(-1)
        tokens = torch.cat([tokens[rows], cand_tok.gather(1, order).view(-1, 1)], dim=1)
        state.reorder(rows)

        done = _sentences_done(finished, alive, scores[:, 0], max_lens[alive], step, cfg)
        if done.all():
            break
        if done.any():
            keep = (~done).nonzero().squeeze(1)
            state.keep_sentences(keep)  # finished sentences leave the batch
            alive, scores = alive[keep], scores[keep]
            tokens = tokens.view(n, k, -1)[keep].view(keep.numel() * k, -1)
    return finished


def _add_finished(hyps: list[Hypothesis], hyp: Hypothesis, n_best: int) -> None:
    """Insert hyp into hyps (best first) and keep the n_best best."""
    hyps.append(hyp)
    hyps.sort(key=lambda h: h.score, reverse=True)
    del hyps[n_best:]


def _sentences_done(
    finished: list[list[Hypothesis]], alive: Tensor, live_best: Tensor, max_lens: Tensor, step: int, cfg: SearchConfig
) -> Tensor:
    """(n,) bool: budget spent, or n_best finished and no live hypothesis can still beat them."""
    bound = _best_reachable(live_best, max_lens, cfg).tolist()
    done = []
    for b, reachable, budget in zip(alive.tolist(), bound, max_lens.tolist()):
        hyps = finished[b]
        settled = len(hyps) >= cfg.n_best and hyps[-1].score >= reachable
        done.append(settled or step >= budget)
    return torch.tensor(done, device=alive.device)
