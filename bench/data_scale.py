"""Training data at WMT14 scale on an ordinary machine: preparation time and memory, and how soon
a training run (and its resume) on the prepared data reaches its first update.

Builds a synthetic parallel corpus shaped like WMT14 en-de (4.5M pairs, about 27 words a side,
600k word types a side with Zipf frequencies, gzipped), then, each as its own process:
1. `seq2seq-prepare configs/wmt14_en_de_base.yaml` on it: wall time and peak RSS;
2. `seq2seq-train` of that recipe on the prepared data (on CPU, with a small model so that an
   update is quick: what is timed is the data path): seconds from start to the first update,
   and the process's RSS then, less its model, gradients and Adam state;
3. the same command again with more updates: it continues the run; seconds to its first update.
Prints one JSON object (also to --json).

    python bench/data_scale.py --json data_scale.json            # 4.5M pairs
    python bench/data_scale.py --pairs 200000 --json small.json  # a quick look
"""
from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "configs" / "wmt14_en_de_base.yaml"
SMALL_MODEL = ["device=cpu", "model.d_model=64", "model.n_heads=2", "model.n_encoder_layers=1", "model.n_decoder_layers=1",
               "model.d_ff=128", "optim.max_tokens=4096", "eval.search.max_len=8", "eval.search.beam_size=1"]


def words(n: int, syllables: list[str], rng: np.random.Generator) -> np.ndarray:
    """n distinct pseudo-words, short ones for frequent ranks (as in natural text)."""
    out, seen = [], set()
    while len(out) < n:
        length = 1 + min(int(rng.exponential(1.4)), 5) + (len(out) > 5000)
        w = "".join(syllables[i] for i in rng.integers(0, len(syllables), length))
        if w not in seen:
            seen.add(w)
            out.append(w)
    return np.array(out, dtype=object)


def write_corpus(folder: Path, pairs: int, types: int, seed: int = 0, log=print) -> None:
    """train.{en,de}.gz with `pairs` lines, and newstest2013/newstest2014 of 200 lines each."""
    rng = np.random.default_rng(seed)
    en = words(types, [c + v for c in "bcdfghklmnprstvw" for v in "aeiou"] + ["th", "sh", "ing", "ed"], rng)
    de = words(types, [c + v for c in "bdfghkmnprstwz" for v in "aeiouä"] + ["sch", "ch", "en", "ung"], rng)
    ranks = np.arange(1, types + 1, dtype=np.float64)
    cdf = np.cumsum(ranks ** -1.07)
    cdf /= cdf[-1]
    swap = rng.permutation(types)  # the target side's word for each source word
    for split, n in (("train", pairs), ("newstest2013", 200), ("newstest2014", 200)):
        with gzip.open(folder / f"{split}.en.gz", "wt", compresslevel=1, encoding="utf-8") as fe, \
                gzip.open(folder / f"{split}.de.gz", "wt", compresslevel=1, encoding="utf-8") as fd:
            for start in range(0, n, 200_000):
                m = min(200_000, n - start)
                src_len = np.clip(rng.lognormal(3.15, 0.55, m).astype(int), 1, 200)  # mean about 27
                tgt_len = np.clip((src_len * rng.lognormal(0.0, 0.12, m)).astype(int), 1, 200)
                ids = np.searchsorted(cdf, rng.random(int(src_len.sum()) + int(tgt_len.sum())))
                src_ids, tgt_ids = ids[: src_len.sum()], swap[ids[src_len.sum():]]
                s_bounds, t_bounds = np.cumsum(src_len), np.cumsum(tgt_len)
                fe.write("".join(" ".join(en[src_ids[b - k:b]]) + "\n" for b, k in zip(s_bounds, src_len)))
                fd.write("".join(" ".join(de[tgt_ids[b - k:b]]) + "\n" for b, k in zip(t_bounds, tgt_len)))
                if split == "train":
                    log(f"corpus: {start + m:,} of {n:,} pairs")


def run_until(cmd: list[str], marker: str, env: dict, log_path: Path) -> dict:
    """Run cmd; seconds until a stderr line contains marker and the process's RSS then; wait for it."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    seen, rss, lines = None, None, []
    for line in proc.stderr:
        lines.append(line)
        if seen is None and marker in line:
            seen = time.perf_counter() - start
            rss = _rss_bytes(proc.pid)
    code = proc.wait()
    log_path.write_text("".join(lines))
    if code != 0 or seen is None:
        raise SystemExit(f"{' '.join(cmd)} failed (exit {code}), see {log_path}")
    return {"seconds_to_marker": round(seen, 1), "rss_at_marker_gib": round(rss / 2**30, 3), "wall_s": round(time.perf_counter() - start, 1)}


def _rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--pairs", type=int, default=4_500_000)
    p.add_argument("--types", type=int, default=600_000, help="word types per side")
    p.add_argument("--work", help="folder for the corpus and runs (default: a temporary one)")
    p.add_argument("--json", help="write the JSON here too")
    args = p.parse_args()
    work = Path(args.work or tempfile.mkdtemp(prefix="data-scale-"))
    corpus = work / "corpus"
    corpus.mkdir(parents=True, exist_ok=True)
    log = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    result = {"benchmark": "data_scale", "pairs": args.pairs, "types_per_side": args.types,
              "cpu": f"{platform.machine()} ({os.cpu_count()} cores)", "recipe": str(RECIPE.relative_to(ROOT))}

    def save():
        print(json.dumps(result, indent=1))
        if args.json:
            Path(args.json).write_text(json.dumps(result, indent=1) + "\n")

    start = time.perf_counter()
    if not (corpus / "newstest2014.de.gz").exists():
        write_corpus(corpus, args.pairs, args.types, log=log)
    result["corpus_s"] = round(time.perf_counter() - start, 1)
    result["corpus_gz_mib"] = round(sum(f.stat().st_size for f in corpus.glob("train.*")) / 2**20)
    for old in ("prepared", "run"):  # a corpus is kept for later runs of the benchmark, nothing else
        shutil.rmtree(work / old, ignore_errors=True)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    data = [f"data.path={corpus}", f"data.prepared={work / 'prepared'}"]

    start = time.perf_counter()
    with open(work / "prepare.log", "w") as f:
        subprocess.run([sys.executable, "-m", "train.prepare", str(RECIPE), *data], cwd=ROOT, env=env, check=True,
                       stdout=f, stderr=subprocess.STDOUT)
    result["prepare"] = {"wall_s": round(time.perf_counter() - start, 1),
                         "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20, 3),
                         "log": (work / "prepare.log").read_text().strip().splitlines()[-1]}
    save()

    train = [sys.executable, "-m", "train", str(RECIPE), *data, f"run_dir={work / 'run'}", *SMALL_MODEL]
    first = run_until([*train, "optim.max_steps=2", "eval.every=2"], "step 1/", env, work / "train.log")
    resumed = run_until([*train, "optim.max_steps=4", "eval.every=2", "resume=true"], "step 3/", env, work / "resume.log")
    result["train_first_update"] = first
    result["resume_first_update"] = resumed
    # The small model's weights, gradients and two Adam moments, fp32: subtracted from the RSS.
    import torch

    sys.path.insert(0, str(ROOT))
    from seq2seq.model import Transformer
    from train.config import load_config

    cfg = load_config(str(RECIPE), SMALL_MODEL)
    params = sum(t.numel() for t in Transformer(cfg.model).parameters())
    result["model_and_optimizer_gib"] = round(params * 4 * 4 / 2**30, 3)
    result["train_rss_beyond_model_gib"] = round(first["rss_at_marker_gib"] - result["model_and_optimizer_gib"], 3)
    result["import_torch_rss_gib"] = round(float(subprocess.run(
        [sys.executable, "-c", "import torch, resource; print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)"],
        capture_output=True, text=True, check=True).stdout) / 2**20, 3)
    result["torch"] = torch.__version__
    save()


if __name__ == "__main__":
    main()
