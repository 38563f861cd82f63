"""Cached vs uncached (full-prefix recompute) decoding, side by side in one process.

A transformer-base-sized model with random weights decodes a random source batch at forced
output lengths (EOS forbidden until the length, then forced), greedy and beam, with the cache
and with the reference that recomputes the whole prefix every step. Prints one JSON object.

    python bench/decode.py                      # CPU grid of the core issue
    python bench/decode.py --device cuda --dtype bfloat16

Peak memory is the rise over the memory in use before a run: on CUDA from the allocator's peak
counter. On Linux CPU it is the process's peak resident set (VmHWM, reset per run) in a separate
untimed run during which glibc maps every block over 128 KiB on its own and unmaps it when
freed, so the resident set follows live tensors rather than heap kept from earlier runs. That
mode slows CPU decoding by about a quarter, so timed runs use glibc's usual steady state
(blocks over 32 MiB mapped) instead.
"""
from __future__ import annotations

import argparse
import ctypes
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, installed or not

from infer import Engine, SearchConfig  # noqa: E402
from seq2seq import ModelConfig, Transformer  # noqa: E402


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--lengths", default="16,64,256", help="forced output lengths")
    p.add_argument("--batches", default="1,32")
    p.add_argument("--beams", default="1,4", help="1 runs greedy search, more runs beam search")
    p.add_argument("--src-len", type=int, default=32)
    p.add_argument("--repeats", type=int, default=1, help="timed runs per cell; the median is reported")
    p.add_argument(
        "--max-uncached-work", type=float, default=None,
        help="skip the reference where rows * L * (L + 1) / 2 exceeds this (default: 2e6 on CPU, no limit on GPU)",
    )
    p.add_argument("--layers", type=int, default=6)
    p.add_argument("--d-model", type=int, default=512)
    p.add_argument("--vocab", type=int, default=32000)
    return p.parse_args()


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class PeakMemory:
    """Peak bytes above the starting level during a with-block, or None where unmeasurable."""

    def __init__(self, device: torch.device):
        self.device = device
        self.peak_bytes: int | None = None

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.start = torch.cuda.memory_allocated(self.device)
        elif _clear_refs():
            self.start = _status_kib("VmRSS") * 1024
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak_bytes = torch.cuda.max_memory_allocated(self.device) - self.start
        elif hasattr(self, "start"):
            self.peak_bytes = _status_kib("VmHWM") * 1024 - self.start


def _malloc_mode(track_memory: bool) -> bool:
    """glibc: a fixed mmap threshold, 128 KiB to track live memory, 32 MiB (the usual steady
    state) for timing; True where it could be set."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3
    threshold = 128 * 1024 if track_memory else 32 * 2**20
    ok = bool(libc.mallopt(m_mmap_threshold, threshold)) and bool(libc.mallopt(m_trim_threshold, 2 * threshold))
    if track_memory:
        libc.malloc_trim(0)  # hand back free heap kept from timed runs, or new blocks reuse it
    return ok


def _clear_refs() -> bool:
    """Reset the process's peak RSS (Linux: writing 5 to clear_refs resets VmHWM)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def forced_config(length: int, beam: int) -> SearchConfig:
    """Exactly `length` tokens, then EOS."""
    return SearchConfig(beam_size=beam, length_norm="none", max_len_a=0.0, max_len_b=length, max_len=length, min_len=length)


def decode(model, src, length: int, beam: int, use_cache: bool):
    """The engine as seq2seq-translate runs it (static shapes and CUDA graphs on a GPU), or the
    uncached reference."""
    cfg = forced_config(length, beam)
    engine = ENGINES.setdefault((id(model), use_cache), Engine(model, static=None if use_cache else False, use_cache=use_cache))
    max_lens = torch.full((src.size(0),), length, device=src.device)
    return [[h.tokens for h in nbest] for nbest in engine.search(src, max_lens, cfg, greedy=beam == 1)]


ENGINES: dict = {}  # one engine per model and path: captured steps are reused, as Translator's are


def measure(model, src, length, beam, use_cache, repeats, device):
    times, out = [], None
    for _ in range(repeats):
        _synchronize(device)
        start = time.perf_counter()
        out = decode(model, src, length, beam, use_cache)
        _synchronize(device)
        times.append(time.perf_counter() - start)
    seconds = statistics.median(times)
    tokens = src.size(0) * length
    return {"seconds": round(seconds, 4), "tgt_tokens_per_s": round(tokens / seconds, 1),
            "peak_mem_mb": peak_memory_mb(model, src, length, beam, use_cache, device)}, out


def peak_memory_mb(model, src, length, beam, use_cache, device) -> float | None:
    if device.type == "cuda":
        with PeakMemory(device) as mem:
            decode(model, src, length, beam, use_cache)
    else:
        if not _malloc_mode(track_memory=True):
            return None
        with PeakMemory(device) as mem:
            decode(model, src, length, beam, use_cache)
        _malloc_mode(track_memory=False)
    return None if mem.peak_bytes is None else round(mem.peak_bytes / 2**20, 1)


def main() -> None:
    args = parse_args()
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    if device.type == "cpu":
        _malloc_mode(track_memory=False)
    limit = args.max_uncached_work
    if limit is None:
        limit = float("inf") if device.type == "cuda" else 2e6
    cfg = ModelConfig(
        src_vocab_size=args.vocab, tgt_vocab_size=args.vocab, d_model=args.d_model, n_heads=8,
        n_encoder_layers=args.layers, n_decoder_layers=args.layers, d_ff=4 * args.d_model,
        share_embeddings=True, dropout=0.0,
    )
    torch.manual_seed(0)
    model = Transformer(cfg).to(device=device, dtype=dtype).eval()
    gen = torch.Generator().manual_seed(1)
    max_batch = max(int(b) for b in args.batches.split(","))
    all_src = torch.randint(4, args.vocab, (max_batch, args.src_len), generator=gen)
    all_src[:, -1] = cfg.eos_id
    all_src = all_src.to(device)
    decode(model, all_src[:2], 4, 2, True)  # warm-up: kernels, allocator, thread pools
    decode(model, all_src[:2], 4, 2, False)

    results = []
    for length in (int(x) for x in args.lengths.split(",")):
        for batch in (int(x) for x in args.batches.split(",")):
            for beam in (int(x) for x in args.beams.split(",")):
                src = all_src[:batch]
                cell = {"search": "greedy" if beam == 1 else f"beam{beam}", "batch": batch, "length": length}
                cell["cached"], cached_out = measure(model, src, length, beam, True, args.repeats, device)
                work = batch * beam * length * (length + 1) / 2
                if work <= limit:
                    cell["uncached"], ref_out = measure(model, src, length, beam, False, args.repeats, device)
                    cell["speedup"] = round(cell["uncached"]["seconds"] / cell["cached"]["seconds"], 2)
                    cell["same_output"] = cached_out == ref_out
                else:
                    cell["uncached"] = f"skipped: rows*L*(L+1)/2 = {work:.3g} > --max-uncached-work {limit:.3g}"
                results.append(cell)
                print(json.dumps(cell), file=sys.stderr, flush=True)

    print(json.dumps({
        "benchmark": "decode", "device": _device_name(device), "dtype": args.dtype,
        "torch": torch.__version__, "threads": torch.get_num_threads(),
        "model": {"layers": f"{args.layers}+{args.layers}", "d_model": args.d_model, "heads": 8,
                  "d_ff": 4 * args.d_model, "vocab": args.vocab, "params_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 1)},
        "src_len": args.src_len, "repeats": args.repeats, "results": results,
    }, indent=1))


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.processor() or platform.machine()} ({os.cpu_count()} cores)"


if __name__ == "__main__":
    main()
