"""Search lists of encoded sentences in token-budget batches, returning results in input order.

Shapes: B sentences in a batch, S source length.
"""
from __future__ import annotations

from typing import Callable

import torch

from infer.beam import beam_search
from infer.greedy import greedy_search
from infer.search import Hypothesis, SearchConfig, max_output_lengths
from seq2seq.batching import batch_plan, pad
from seq2seq.ensemble import Ensemble
from seq2seq.model import Transformer
from seq2seq.tokenizer import Vocabularies


def encode_sources(
    vocab: Vocabularies, lines: list[str], max_positions: int, eos_id: int,
    on_truncate: Callable[[int, int], None] | None = None,
) -> list[list[int]]:
    """Subword ids plus EOS, cut to what the model can attend to; on_truncate(index, n_ids)
    hears of every line that was cut."""
    sources = []
    for index, ids in enumerate(vocab.src.encode_batch(lines)):
        if len(ids) > max_positions - 1:
            if on_truncate is not None:
                on_truncate(index, len(ids))
            ids = ids[: max_positions - 1]
        sources.append(ids + [eos_id])
    return sources


@torch.no_grad()
def translate_ids(
    model: Transformer | Ensemble, sources: list[list[int]], cfg: SearchConfig, max_tokens: int = 4096, greedy: bool = False,
    progress: Callable[[int], None] | None = None,
) -> list[list[Hypothesis]]:
    """Search every source (ids with EOS); per source, its n-best list, in input order.

    Batches group sources of similar length. A batch that runs out of GPU memory is split in
    two and retried, so no sentence is lost or reordered.
    """
    device = next(model.parameters()).device
    lengths = [len(s) for s in sources]
    # Budget by source length and by the decoder positions the search may fill (BOS + output).
    out_lens = (max_output_lengths(torch.tensor(lengths), cfg, model.config.max_positions) + 1).tolist()
    results: list[list[Hypothesis]] = [[] for _ in sources]

    def run(batch: list[int]) -> None:
        src = pad([sources[i] for i in batch], model.config.pad_id).to(device)
        try:
            found = [[h] for h in greedy_search(model, src, cfg)] if greedy else beam_search(model, src, cfg)
        except torch.cuda.OutOfMemoryError:
            if len(batch) == 1:
                raise
            torch.cuda.empty_cache()
            half = len(batch) // 2
            run(batch[:half])
            run(batch[half:])
            return
        for i, hyps in zip(batch, found):
            results[i] = hyps
        if progress is not None:
            progress(len(batch))

    rows_per_sentence = 1 if greedy else cfg.beam_size  # beams multiply the decoder's rows
    for batch in batch_plan(lengths, out_lens, max(1, max_tokens // rows_per_sentence), 0, 0, shuffle=False):
        run(batch)
    return results

