"""The Python API: a model loaded once, translating lists of strings.

    from infer import Translator
    t = Translator.from_checkpoint("runs/x/checkpoints/best.pt")  # CUDA in bf16 where there is one
    t.translate(["Ein Hund läuft."], beam_size=5)            # -> ["A dog is running."]
    t.translate(["Ein Hund läuft."], beam_size=5, n_best=3)  # -> [[(text, score), ...]]

An ensemble checkpoint (seq2seq-ensemble) loads the same way and translates with all its models.
"""
from __future__ import annotations

from typing import Callable

import torch

from infer.engine import Engine
from infer.search import SearchConfig
from infer.translate import encode_sources, translate_ids
from seq2seq import speed
from seq2seq.checkpoint import load, model_from_checkpoint
from seq2seq.ensemble import Ensemble
from seq2seq.model import Transformer
from seq2seq.speed.int8 import quantize_int8
from seq2seq.tokenizer import Vocabularies

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
# int8: fp32 activations, the linear layers' weights in int8 (CPU only, seq2seq.speed.int8).
DTYPE_NAMES = (*DTYPES, "int8")
# Padded tokens per batch, beams included, by default. A GPU step costs about the same for a few
# rows as for thousands, and every batch shape captures its own graphs: a file of Multi30k goes
# in one or two batches. A CPU step grows with its rows, but its products run nearer the core's
# rate with more of them: on 2 cores, Multi30k's test set with beam 5 took about 0.97 of the time
# with 32768 as with 16384 (in-process, alternating; the KV cache of a batch of the CPU recipe's
# model is then about 200 MB).
MAX_TOKENS = {"cpu": 32768, "cuda": 262144}
MAX_CPU_WORKERS = 4


def _one_line(text: str) -> str:
    """Output text may not break the one-line-per-input contract."""
    return " ".join(text.splitlines()) if ("\n" in text or "\r" in text) else text


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def default_workers(device: str) -> int:
    """Batches searched at once (infer.translate.translate_ids). On a CPU with at most
    MAX_CPU_WORKERS threads, one per thread: on 2 cores, translating Multi30k's test set with beam
    5 took 1/1.15 of the time with two single-threaded workers; on 16 cores, more workers gained
    nothing (docs/RESULTS.md), so there one worker takes every thread. One on a GPU, which runs a
    batch's step as one captured graph."""
    threads = torch.get_num_threads()
    return threads if torch.device(device).type == "cpu" and threads <= MAX_CPU_WORKERS else 1


def default_dtype(device: str) -> str:
    """bf16 on a GPU (same BLEU within noise, half the bytes per step), fp32 on CPU."""
    return "bf16" if torch.device(device).type == "cuda" else "fp32"


class Translator:
    """A model and its vocabularies on one device, with one engine whose captured steps serve
    every later call. device None: CUDA where there is one (CPU for int8); dtype None: bf16
    there, fp32 on CPU; int8 (CPU): the model's linear layers quantized in place. workers: on
    CPU, batches searched at once, sharing PyTorch's threads (default_workers)."""

    def __init__(self, model: Transformer | Ensemble, vocab: Vocabularies, device: str | None = None,
                 dtype: str | None = None, static: bool | None = None, workers: int | None = None):
        device = device or ("cpu" if dtype == "int8" else default_device())  # int8 runs on CPU
        dtype = dtype or default_dtype(device)
        if dtype not in DTYPE_NAMES:
            raise ValueError(f"dtype {dtype!r}: expected one of {', '.join(DTYPE_NAMES)}")
        if dtype == "int8" and torch.device(device).type != "cpu":
            raise ValueError(f"dtype int8 runs on CPU only, not on device {device!r}")
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise ValueError(f"device {device!r}: no CUDA device is available")
        self.device = torch.device(device)
        self.dtype = dtype
        self.model = model.to(device=self.device, dtype=DTYPES.get(dtype, torch.float32)).eval()
        if dtype == "int8":
            for member in getattr(self.model, "members", [self.model]):
                quantize_int8(member)
        self.vocab = vocab
        self.engine = Engine(self.model, static=static)
        if workers is not None and (workers < 1 or (workers > 1 and self.engine.static)):
            raise ValueError(f"workers={workers}: expected 1, or more on CPU (batches searched at once)")
        self.workers = workers or (1 if self.engine.static else default_workers(device))

    @classmethod
    def from_checkpoint(cls, path, device: str | None = None, dtype: str | None = None,
                        static: bool | None = None, workers: int | None = None) -> "Translator":
        """The checkpoint's model, made faster where it runs (seq2seq.speed: on CPU, attention by
        batched products and, in fp32, packed products)."""
        model, vocab = model_from_checkpoint(load(path), path)
        translator = cls(model, vocab, device, dtype, static, workers)
        # The model is ours alone: changed in place. int8 has its own products.
        speed.for_inference(translator.model, pack=translator.dtype != "int8")
        return translator

    @property
    def max_source_tokens(self) -> int:
        return self.model.config.max_positions - 1

    def translate(
        self, lines: list[str], beam_size: int = 5, n_best: int | None = None, length_norm: str = "average",
        alpha: float = 0.6, max_len_a: float = 1.5, max_len_b: int = 10, max_len: int = 256, min_len: int = 0,
        stop: str = "current", greedy: bool = False, max_tokens: int | None = None,
        on_truncate: Callable[[int, int], None] | None = None, progress: Callable[[int], None] | None = None,
        sample: bool = False, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0, seed: int = 0,
        prefixes: list[str] | None = None,
    ):
        """Translations in input order: a string per line, or with n_best a list of
        (text, score) per line, best first. Empty lines give empty translations. sample: draw
        each token (temperature, top_k, top_p; seeded per batch) instead of searching; with
        n_best, that many samples per line. prefixes: per line, target text its translation
        must begin with (kept verbatim, scored like the rest; "" for none)."""
        cfg = SearchConfig(
            beam_size=1 if greedy or sample else beam_size, n_best=n_best or 1, length_norm=length_norm, alpha=alpha,
            max_len_a=max_len_a, max_len_b=max_len_b, max_len=max_len, min_len=min_len, stop=stop,
            sample=sample, temperature=temperature, top_k=top_k, top_p=top_p, seed=seed,
        )
        results = self.search(lines, cfg, greedy or sample, max_tokens, on_truncate, progress, prefixes)
        return [r[0][0] for r in results] if n_best is None else results

    def search(
        self, lines: list[str], cfg: SearchConfig, greedy: bool = False, max_tokens: int | None = None,
        on_truncate: Callable[[int, int], None] | None = None, progress: Callable[[int], None] | None = None,
        prefixes: list[str] | None = None,
    ) -> list[list[tuple[str, float]]]:
        """Per line, cfg.n_best (text, score) pairs, best first; an empty line gives [("", 0.0)].

        max_tokens: padded tokens per batch, beams included (default by device, MAX_TOKENS).
        on_truncate(index, n_ids) hears of each line cut to the model's positions;
        progress(n) of each n lines done.
        """
        max_tokens = max_tokens or MAX_TOKENS.get(self.device.type, MAX_TOKENS["cpu"])
        todo = [i for i, line in enumerate(lines) if line.strip()]
        on_cut = None if on_truncate is None else (lambda j, n: on_truncate(todo[j], n))
        sources = encode_sources(self.vocab, [lines[i] for i in todo], self.model.config.max_positions,
                                 self.model.config.eos_id, on_cut)
        prefix_ids = None
        if prefixes is not None:
            if len(prefixes) != len(lines):
                raise ValueError(f"{len(prefixes)} prefixes for {len(lines)} lines")
            prefix_ids = self.vocab.tgt.encode_batch([prefixes[i] for i in todo])
            limit = self.model.config.max_positions - 1
            for j, ids in enumerate(prefix_ids):
                if len(ids) > limit:
                    raise ValueError(f"prefix of line {todo[j] + 1}: {len(ids)} tokens, more than the model's {limit}")
        found = translate_ids(self.engine, sources, cfg, max_tokens, greedy, progress, prefix_ids, self.workers)
        results = [[("", 0.0)] for _ in lines]
        for i, hyps in zip(todo, found):
            texts = self.vocab.tgt.decode_batch([h.tokens for h in hyps])
            results[i] = [(_one_line(t), h.score) for t, h in zip(texts, hyps)]
        if progress is not None and len(todo) < len(lines):
            progress(len(lines) - len(todo))
        return results
