"""Ours vs CTranslate2 vs Hugging Face generate on the same weights, CPU fp32, in one process.

Builds one transformer-base-sized model (6+6 layers, d_model 512, 8 heads, d_ff 2048, vocab 32k,
post-norm, shared tied embeddings, random weights), exports it with the hf-marian exporter,
converts that export with CTranslate2's Transformers converter, and decodes one random source
batch with all three at forced output lengths, so each does the same work: EOS is forbidden for
L tokens, then one more step runs (ours and HF force EOS there; CTranslate2 has no forced EOS and
runs L+1 free steps). Tokens/s counts the L forced tokens per sentence. Prints one JSON object.

    pip install ctranslate2 transformers safetensors
    python bench/decode_cpu.py                         # batch 1 and 32, greedy and beam 4, L 32 and 128
    python bench/decode_cpu.py --lengths 32 --batches 1 --repeats 3

Ours runs up to three ways on the same packed model:
- "ours": as Translator.from_checkpoint sets it up on CPU in fp32: weights packed for the native
  panel product, or oneDNN's where that cannot be built, or as --kernel says (seq2seq/packed.py),
  KV cache, the greedy or beam search of infer/; the plain weights are kept too (below), so
  products of 512 rows or more (the encoder at batch 32) use MKL;
- "ours_compiled": infer.graphed's static-shape searches with compile=True (the step compiled by
  torch.compile, one compile per span bucket of --span positions), on the same model (with the
  oneDNN kernel, its plain weights serve the few-row products). Each cell compiles in an untimed
  first run, whose seconds are reported as compile_seconds (inductor's on-disk cache shortens
  later runs). The model's tensors are on transparent huge pages where the OS offers them
  (pack_for_cpu's default; seq2seq.pages);
- "ours_aot", batch 1 greedy only: the same step compiled ahead of time by AOTInductor
  (infer.aot.compile_ahead), one C++ call a step instead of a call through dynamo.

Timed runs are interleaved: each of --repeats rounds runs every toolkit once (HF only in the first
--hf-repeats), in one order and then in reverse on alternate rounds, CTranslate2 next to ours.
Seconds and tokens/s are each toolkit's median; a ratio against CTranslate2 is the median over
rounds of the two runs' ratio within a round, seconds apart, so a drift in the machine's speed
between rounds cancels (ours against HF: the ratio of medians).

The outputs of HF and CTranslate2 are compared with ours token by token over the L forced tokens
("same_tokens"). Random weights give nearly flat distributions, so an argmax can flip on fp32
rounding differences between libraries; agreement is reported, not required (tests/test_export.py
checks output equality on a model with real preferences).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from decode import best_tokens, decode, graphed_search  # noqa: E402  (bench/decode.py: our searches at a forced length)
from infer.aot import compile_ahead  # noqa: E402
from seq2seq import packed  # noqa: E402
from peers import (IdMap, add_grid_options, export, grid, paired_ratio, random_source, timed, timed_rounds,  # noqa: E402
                   transformer_base)
from seq2seq.packed import pack_for_cpu  # noqa: E402


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_grid_options(p, batches="1,32")
    p.add_argument("--repeats", type=int, default=5, help="timed rounds per cell, each running every toolkit once")
    p.add_argument("--hf-repeats", type=int, default=1, help="of those rounds, how many also run HF (the slowest)")
    p.add_argument("--layers", type=int, default=6)
    p.add_argument("--d-model", type=int, default=512)
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="threads for all three (default: every core)")
    p.add_argument("--span", type=int, default=32, help="positions per compiled span bucket of ours_compiled")
    p.add_argument("--no-compile", action="store_true", help="leave out ours_compiled")
    p.add_argument("--kernel", choices=packed.KERNELS, default=None,
                   help="our packed product (default: the native panel product where it builds, else oneDNN)")
    return p.parse_args()


def build(args, workdir: Path):
    """Our model, its export loaded by transformers, and the CTranslate2 conversion of that export."""
    import ctranslate2
    import transformers
    from ctranslate2.converters import TransformersConverter

    model = transformer_base(args.vocab, args.layers, args.d_model)
    args.params_m = round(sum(p.numel() for p in model.parameters()) / 1e6, 1)  # before packing turns weights into buffers
    hf_dir = export(model, workdir)
    pack_for_cpu(model, keep_weights=True, kernel=args.kernel)  # as Translator.from_checkpoint does on CPU in fp32, plus plain weights
    args.kernel = next(m.kernel for m in model.modules() if isinstance(m, packed.PackedLinear))
    ct2_dir = TransformersConverter(str(hf_dir)).convert(str(workdir / "ct2"), force=True)
    hf = transformers.MarianMTModel.from_pretrained(hf_dir, dtype=torch.float32).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(hf_dir)
    ct2 = ctranslate2.Translator(ct2_dir, device="cpu", compute_type="float32", intra_threads=args.threads, inter_threads=1)
    return model, hf, tokenizer, ct2, transformers.__version__, ctranslate2.__version__


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def run_ours(model, src, length, beam):
    return [nbest[0][:length] for nbest in decode(model, src, length, beam, use_cache=True)]


def run_compiled(search, src, length, beam):
    with torch.inference_mode():
        return [tokens[:length] for tokens in best_tokens(search.run(src), beam)]


def run_hf(hf, hf_src, ids: IdMap, length, beam):
    with torch.inference_mode():
        out = hf.generate(input_ids=hf_src, attention_mask=hf_src != ids.pad, num_beams=beam, do_sample=False,
                          min_new_tokens=length, max_new_tokens=length + 1, length_penalty=0.0)
    return [ids.back(row[1 : length + 1].tolist()) for row in out]  # row[0] is the decoder start


def run_ct2(ct2, ct2_src, length, beam, tokenizer, ids: IdMap):
    results = ct2.translate_batch(ct2_src, beam_size=beam, min_decoding_length=length + 1,
                                  max_decoding_length=length + 1, length_penalty=0.0)
    return [ids.back(tokenizer.convert_tokens_to_ids(r.hypotheses[0][:length])) for r in results]


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        model, hf, tokenizer, ct2, hf_version, ct2_version = build(args, Path(tmp))
        cfg = model.config
        ids = IdMap(cfg)
        all_src = random_source(max(batch for _, batch, _ in grid(args)), args.src_len, args.vocab, cfg.eos_id)
        hf_all = ids.to_export(all_src)
        ct2_all = [tokenizer.convert_ids_to_tokens(row.tolist()) for row in hf_all]
        # Warm-up: thread pools, allocators, kernel choices.
        run_ours(model, all_src[:2], 4, 2), run_hf(hf, hf_all[:2], ids, 4, 2), run_ct2(ct2, ct2_all[:2], 4, 2, tokenizer, ids)

        results = []
        for length, batch, beam in grid(args):
            tokens = batch * length
            cell = {"search": "greedy" if beam == 1 else f"beam{beam}", "batch": batch, "length": length}
            # In run order: the two closely compared, CTranslate2 and our compiled searches, are
            # neighbours, and eager ours next to CTranslate2 too; HF, the slowest, at an end.
            runs = {"hf": lambda: run_hf(hf, hf_all[:batch], ids, length, beam),
                    "ours": lambda: run_ours(model, all_src[:batch], length, beam),
                    "ctranslate2": lambda: run_ct2(ct2, ct2_all[:batch], length, beam, tokenizer, ids)}
            compile_seconds = {}
            if not args.no_compile:
                # ours_compiled's search for this cell; its first run compiles
                search = graphed_search(model, batch, args.src_len, length, beam, use_graph=False, span=args.span, compile=True)
                runs["ours_compiled"] = lambda: run_compiled(search, all_src[:batch], length, beam)
                compile_seconds["ours_compiled"], _ = timed(runs["ours_compiled"], 1)
                if batch * beam == 1:  # 1-row steps: also compiled ahead of time (infer.aot)
                    start = time.perf_counter()
                    ahead = compile_ahead(graphed_search(model, 1, args.src_len, length, 1, use_graph=False, span=args.span), Path(tmp))
                    compile_seconds["ours_aot"] = time.perf_counter() - start
                    runs["ours_aot"] = lambda: run_compiled(ahead, all_src[:batch], length, beam)
            timings = timed_rounds(runs, args.repeats, only_first={"hf": args.hf_repeats})
            ours = timings["ours"][1]
            cell["same_tokens"] = {}
            for name, (seconds, out) in timings.items():
                cell[name] = {"seconds": round(statistics.median(seconds), 4),
                              "tgt_tokens_per_s": round(tokens / statistics.median(seconds), 1),
                              "rounds": [round(x, 4) for x in seconds]}  # in round order, for the paired ratios
                if name in compile_seconds:
                    cell[name]["compile_seconds"] = round(compile_seconds[name], 1)
                if name != "ours":
                    cell["same_tokens"][name] = out == ours
            for name in runs:
                if name.startswith("ours"):
                    cell[f"{name}_vs_ctranslate2"] = round(paired_ratio(timings["ctranslate2"][0], timings[name][0]), 2)
                    # HF ran in fewer rounds: its median against ours' median
                    cell[f"{name}_vs_hf"] = round(cell["hf"]["seconds"] / cell[name]["seconds"], 2)
            results.append(cell)
            print(json.dumps(cell), file=sys.stderr, flush=True)

    print(json.dumps({
        "benchmark": "decode_cpu", "device": cpu_name(), "dtype": "float32",
        "cores": os.cpu_count(), "threads": args.threads, "torch": torch.__version__,
        "transformers": hf_version, "ctranslate2": ct2_version,
        "model": {"layers": f"{args.layers}+{args.layers}", "d_model": args.d_model, "heads": 8, "d_ff": 4 * args.d_model,
                  "vocab": args.vocab, "params_m": args.params_m},
        "src_len": args.src_len, "repeats": args.repeats, "hf_repeats": args.hf_repeats, "span": args.span, "kernel": args.kernel, "results": results,
    }, indent=1))


if __name__ == "__main__":
    main()
