"""Search lists of encoded sentences in token-budget batches, returning results in input order.

Shapes: B sentences in a batch, S source length.
"""
from __future__ import annotations

import contextlib
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

import torch

from infer.engine import Engine
from infer.search import Hypothesis, SearchConfig, max_output_lengths, rows_per_sentence
from seq2seq.batching import batch_plan, pad
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


# Sentences a worker's batch holds at least: a file of fewer than two such batches per worker
# runs on fewer workers.
MIN_WORKER_BATCH = 32


def worker_plan(lengths: list[int], out_lens: list[int], max_tokens: int, workers: int) -> list[list[int]]:
    """Batches for `workers` searching at once, most costly first: a count that the workers
    share evenly, two each at least, each batch as close to the same cost (rows x longest side)
    as the greedy cut allows. The plain cut leaves a last batch of whatever remains, and a worker
    left alone with it runs on its share of the threads while the others' cores wait."""
    plan = batch_plan(lengths, out_lens, max_tokens, 0, 0, shuffle=False)
    wanted = max(-(-len(plan) // workers), 2) * workers
    low, high = 1, max_tokens  # the smallest budget cut into at most `wanted` batches
    while low < high:
        mid = (low + high) // 2
        if len(batch_plan(lengths, out_lens, mid, 0, 0, shuffle=False)) <= wanted:
            high = mid
        else:
            low = mid + 1
    plan = batch_plan(lengths, out_lens, low, 0, 0, shuffle=False)
    cost = lambda batch: len(batch) * max(max(lengths[i], out_lens[i]) for i in batch)  # noqa: E731
    return sorted(plan, key=cost, reverse=True)


@contextlib.contextmanager
def threads_each(workers: int):
    """PyTorch's threads shared out among `workers` threads that run ops at once, then restored."""
    total = torch.get_num_threads()
    torch.set_num_threads(max(1, total // workers))
    try:
        yield
    finally:
        torch.set_num_threads(total)


def translate_ids(
    engine: Engine, sources: list[list[int]], cfg: SearchConfig, max_tokens: int = 4096, greedy: bool = False,
    progress: Callable[[int], None] | None = None, prefixes: list[list[int]] | None = None, workers: int = 1,
) -> list[list[Hypothesis]]:
    """Search every source (ids with EOS) with the engine; per source, its n-best list, in input
    order. prefixes: per source, target ids (no EOS) its output must begin with; the budget
    stretches to hold a longer prefix.

    Batches group sources of similar length. A batch that runs out of GPU memory is split in
    two and retried, so no sentence is lost or reordered. workers > 1 (a dynamic engine, on
    CPU): that many batches are searched at once, on threads that share PyTorch's threads out
    (seq2seq-translate --workers): a decoding step is many small operations, and a core that
    runs a batch of its own keeps busy where the cores of one batch would wait on each other.
    """
    mc = engine.model.config
    lengths = [len(s) for s in sources]
    budgets = max_output_lengths(torch.tensor(lengths), cfg, mc.max_positions)
    if prefixes is not None:
        budgets = torch.maximum(budgets, torch.tensor([len(p) for p in prefixes], dtype=torch.long))
    # Batch by source length and by the decoder positions the search may fill (BOS + output).
    out_lens = (budgets + 1).tolist()
    results: list[list[Hypothesis]] = [[] for _ in sources]

    def run(batch: list[int]) -> None:
        src = pad([sources[i] for i in batch], mc.pad_id).to(engine.device)
        try:
            prefix = None
            if prefixes is not None:
                lens = torch.tensor([len(prefixes[i]) for i in batch])
                tokens = pad([prefixes[i] or [mc.pad_id] for i in batch], mc.pad_id)
                prefix = (tokens.to(engine.device), lens.to(engine.device))
            found = engine.search(src, budgets[batch], cfg, greedy, prefix)
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

    rows = rows_per_sentence(cfg, greedy)  # beams or samples multiply the decoder's rows
    tokens = max(1, max_tokens // rows)
    workers = min(workers, len(sources) // (2 * MIN_WORKER_BATCH))  # two batches each, not tiny ones
    if workers <= 1:
        for batch in batch_plan(lengths, out_lens, tokens, 0, 0, shuffle=False):
            run(batch)
        return results
    if engine.static:
        raise ValueError("workers > 1 needs a dynamic engine: a static one reuses its buffers across batches")
    with threads_each(workers), ThreadPoolExecutor(workers, thread_name_prefix="search") as pool:
        for _ in pool.map(run, worker_plan(lengths, out_lens, tokens, workers)):
            pass
    return results

