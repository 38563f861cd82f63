"""Batch-1 greedy on CPU: the compiled step called through dynamo vs the same step compiled ahead
of time by AOTInductor (infer.aot), vs CTranslate2, in interleaved rounds in one process. Prints
one JSON object.

A step compiled by torch.compile (infer.graphed, compile=True) goes through dynamo at every call:
a guard check over every tensor it reads, and a Python wrapper around its kernels.
infer.aot.compile_ahead compiles the same step into one shared library per span bucket, which
one C++ call runs. Both run on the same packed model with its plain weights kept; same_tokens
checks the AOT search against the dynamo-compiled one, and CTranslate2 against ours.

    pip install ctranslate2 transformers safetensors
    python bench/aot_step.py                # L 32, 5 rounds
    python bench/aot_step.py --length 128 --repeats 3
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from decode import graphed_search  # noqa: E402
from decode_cpu import build, cpu_name, run_ct2  # noqa: E402
from peers import IdMap, random_source, timed_rounds  # noqa: E402
from infer.aot import compile_ahead  # noqa: E402


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--length", type=int, default=32, help="forced output tokens")
    p.add_argument("--repeats", type=int, default=5, help="timed rounds; medians are reported")
    p.add_argument("--src-len", type=int, default=32)
    p.add_argument("--vocab", type=int, default=32000)
    p.add_argument("--layers", type=int, default=6)
    p.add_argument("--d-model", type=int, default=512)
    p.add_argument("--threads", type=int, default=os.cpu_count())
    return p.parse_args()


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp, torch.inference_mode():
        model, _, tokenizer, ct2, _, ct2_version = build(args, Path(tmp))
        ids = IdMap(model.config)
        src = random_source(1, args.src_len, args.vocab, model.config.eos_id)
        ct2_src = [tokenizer.convert_ids_to_tokens(row.tolist()) for row in ids.to_export(src)]
        length = args.length
        compiled = graphed_search(model, 1, args.src_len, length, 1, use_graph=False, span=32, compile=True)
        start = time.perf_counter()
        reference = compiled.run(src)
        compile_s = time.perf_counter() - start
        start = time.perf_counter()
        aot = compile_ahead(graphed_search(model, 1, args.src_len, length, 1, use_graph=False, span=32), Path(tmp))
        aot_compile_s = time.perf_counter() - start
        timings = timed_rounds({
            "ours_compiled": lambda: [h.tokens[:length] for h in compiled.run(src)],
            "ours_aot": lambda: [h.tokens[:length] for h in aot.run(src)],
            "ctranslate2": lambda: run_ct2(ct2, ct2_src, length, 1, tokenizer, ids),
        }, args.repeats)
    seconds = {name: s for name, (s, _) in timings.items()}
    tokens = {name: out for name, (_, out) in timings.items()}
    print(json.dumps({
        "benchmark": "aot_step", "device": cpu_name(), "dtype": "float32", "threads": args.threads,
        "torch": torch.__version__, "ctranslate2": ct2_version, "search": "greedy", "batch": 1, "length": length,
        "src_len": args.src_len, "repeats": args.repeats,
        "tgt_tokens_per_s": {name: round(length / s, 1) for name, s in seconds.items()},
        "aot_vs_compiled": round(seconds["ours_compiled"] / seconds["ours_aot"], 2),
        "aot_vs_ctranslate2": round(seconds["ctranslate2"] / seconds["ours_aot"], 2),
        "compiled_vs_ctranslate2": round(seconds["ctranslate2"] / seconds["ours_compiled"], 2),
        "compile_seconds": {"ours_compiled": round(compile_s, 1), "ours_aot": round(aot_compile_s, 1)},
        "same_tokens": {"ours_aot": tokens["ours_aot"] == [h.tokens[:length] for h in reference],
                        "ctranslate2": tokens["ctranslate2"] == tokens["ours_compiled"]},
    }, indent=1))


if __name__ == "__main__":
    main()
