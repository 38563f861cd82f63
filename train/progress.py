"""Training progress: the tqdm bar and the periodic `train` records of metrics.jsonl."""
from __future__ import annotations

import time
from typing import Callable

from tqdm import tqdm


class Progress:
    """Per update: the bar shows the update's loss, the rate and tokens/s since the last
    validation; every `every` updates (and at the first) a record holds the mean loss per target
    token since the previous record. Only the main process shows or records anything."""

    def __init__(self, total: int, initial: int, enabled: bool, record: Callable[[dict], None], every: int = 10):
        self.bar = tqdm(total=total, initial=initial, disable=not enabled, dynamic_ncols=True, unit="upd")
        self.enabled, self.record, self.every = enabled, record, every
        self.loss, self.tokens = 0.0, 0  # since the last record
        self.restart_window()

    def restart_window(self) -> None:
        """Tokens/s counts from here (validation time is not training time)."""
        self.window_tokens, self.window_start = 0, time.perf_counter()

    def update(self, step: int, epoch: int, loss_sum: float, n_tokens: int, lr: float) -> None:
        self.window_tokens += n_tokens
        self.loss, self.tokens = self.loss + loss_sum, self.tokens + n_tokens
        tokens_per_s = self.window_tokens / (time.perf_counter() - self.window_start)
        if self.enabled:
            self.bar.update(1)
            self.bar.set_postfix(loss=f"{loss_sum / n_tokens:.3f}", lr=f"{lr:.2e}", tok_s=f"{tokens_per_s:,.0f}", ep=epoch)
        if step % self.every == 0 or step == 1:
            if self.enabled:
                self.record({"kind": "train", "step": step, "epoch": epoch, "loss": self.loss / self.tokens,
                             "lr": lr, "tokens_per_s": tokens_per_s})
            self.loss, self.tokens = 0.0, 0

    def close(self) -> None:
        self.bar.close()
