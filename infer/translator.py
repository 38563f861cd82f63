"""The Python API: a model loaded once, translating lists of strings.

    from infer import Translator
    t = Translator.from_checkpoint("runs/x/checkpoints/best.pt", device="cuda", dtype="bf16")
    t.translate(["Ein Hund läuft."], beam_size=5)            # -> ["A dog is running."]
    t.translate(["Ein Hund läuft."], beam_size=5, n_best=3)  # -> [[(text, score), ...]]

An ensemble checkpoint (seq2seq-ensemble) loads the same way and translates with all its models.
"""
from __future__ import annotations

from typing import Callable

import torch

from infer.search import SearchConfig
from infer.translate import encode_sources, translate_ids
from seq2seq import packed
from seq2seq.checkpoint import load, model_from_checkpoint
from seq2seq.ensemble import Ensemble
from seq2seq.model import Transformer
from seq2seq.tokenizer import Vocabularies

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def _one_line(text: str) -> str:
    """Output text may not break the one-line-per-input contract."""
    return " ".join(text.splitlines()) if ("\n" in text or "\r" in text) else text


class Translator:
    def __init__(self, model: Transformer | Ensemble, vocab: Vocabularies, device: str = "cpu", dtype: str = "fp32"):
        if dtype not in DTYPES:
            raise ValueError(f"dtype {dtype!r}: expected one of {', '.join(DTYPES)}")
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise ValueError(f"device {device!r}: no CUDA device is available")
        self.device = torch.device(device)
        self.model = model.to(device=self.device, dtype=DTYPES[dtype]).eval()
        self.vocab = vocab

    @classmethod
    def from_checkpoint(cls, path, device: str = "cpu", dtype: str = "fp32") -> "Translator":
        model, vocab = model_from_checkpoint(load(path), path)
        translator = cls(model, vocab, device, dtype)
        # The model is ours alone, so on CPU in fp32 its weights can be repacked for the native
        # panel product, or oneDNN's where that cannot be built (seq2seq/packed.py): same
        # outputs, fewer seconds per token.
        if translator.device.type == "cpu" and dtype == "fp32" and packed.available():
            for member in translator.model.members if isinstance(translator.model, Ensemble) else [translator.model]:
                packed.pack_for_cpu(member)
        return translator

    @property
    def max_source_tokens(self) -> int:
        return self.model.config.max_positions - 1

    def translate(
        self, lines: list[str], beam_size: int = 5, n_best: int | None = None, length_norm: str = "average",
        alpha: float = 0.6, max_len_a: float = 1.5, max_len_b: int = 10, max_len: int = 256, min_len: int = 0,
        greedy: bool = False, max_tokens: int = 4096,
        on_truncate: Callable[[int, int], None] | None = None, progress: Callable[[int], None] | None = None,
    ):
        """Translations in input order: a string per line, or with n_best a list of
        (text, score) per line, best first. Empty lines give empty translations."""
        cfg = SearchConfig(
            beam_size=1 if greedy else beam_size, n_best=n_best or 1, length_norm=length_norm, alpha=alpha,
            max_len_a=max_len_a, max_len_b=max_len_b, max_len=max_len, min_len=min_len,
        )
        results = self.search(lines, cfg, greedy, max_tokens, on_truncate, progress)
        return [r[0][0] for r in results] if n_best is None else results

    def search(
        self, lines: list[str], cfg: SearchConfig, greedy: bool = False, max_tokens: int = 4096,
        on_truncate: Callable[[int, int], None] | None = None, progress: Callable[[int], None] | None = None,
    ) -> list[list[tuple[str, float]]]:
        """Per line, cfg.n_best (text, score) pairs, best first; an empty line gives [("", 0.0)].

        on_truncate(index, n_ids) hears of each line cut to the model's positions;
        progress(n) of each n lines done.
        """
        todo = [i for i, line in enumerate(lines) if line.strip()]
        on_cut = None if on_truncate is None else (lambda j, n: on_truncate(todo[j], n))
        sources = encode_sources(self.vocab, [lines[i] for i in todo], self.model.config.max_positions,
                                 self.model.config.eos_id, on_cut)
        found = translate_ids(self.model, sources, cfg, max_tokens, greedy, progress)
        results = [[("", 0.0)] for _ in lines]
        for i, hyps in zip(todo, found):
            texts = self.vocab.tgt.decode_batch([h.tokens for h in hyps])
            results[i] = [(_one_line(t), h.score) for t, h in zip(texts, hyps)]
        if progress is not None and len(todo) < len(lines):
            progress(len(lines) - len(todo))
        return results
