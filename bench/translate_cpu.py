"""Translating real text on a CPU: seq2seq-translate against CTranslate2 and Hugging Face, each
as a whole process, on the same weights.

Takes a post-norm checkpoint (the CPU recipe retuned for post-norm; the command is in
docs/RESULTS.md), exports it (seq2seq-export, hf-marian), converts that with
ct2-transformers-converter (fp32 and int8), and translates Multi30k test_2016_flickr with beam 5
and greedy, every toolkit as a whole process, timed from start to exit:
- ours: `seq2seq-translate CKPT src.de -o out.en` with only --beam-size/--greedy, its on-disk
  caches warm (a first run on a fresh cache, SEQ2SEQ_CACHE_DIR empty, is reported too);
- CTranslate2: a process that loads the model and the export's tokenizer, sorts the lines by
  length, translates batches of 64 with translate_batch at our output budget (1.5 * the batch's
  longest source + 10, max_decoding_length), and writes the detokenized text;
- HF: the same loop with MarianMTModel.generate (first round only: it is far slower);
- ours in int8 (`--dtype int8`) against CTranslate2 int8;
- at beam 5, ours with `--stop early`, CTranslate2's stopping rule (done once beam_size
  hypotheses are finished), against CTranslate2 fp32.
Rounds alternate the order of the toolkits, and ratios are CTranslate2's seconds over ours in
the same round (median over rounds): this machine's speed drifts between minutes.
Prints one JSON object and writes it to --json.

    python bench/translate_cpu.py --checkpoint model.pt --json results.json
"""
from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from infer.evaluate import score  # noqa: E402

PEER = r'''
import sys, time
kind, model_dir, tok_dir, src, out, beam, threads = sys.argv[1:8]
beam, threads = int(beam), int(threads)
from transformers import AutoTokenizer
tok = AutoTokenizer.from_pretrained(tok_dir)
lines = open(src, encoding="utf-8").read().split("\n")[:-1]
if kind == "hf":
    import torch
    from transformers import MarianMTModel
    torch.set_num_threads(threads)
    model = MarianMTModel.from_pretrained(model_dir).eval()
else:
    import ctranslate2
    model = ctranslate2.Translator(model_dir, device="cpu", intra_threads=threads, inter_threads=1)
pieces = [tok.convert_ids_to_tokens(tok(line).input_ids) for line in lines]
order = sorted(range(len(lines)), key=lambda i: len(pieces[i]))
found = [""] * len(lines)
for start in range(0, len(order), 64):
    batch = order[start : start + 64]
    budget = int(1.5 * max(len(pieces[i]) for i in batch) + 10)
    if kind == "hf":
        import torch
        enc = tok([lines[i] for i in batch], return_tensors="pt", padding=True)
        with torch.inference_mode():
            ids = model.generate(**enc, num_beams=beam, do_sample=False, max_new_tokens=budget, max_length=None,
                                 early_stopping=False)
        texts = tok.batch_decode(ids, skip_special_tokens=True)
    else:
        res = model.translate_batch([pieces[i] for i in batch], beam_size=beam, max_decoding_length=budget,
                                    max_batch_size=64)
        texts = [tok.convert_tokens_to_string([t for t in r.hypotheses[0] if t not in tok.all_special_tokens])
                 for r in res]
    for i, text in zip(batch, texts):
        found[i] = text.replace("\n", " ")
open(out, "w", encoding="utf-8").write("".join(t + "\n" for t in found))
'''


def read(path: Path) -> list[str]:
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return f.read().split("\n")[:-1]


def run(cmd: list[str], env: dict | None = None) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, cwd=ROOT, check=True, env={**os.environ, **(env or {})}, stdout=subprocess.DEVNULL)
    return round(time.perf_counter() - start, 3)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint", required=True, help="a post-norm seq2seq checkpoint")
    p.add_argument("--data", default=str(ROOT.parent / "shared/data/multi30k"))
    p.add_argument("--split", default="test_2016_flickr")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--hf-rounds", type=int, default=1)
    p.add_argument("--beams", default="5,1")
    p.add_argument("--json", help="write the JSON here too")
    args = p.parse_args()
    import ctranslate2
    import torch

    threads = torch.get_num_threads()
    result = {"benchmark": "translate_cpu", "cpu": f"{platform.processor() or platform.machine()} ({os.cpu_count()} cores)",
              "threads": threads, "torch": torch.__version__, "ctranslate2": ctranslate2.__version__,
              "checkpoint": args.checkpoint, "cells": []}

    def save():
        print(json.dumps(result), file=sys.stderr, flush=True)
        if args.json:
            Path(args.json).write_text(json.dumps(result, indent=1) + "\n")

    work = Path(tempfile.mkdtemp(prefix="bench-cpu-"))
    src, ref = read(Path(args.data) / f"{args.split}.de.gz"), read(Path(args.data) / f"{args.split}.en.gz")
    (work / "src.de").write_text("".join(s + "\n" for s in src), encoding="utf-8")
    result["lines"] = len(src)
    subprocess.run([sys.executable, "-m", "infer", "export", args.checkpoint, str(work / "hf")], cwd=ROOT, check=True,
                   stdout=subprocess.DEVNULL)
    for quant in ("float32", "int8"):
        subprocess.run(["ct2-transformers-converter", "--model", str(work / "hf"), "--output_dir", str(work / f"ct2_{quant}"),
                        "--quantization", quant, "--force"], check=True, stdout=subprocess.DEVNULL)

    for beam in (int(b) for b in args.beams.split(",")):
        name = "greedy" if beam == 1 else f"beam{beam}"
        def ours_cmd(out: str, *extra: str) -> list[str]:
            return [sys.executable, "-m", "infer", "translate", args.checkpoint, str(work / "src.de"), "-o", str(work / out),
                    "--quiet", "--beam-size", str(beam), *(["--greedy"] if beam == 1 else []), *extra]

        ours = ours_cmd("ours.en")

        def peer(kind: str, model: str, out: str) -> list[str]:
            return [sys.executable, "-c", PEER, kind, str(work / model), str(work / "hf"), str(work / "src.de"),
                    str(work / out), str(beam), str(threads)]

        cell = {"search": name, "ours_command": "seq2seq-translate CKPT src.de -o out.en --quiet --beam-size %d%s"
                % (beam, " --greedy" if beam == 1 else "")}
        with tempfile.TemporaryDirectory() as fresh:  # a user's first run: nothing built or cached yet
            cell["ours_fresh_cache_s"] = run(ours, {"SEQ2SEQ_CACHE_DIR": fresh})
        runs = {"ours": (ours, "ours.en"), "ours_int8": (ours_cmd("ours_int8.en", "--dtype", "int8"), "ours_int8.en"),
                "ct2_fp32": (peer("ct2", "ct2_float32", "ct2.en"), "ct2.en"),
                "ct2_int8": (peer("ct2", "ct2_int8", "ct2_int8.en"), "ct2_int8.en"),
                "hf": (peer("hf", "hf", "hf.en"), "hf.en")}
        if beam > 1:  # CTranslate2's stopping rule: done once beam_size hypotheses are finished
            runs["ours_early"] = (ours_cmd("ours_early.en", "--stop", "early"), "ours_early.en")
        seconds = {k: [] for k in runs}
        for r in range(args.rounds):
            names = list(runs) if r % 2 == 0 else list(runs)[::-1]
            for k in names:
                if k == "hf" and r >= args.hf_rounds:
                    continue
                seconds[k].append(run(runs[k][0]))
        for k, (_, out) in runs.items():
            if not seconds[k]:
                continue
            hyps = (work / out).read_text(encoding="utf-8").split("\n")[:-1]
            cell[k] = {"seconds": seconds[k], "median_s": statistics.median(seconds[k]),
                       "bleu": score(hyps, [ref], with_ter=False)["bleu"]}
        pairs = [c / o for c, o in zip(seconds["ct2_fp32"], seconds["ours"])]
        cell["ct2_fp32_over_ours"] = round(statistics.median(pairs), 3)
        pairs = [c / o for c, o in zip(seconds["ct2_int8"], seconds["ours_int8"])]
        cell["ct2_int8_over_ours_int8"] = round(statistics.median(pairs), 3)
        if beam > 1:
            pairs = [c / o for c, o in zip(seconds["ct2_fp32"], seconds["ours_early"])]
            cell["ct2_fp32_over_ours_early"] = round(statistics.median(pairs), 3)
        cell["fresh_over_warm"] = round(cell["ours_fresh_cache_s"] / cell["ours"]["median_s"], 3)
        result["cells"].append(cell)
        save()
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
