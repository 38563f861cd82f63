"""Translate lists of sentences in token-budget batches, returning results in input order.

Shapes: B sentences in a batch, S source length.
"""
from __future__ import annotations

import torch

from infer.beam import beam_search
from infer.greedy import greedy_search
from infer.search import Hypothesis, SearchConfig
from seq2seq.batching import batch_plan, pad
from seq2seq.model import Transformer
from seq2seq.tokenizer import Vocabularies


def encode_sources(vocab: Vocabularies, lines: list[str], max_positions: int, eos_id: int) -> list[list[int]]:
    """Subword ids plus EOS, cut to what the model can attend to."""
    return [ids[: max_positions - 1] + [eos_id] for ids in vocab.src.encode_batch(lines)]


@torch.no_grad()
def translate_ids(
    model: Transformer, sources: list[list[int]], cfg: SearchConfig, max_tokens: int = 4096, greedy: bool = False
) -> list[list[Hypothesis]]:
    """Search every source (ids with EOS); per source, its n-best list, in input order."""
    device = next(model.parameters()).device
    lengths = [len(s) for s in sources]
    # Budget by source length and by the longest output the search may produce.
    out_lens = [min(cfg.max_len, int(cfg.max_len_a * n + cfg.max_len_b)) + 1 for n in lengths]
    results: list[list[Hypothesis]] = [[] for _ in sources]
    rows_per_sentence = 1 if greedy else cfg.beam_size  # beams multiply the decoder's rows
    for batch in batch_plan(lengths, out_lens, max(1, max_tokens // rows_per_sentence), 0, 0, shuffle=False):
        src = pad([sources[i] for i in batch], model.config.pad_id).to(device)
        if greedy:
            found = [[h] for h in greedy_search(model, src, cfg)]
        else:
            found = beam_search(model, src, cfg)
        for i, hyps in zip(batch, found):
            results[i] = hyps
    return results


def translate(
    model: Transformer, vocab: Vocabularies, lines: list[str], cfg: SearchConfig, max_tokens: int = 4096, greedy: bool = False
) -> list[str]:
    """Detokenized best translation of each line, in input order."""
    sources = encode_sources(vocab, lines, model.config.max_positions, model.config.eos_id)
    best = [hyps[0].tokens for hyps in translate_ids(model, sources, cfg, max_tokens, greedy)]
    return vocab.tgt.decode_batch(best)
