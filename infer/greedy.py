"""Batched greedy search: the most probable token at every step.

Shapes: B sentences in the batch, n still decoding, S source length, t steps so far.
"""
from __future__ import annotations

import torch
from torch import Tensor

from infer.search import Hypothesis, SearchConfig, constrain, max_output_lengths
from infer.state import decoder_state
from seq2seq.ensemble import Ensemble
from seq2seq.model import Transformer


@torch.no_grad()
def greedy_search(
    model: Transformer | Ensemble, src: Tensor, cfg: SearchConfig = SearchConfig(), use_cache: bool = True
) -> list[Hypothesis]:
    """src (B, S) right-padded -> one hypothesis per sentence, in input order.

    Uses cfg's length limits; the length penalty only scales the reported score. use_cache=False recomputes the
    whole prefix every step (the reference).
    """
    mc = model.config
    max_lens = max_output_lengths((src != mc.pad_id).sum(dim=1), cfg, mc.max_positions)
    state = decoder_state(model, src, 1, int(max_lens.max()) + 1, use_cache)
    return run_greedy(state, max_lens, cfg, mc.bos_id, mc.eos_id, banned=(mc.pad_id, mc.bos_id))


def run_greedy(
    state, max_lens: Tensor, cfg: SearchConfig, bos_id: int, eos_id: int, banned: tuple[int, ...] = ()
) -> list[Hypothesis]:
    """Greedy search over any decoder state (step / keep_sentences); max_lens (B,)."""
    batch = max_lens.numel()
    alive = torch.arange(batch, device=max_lens.device)  # original index of each live row
    tokens = torch.full((batch, 1), bos_id, dtype=torch.long, device=max_lens.device)  # (n, 1 + t)
    log_probs = torch.zeros(batch, device=max_lens.device)
    results: list[Hypothesis | None] = [None] * batch
    for step in range(int(max_lens.max()) + 1):
        lp = torch.log_softmax(state.step(tokens[:, -1]).float(), dim=-1)
        constrain(lp, step, max_lens[alive], cfg.min_len, eos_id, banned)
        best_lp, best = lp.max(dim=-1)
        log_probs = log_probs + best_lp
        tokens = torch.cat([tokens, best.unsqueeze(1)], dim=1)
        done = best == eos_id
        if not done.any():
            continue
        for row in done.nonzero().squeeze(1).tolist():
            log_prob = log_probs[row].item()
            score = log_prob / cfg.length_penalty(step + 1)
            results[alive[row].item()] = Hypothesis(tokens[row, 1:-1].tolist(), score, log_prob)
        keep = (~done).nonzero().squeeze(1)
        if keep.numel() == 0:
            break
        state.keep_sentences(keep)  # finished sentences leave the batch
        alive, tokens, log_probs = alive[keep], tokens[keep], log_probs[keep]
    return results  # every row is forced to EOS by its budget, so none is left None
