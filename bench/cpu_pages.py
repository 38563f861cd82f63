"""Our CPU decoding with the weights on 4 KB pages against the same on huge pages, in one process.

Builds bench/peers.py's transformer-base model (random weights, fp32) and packs two copies with
pack_for_cpu(keep_weights=True): one with huge_pages=False, one on transparent huge pages
(seq2seq.pages, the default). Then, in interleaved rounds (the order reversed every other round):
- stream: a plain sum over the weights one decoding step reads (the decoder's 37 packed
  products), as GB/s: what the memory system gives a pure stream on each kind of page;
- each search cell at a forced output length: batch 1 greedy compiled ahead of time (infer.aot,
  as bench/decode_cpu.py's ours_aot), and the compiled searches (ours_compiled) of the cells given.
Reports medians and the paired ratio (median over rounds of 4 KB seconds / huge-page seconds in
the same round), the process's AnonHugePages, and whether both copies produced the same tokens.
Prints one JSON object.

    python bench/cpu_pages.py                  # nothing else running
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from decode import best_tokens, graphed_search  # noqa: E402
from infer.aot import compile_ahead  # noqa: E402
from peers import paired_ratio, random_source, timed_rounds, transformer_base  # noqa: E402
from seq2seq import pages  # noqa: E402
from seq2seq.packed import pack_for_cpu  # noqa: E402


def huge_kb() -> int:
    """This process's anonymous memory on huge pages, in KB (Linux)."""
    for line in Path("/proc/self/smaps_rollup").read_text().splitlines():
        if line.startswith("AnonHugePages:"):
            return int(line.split()[1])
    return 0


def step_weights(model) -> list[torch.Tensor]:
    """What one decoding step multiplies by: the decoder's and the output projection's panels."""
    return [m.packed for layer in model.decoder_layers
            for m in (layer.self_attn.qkv_proj, layer.self_attn.out_proj, layer.cross_attn.q_proj,
                      layer.cross_attn.out_proj, layer.ff.fc1, layer.ff.fc2)] + [model.output_proj.packed]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--length", type=int, default=32, help="forced output length")
    p.add_argument("--cells", default="1x4,32x1", help="compiled search cells, BATCHxBEAM, besides batch 1 greedy")
    p.add_argument("--repeats", type=int, default=7, help="interleaved rounds")
    p.add_argument("--threads", type=int, default=os.cpu_count())
    args = p.parse_args()
    if not pages.available():
        sys.exit("cpu_pages: this platform has no MADV_HUGEPAGE")
    torch.set_num_threads(args.threads)
    base = transformer_base(32000)
    models = {"pages_4k": pack_for_cpu(copy.deepcopy(base), keep_weights=True, huge_pages=False),
              "huge": pack_for_cpu(copy.deepcopy(base), keep_weights=True)}
    del base
    src_all = random_source(32, 32, 32000, 2)
    results = {"anon_huge_pages_kb": huge_kb(), "cells": []}

    weights = {name: step_weights(model) for name, model in models.items()}
    mb = sum(w.numel() for w in weights["huge"]) * 4 / 1e6
    stream = timed_rounds({name: (lambda ws=ws: [w.sum() for w in ws]) for name, ws in weights.items()}, args.repeats * 3)
    results["stream"] = {"mb": round(mb, 1), **{f"{name}_gb_per_s": round(mb / 1e3 / statistics.median(s), 1)
                                               for name, (s, _) in stream.items()},
                         "huge_vs_4k": round(paired_ratio(stream["pages_4k"][0], stream["huge"][0]), 3)}
    print(json.dumps(results["stream"]), file=sys.stderr, flush=True)

    cells = [("aot", 1, 1)] + [("compiled", *map(int, cell.split("x"))) for cell in args.cells.split(",") if cell]
    with tempfile.TemporaryDirectory() as tmp, torch.inference_mode():
        for mode, batch, beam in cells:
            src, runs, compile_s = src_all[:batch], {}, {}
            for name, model in models.items():
                start = time.perf_counter()
                if mode == "aot":
                    (Path(tmp) / name).mkdir(exist_ok=True)
                    search = compile_ahead(graphed_search(model, 1, 32, args.length, 1, use_graph=False, span=32), Path(tmp) / name)
                else:
                    search = graphed_search(model, batch, 32, args.length, beam, use_graph=False, span=32, compile=True)
                search.run(src)  # compiles, for the compiled mode
                compile_s[name] = round(time.perf_counter() - start, 1)
                runs[name] = lambda search=search: best_tokens(search.run(src), beam)
            timings = timed_rounds(runs, args.repeats)
            tokens = batch * args.length
            cell = {"mode": mode, "batch": batch, "beam": beam, "length": args.length, "compile_seconds": compile_s,
                    **{f"{name}_tokens_per_s": round(tokens / statistics.median(s), 1) for name, (s, _) in timings.items()},
                    "huge_vs_4k": round(paired_ratio(timings["pages_4k"][0], timings["huge"][0]), 3),
                    "per_round": [round(a / b, 2) for a, b in zip(timings["pages_4k"][0], timings["huge"][0])],
                    "same_tokens": timings["pages_4k"][1] == timings["huge"][1]}
            results["cells"].append(cell)
            print(json.dumps(cell), file=sys.stderr, flush=True)

    print(json.dumps({"benchmark": "cpu_pages", "torch": torch.__version__, "threads": args.threads,
                      "thp": Path("/sys/kernel/mm/transparent_hugepage/enabled").read_text().strip(),
                      "repeats": args.repeats, **results}, indent=1))


if __name__ == "__main__":
    main()
