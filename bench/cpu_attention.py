"""A compiled CPU decoding step's attention, side by side in one process; prints one JSON object.

For the shapes of bench/peers.py's transformer-base model (8 heads, Dh 64), fp32: B key rows
(sentences), T queries per key row (1 for greedy, 4 for beam 4's grouped beams), L keys in the
buffer of which the first `written` are open to the mask (a static cache reads a whole span
bucket; the rest is masked), values held as rows (positions, Dh) or positions-last (Dh, positions):
- native: seq2seq/csrc/masked_attention.cpp, which reads keys only up to the last open one;
- reduction: seq2seq.attention.attend_by_reduction compiled by torch.compile (what a compiled
  step uses without the native kernel);
- sdpa: PyTorch's scaled_dot_product_attention, eager.
Each is cycled over enough copies of q/k/v to keep them out of the caches, as a step's layers
are; ms per call, best of --repeats interleaved rounds.

    python bench/cpu_attention.py                # nothing else running
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from seq2seq import native  # noqa: E402
from seq2seq.attention import attend_by_reduction  # noqa: E402

CELLS = [  # (B, T, L, written)
    (1, 1, 32, 16), (1, 4, 128, 64), (32, 1, 32, 16), (32, 4, 32, 32), (32, 4, 128, 64), (32, 4, 512, 256),
]


def inputs(b: int, t: int, keys: int, values_last: bool, copies: int, h: int = 8, dh: int = 64):
    spare = 4  # buffers a little longer than the span read, as a static cache's are
    out = []
    for _ in range(copies):
        k = torch.randn(b, h, keys + spare, dh)[:, :, :keys]
        v = torch.randn(b, h, dh, keys + spare)[..., :keys].transpose(2, 3) if values_last \
            else torch.randn(b, h, keys + spare, dh)[:, :, :keys]
        out.append((torch.randn(b, h, t, dh), k, v))
    return out


def best_ms(fn, sets, mask, repeats: int) -> float:
    for q, k, v in sets[:2]:
        fn(q, k, v, mask)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for q, k, v in sets:
            fn(q, k, v, mask)
        best = min(best, (time.perf_counter() - start) / len(sets))
    return best * 1e3


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=os.cpu_count())
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    if not native.load():
        sys.exit(f"native kernels not loaded: {native.why_not}")
    torch._dynamo.config.recompile_limit = 64  # one compile per shape; past the limit dynamo would run it eagerly
    reduction = torch.compile(attend_by_reduction, dynamic=False)
    kernels = {"native": torch.ops.seq2seq.masked_attention, "reduction": reduction,
               "sdpa": lambda q, k, v, mask: F.scaled_dot_product_attention(q, k, v, attn_mask=mask)}
    cells = []
    with torch.inference_mode():
        for b, t, keys, written in CELLS:
            mask = (torch.arange(keys) < written)[None, None, None, :].expand(b, 1, t, keys)
            copies = max(2, int(200e6 // (b * 8 * keys * 64 * 4 * 2)))
            for values_last in (False, True):
                sets = inputs(b, t, keys, values_last, copies)
                ms = {}
                for _ in range(args.repeats):  # interleaved rounds, best of each
                    for name, fn in kernels.items():
                        ms[name] = min(ms.get(name, float("inf")), best_ms(fn, sets, mask, 1))
                read = b * 8 * written * 64 * 4 * 2  # bytes of K and V up to the last open key
                cells.append({"key_rows": b, "queries": t, "keys": keys, "written": written,
                              "values": "positions_last" if values_last else "rows",
                              "ms_per_call": {k: round(v, 3) for k, v in ms.items()},
                              "native_gb_per_s": round(read / ms["native"] / 1e6, 1)})
                print(json.dumps(cells[-1]), file=sys.stderr, flush=True)
                del sets
    print(json.dumps({"benchmark": "cpu_attention", "torch": torch.__version__, "threads": args.threads,
                      "heads": 8, "head_dim": 64, "dtype": "float32", "cells": cells}, indent=1))


if __name__ == "__main__":
    main()
