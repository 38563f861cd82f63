"""Training progress: the tqdm bar on a terminal (plain lines in a log file), and the periodic
`train` records of metrics.jsonl."""
from __future__ import annotations

import sys
import time
from contextlib import contextmanager
from typing import Callable, Iterator

import torch
from tqdm import tqdm


class Progress:
    """Per update: the bar advances and shows the rate; every `every` updates (and at the first)
    a record holds the mean loss per target token since the previous record, and the bar shows
    it with tokens/s since the last validation. Losses arrive as device tensors and are read
    only then: one host-device synchronisation per record, not per update, lets the host
    prepare the next batches while the GPU works. `reduce` turns the summed loss into a float
    (summed over processes); every process calls it at the same updates. Only the main process
    shows or records anything. Where stderr is no terminal (a log file), a plain line every
    `every * 10` updates stands in for the bar."""

    def __init__(self, total: int, initial: int, enabled: bool, record: Callable[[dict], None],
                 reduce: Callable[[torch.Tensor | float], float] = float, every: int = 10):
        self.plain = enabled and not sys.stderr.isatty()
        self.bar = tqdm(total=total, initial=initial, disable=not enabled or self.plain, dynamic_ncols=True, unit="upd")
        self.enabled, self.record, self.reduce, self.every, self.total = enabled, record, reduce, every, total
        self.first = initial + 1  # this process's first update: shown, as at step 1
        self.loss, self.tokens = 0.0, 0  # since the last record
        self.restart_window()

    def restart_window(self) -> None:
        """Tokens/s counts from here (validation time is not training time)."""
        self.window_tokens, self.window_start = 0, time.perf_counter()

    def update(self, step: int, epoch: int, loss_sum: torch.Tensor | float, n_tokens: int, lr: float) -> None:
        self.window_tokens += n_tokens
        self.loss, self.tokens = self.loss + loss_sum, self.tokens + n_tokens
        self.bar.update(1)
        if step % self.every == 0 or step == self.first:
            loss = self.reduce(self.loss) / self.tokens
            tokens_per_s = self.window_tokens / (time.perf_counter() - self.window_start)
            if self.enabled:
                self.bar.set_postfix(loss=f"{loss:.3f}", lr=f"{lr:.2e}", tok_s=f"{tokens_per_s:,.0f}", ep=epoch)
                self.record({"kind": "train", "step": step, "epoch": epoch, "loss": loss, "lr": lr, "tokens_per_s": tokens_per_s})
            if self.plain and (step % (10 * self.every) == 0 or step == self.first):
                print(f"step {step}/{self.total}: loss {loss:.3f}, lr {lr:.2e}, {tokens_per_s:,.0f} target tokens/s, "
                      f"epoch {epoch}", file=sys.stderr, flush=True)
            self.loss, self.tokens = 0.0, 0

    def close(self) -> None:
        self.bar.close()


@contextmanager
def translating(what: str, total: int, enabled: bool = True) -> Iterator[Callable[[int], None]]:
    """progress(n) for translating `total` sentences: a bar on a terminal; in a log file, a line
    as it starts and one as it ends."""
    plain = enabled and not sys.stderr.isatty()
    if plain:
        print(f"{what}: translating {total:,} sentences", file=sys.stderr, flush=True)
    start = time.perf_counter()
    with tqdm(total=total, disable=not enabled or plain, dynamic_ncols=True, unit="sent", desc=what, leave=False) as bar:
        yield bar.update
    if plain:
        print(f"{what}: {total:,} sentences in {time.perf_counter() - start:.1f} s", file=sys.stderr, flush=True)


def best_translations(translator, lines: list[str], search, max_tokens: int, what: str) -> list[str]:
    """Each line's best translation by a recipe's eval search, showing progress as `what`."""
    with translating(what, len(lines)) as progress:
        return [nbest[0][0] for nbest in translator.search(lines, search, max_tokens=max_tokens, progress=progress)]


def duration(seconds: float) -> str:
    """A rough human duration: 45 s, 3.5 min, 1.2 h."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.1f} min" if seconds < 5400 else f"{seconds / 3600:.1f} h"
