"""Translating real text on one GPU: seq2seq against Hugging Face generate on the same weights.

Takes a checkpoint (or trains the single post-norm de->en model of the GPU recipe, --train),
exports it with seq2seq-export (hf-marian), and on Multi30k test_2016_flickr times, side by
side in one process, beam 5 and greedy:
- ours warm: Translator.translate on the whole file (the path seq2seq-translate runs), after
  one untimed pass that captures the graphs;
- ours cold: `python -m infer translate` (= seq2seq-translate) as a whole process, defaults only;
- HF: MarianMTModel.generate on the export, batches of 64 in file order, bf16, warm, with our
  output budget (1.5 * source length + 10) as max_new_tokens per batch.
Also checks, in fp32, that the captured cached search finds what the uncached reference finds.
Prints one JSON object and writes it to --json.

    python bench/translate_gpu.py --train --json results.json
    python bench/translate_gpu.py --checkpoint runs/x/checkpoints/final.pt
"""
from __future__ import annotations

import argparse
import gzip
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from infer.engine import Engine  # noqa: E402
from infer.evaluate import score  # noqa: E402
from infer.search import SearchConfig  # noqa: E402
from infer.translate import encode_sources, translate_ids  # noqa: E402
from infer.translator import Translator  # noqa: E402

TRAIN = ["configs/multi30k_de_en.yaml", "members=1", "model.norm=post", "optim.max_steps=1600",
         "optim.warmup_steps=800", "optim.lr=7e-4"]


def read(path: Path) -> list[str]:
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return f.read().split("\n")[:-1]


def timed(fn, repeats: int):
    times, out = [], None
    for _ in range(repeats):
        torch.cuda.synchronize()
        start = time.perf_counter()
        out = fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return round(statistics.median(times), 3), out


PHASES = """
import json, sys, time
t0 = time.perf_counter()
import torch
from infer.translator import Translator
t1 = time.perf_counter()
t = Translator.from_checkpoint(sys.argv[1], static=sys.argv[4] == "static")
torch.cuda.synchronize()
t2 = time.perf_counter()
lines = open(sys.argv[2], encoding="utf-8").read().split("\\n")[:-1]
beam = int(sys.argv[3])
t.translate(lines, beam_size=beam, greedy=beam == 1)
t3 = time.perf_counter()
t.translate(lines, beam_size=beam, greedy=beam == 1)
t4 = time.perf_counter()
print(json.dumps({"import_s": round(t1 - t0, 3), "load_s": round(t2 - t1, 3), "first_translate_s": round(t3 - t2, 3),
                  "second_translate_s": round(t4 - t3, 3)}))
"""


def cold_phases(ckpt: str, src: Path, beam: int, mode: str = "static") -> dict:
    """Where a cold process spends its time: imports, loading, the first and second pass;
    mode "static" (captured graphs, the default on CUDA) or "dynamic" (eager steps)."""
    done = subprocess.run([sys.executable, "-c", PHASES, ckpt, str(src), str(beam), mode], cwd=ROOT, check=True,
                          capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def hf_translate(model, tokenizer, lines: list[str], beam: int, batch: int = 64) -> list[str]:
    out = []
    for i in range(0, len(lines), batch):
        enc = tokenizer(lines[i : i + batch], return_tensors="pt", padding=True).to("cuda")
        budget = int(1.5 * int(enc["attention_mask"].sum(1).max()) + 10)
        gen = model.generate(**enc, num_beams=beam, do_sample=False, max_new_tokens=budget, max_length=None,
                             early_stopping=False)
        out += tokenizer.batch_decode(gen, skip_special_tokens=True)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint", help="a seq2seq checkpoint (else --train)")
    p.add_argument("--train", action="store_true", help="train the single post-norm model first: " + " ".join(TRAIN))
    p.add_argument("--run-dir", default="runs/bench_gpu_post")
    p.add_argument("--data", default=str(ROOT.parent / "shared/data/multi30k"))
    p.add_argument("--split", default="test_2016_flickr")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--ensemble", help="also time this (ensemble) checkpoint, ours warm")
    p.add_argument("--json", help="write the JSON here too")
    args = p.parse_args()
    result = {"benchmark": "translate_gpu", "device": torch.cuda.get_device_name(), "torch": torch.__version__}
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import torch; torch.zeros(1, device='cuda')"], check=True)
    result["python_import_torch_and_cuda_init_s"] = round(time.perf_counter() - start, 3)

    def save():
        print(json.dumps(result), file=sys.stderr, flush=True)
        if args.json:
            Path(args.json).write_text(json.dumps(result, indent=1) + "\n")

    ckpt = args.checkpoint
    if args.train:
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "train", *TRAIN, f"run_dir={args.run_dir}", f"data.path={args.data}"],
                       cwd=ROOT, check=True)
        result["train"] = {"command": "seq2seq-train " + " ".join(TRAIN), "wall_s": round(time.perf_counter() - start, 1)}
        ckpt = str(ROOT / args.run_dir / "checkpoints" / "final.pt")
    work = Path(tempfile.mkdtemp(prefix="bench-gpu-"))
    src, ref = read(Path(args.data) / f"{args.split}.de.gz"), read(Path(args.data) / f"{args.split}.en.gz")
    (work / "src.de").write_text("".join(s + "\n" for s in src), encoding="utf-8")
    subprocess.run([sys.executable, "-m", "infer", "export", ckpt, str(work / "hf")], cwd=ROOT, check=True)

    from transformers import AutoTokenizer, MarianMTModel

    hf = MarianMTModel.from_pretrained(work / "hf", torch_dtype=torch.bfloat16).to("cuda").eval()
    tok = AutoTokenizer.from_pretrained(work / "hf")
    ours = Translator.from_checkpoint(ckpt)  # CUDA, bf16, captured steps: the defaults
    result.update(checkpoint=ckpt, lines=len(src), dtype="bf16", cells=[])
    for beam in (5, 1):
        cell = {"search": "greedy" if beam == 1 else f"beam{beam}"}
        opts = dict(beam_size=beam, greedy=beam == 1)
        start = time.perf_counter()
        ours.translate(src, **opts)  # captures the graphs of every bucket the file meets
        cell["ours_first_pass_s"] = round(time.perf_counter() - start, 3)
        cell["ours_warm_s"], hyps = timed(lambda: ours.translate(src, **opts), args.repeats)
        cell["ours_bleu"] = score(hyps, [ref], with_ter=False)["bleu"]
        with torch.inference_mode():
            hf_translate(hf, tok, src[:64], beam)  # warm-up
            cell["hf_warm_s"], hf_hyps = timed(lambda: hf_translate(hf, tok, src, beam), args.repeats)
        cell["hf_bleu"] = score(hf_hyps, [ref], with_ter=False)["bleu"]
        cmd = [sys.executable, "-m", "infer", "translate", ckpt, str(work / "src.de"), "-o", str(work / "out.en"),
               "--quiet", "--beam-size", str(beam)] + (["--greedy"] if beam == 1 else [])
        start = time.perf_counter()
        subprocess.run(cmd, cwd=ROOT, check=True)
        cell["cli_cold_s"] = round(time.perf_counter() - start, 3)
        cli_hyps = (work / "out.en").read_text(encoding="utf-8").split("\n")[:-1]
        cell["cli_bleu"] = score(cli_hyps, [ref], with_ter=False)["bleu"]
        cell["cli_same_as_warm"] = cli_hyps == hyps
        cell["warm_vs_hf"] = round(cell["hf_warm_s"] / cell["ours_warm_s"], 2)
        cell["cli_cold_vs_hf_warm"] = round(cell["hf_warm_s"] / cell["cli_cold_s"], 2)
        cell["cold_phases"] = cold_phases(ckpt, work / "src.de", beam)
        cell["cold_phases_eager"] = cold_phases(ckpt, work / "src.de", beam, "dynamic")
        cell["cli_command"] = "seq2seq-translate CKPT src.de -o out.en --quiet --beam-size %d%s" % (beam, " --greedy" if beam == 1 else "")
        result["cells"].append(cell)
        save()

    # fp32: the captured cached search finds what the uncached reference finds.
    fp32 = Translator.from_checkpoint(ckpt, dtype="fp32")
    ids = encode_sources(fp32.vocab, src[:200], fp32.model.config.max_positions, fp32.model.config.eos_id)
    checks = {}
    for beam in (5, 1):
        cfg = SearchConfig(beam_size=beam)
        got = translate_ids(fp32.engine, ids, cfg, 32768, beam == 1)
        ref_hyps = translate_ids(Engine(fp32.model, static=False, use_cache=False), ids, cfg, 4096, beam == 1)
        same = [[h.tokens for h in g] for g in got] == [[h.tokens for h in r] for r in ref_hyps]
        diff = max(abs(a.score - b.score) for g, r in zip(got, ref_hyps) for a, b in zip(g, r))
        checks["greedy" if beam == 1 else f"beam{beam}"] = {"same_hypotheses": same, "max_score_diff": diff, "sentences": 200}
    result["fp32_cached_equals_uncached"] = checks
    save()

    if args.ensemble:
        ens = Translator.from_checkpoint(args.ensemble)
        result["ensemble"] = {"checkpoint": args.ensemble, "members": len(ens.model.members), "cells": []}
        for beam in (5, 1):
            opts = dict(beam_size=beam, greedy=beam == 1)
            ens.translate(src, **opts)
            seconds, hyps = timed(lambda: ens.translate(src, **opts), args.repeats)
            result["ensemble"]["cells"].append({"search": "greedy" if beam == 1 else f"beam{beam}", "ours_warm_s": seconds,
                                                "bleu": score(hyps, [ref], with_ter=False)["bleu"]})
        save()
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
