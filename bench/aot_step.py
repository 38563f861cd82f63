"""Batch-1 greedy on CPU: the compiled step called through dynamo vs the same step compiled ahead
of time by AOTInductor, vs CTranslate2, in interleaved rounds in one process. Prints one JSON object.

A probe for issue 6's CPU bar, not a decoding mode of the library. A step compiled by
torch.compile still goes through dynamo on every call: a guard check over every tensor it
reads, and a Python wrapper around the kernels. AOTInductor compiles the same step into a
shared library that one C++ call runs. To export it, the step's state (the search's buffers
and the StaticCache's) is passed in as inputs that it mutates: the probe rebinds those
attributes of a GraphedGreedy to the traced inputs while torch.export traces _step_at, and
GraphedGreedy.run then calls one compiled library per span bucket instead of the dynamo step.
Export (non-strict) traces like torch.compile, so the step takes the same fused-reduction
products and attention; the JSON's same_tokens checks the tokens against the compiled search.

Limits, why this is a probe: only 1-row steps (batch 1 greedy). Wider steps call oneDNN's
packed product and a copy through Python custom ops (seq2seq.packed), and the packed weights
are opaque oneDNN tensors, which neither export nor the compiled library can hold; the probe
hides them from export, which only works where the step never reads them.

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
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))

from decode import graphed_search  # noqa: E402
from decode_cpu import build, cpu_name, run_ct2  # noqa: E402
from peers import IdMap, random_source, timed_rounds  # noqa: E402
from seq2seq.packed import PackedLinear  # noqa: E402


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


def state_slots(search) -> list[tuple[object, str, tuple[int, int] | None]]:
    """(owner, attribute, (layer, k or v) or None) for every tensor of the search and its cache."""
    slots = [(owner, name, None) for owner in (search, search.cache)
             for name, value in vars(owner).items() if isinstance(value, torch.Tensor)]
    slots += [(search.cache, "self_kv", (layer, i)) for layer in range(len(search.cache.self_kv)) for i in (0, 1)]
    return slots


def slot_tensor(slot) -> torch.Tensor:
    owner, name, index = slot
    value = getattr(owner, name)
    return value if index is None else value[index[0]][index[1]]


class ExportedStep(nn.Module):
    """search._step_at(span) as a module of the state tensors, which it mutates in place."""

    def __init__(self, search, span: int, slots):
        super().__init__()
        self.search, self.span, self.slots = search, span, slots
        self.model = search.model  # its weights become the module's

    def forward(self, *tensors):
        search, cache = self.search, self.search.cache
        saved = [(owner, name, getattr(owner, name)) for owner, name, index in self.slots if index is None]
        kv = [list(pair) for pair in cache.self_kv]
        for (owner, name, index), tensor in zip(self.slots, tensors):
            if index is None:
                setattr(owner, name, tensor)
            else:
                kv[index[0]][index[1]] = tensor
        old_kv, cache.self_kv = cache.self_kv, [tuple(pair) for pair in kv]
        try:
            search._step_at(self.span)
        finally:
            cache.self_kv = old_kv
            for owner, name, value in saved:
                setattr(owner, name, value)
        return ()


def aot_runners(search, workdir: Path) -> tuple[dict, list]:
    """One AOTInductor-compiled step per span bucket, packed weights hidden from export, and the
    state slots they take, in order (tracing leaves new attributes, such as the cache's step
    mask, that are not inputs)."""
    packed = [m for m in search.model.modules() if isinstance(m, PackedLinear)]
    kept = [m.packed for m in packed]
    for m in packed:
        m.packed = None
    try:
        slots, runners = state_slots(search), {}
        for span in sorted({search._span(t) for t in range(search.steps)}):
            program = torch.export.export(ExportedStep(search, span, slots), tuple(map(slot_tensor, slots)), strict=False)
            path = torch._inductor.aoti_compile_and_package(program, package_path=str(workdir / f"step_{span}.pt2"))
            runners[span] = torch._inductor.aoti_load_package(path)
    finally:
        for m, weight in zip(packed, kept):
            m.packed = weight
    return runners, slots


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
        aot = graphed_search(model, 1, args.src_len, length, 1, use_graph=False, span=32, compile=False)
        start = time.perf_counter()
        reference = compiled.run(src)
        compile_s = time.perf_counter() - start
        start = time.perf_counter()
        runners, slots = aot_runners(aot, Path(tmp))
        aot_compile_s = time.perf_counter() - start
        state = [slot_tensor(slot) for slot in slots]  # the tensors themselves: run updates them in place
        aot._run_step = lambda span: runners[span](*state)  # run's loop calls one library per span
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
