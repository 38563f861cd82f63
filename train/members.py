"""Several models of one recipe, trained side by side and translated as an ensemble.

With `members: N` a recipe trains N models that differ only in their seed (seed, seed + 1, ...),
each by its own seq2seq-train process in run_dir/member_K (recipe.yaml, train.log, the usual run
files). On CUDA they train at the same time: a small model's loop leaves the GPU mostly idle while
Python prepares its steps, so N of them take far less than N times as long. On CPU they train one
after another. Then run_dir/checkpoints/final.pt becomes the ensemble of the members' final.pt,
and is validated like a single model's.
"""
from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import yaml
from tqdm import tqdm

from infer.evaluate import score
from infer.translator import Translator
from seq2seq.checkpoint import ensemble, load, save_atomic
from seq2seq.data import load_split
from train.config import TrainConfig, to_dict
from train.plot import plot_members
from train.progress import best_translations
from train.trainer import refuse_other_recipe


class MemberError(ChildProcessError):
    """A member's training failed; the message names its log."""


def member_configs(cfg: TrainConfig) -> list[TrainConfig]:
    """One single-model recipe per member: its own seed and run_dir; resume (with cfg.resume)
    where it has a run."""
    out = []
    for k in range(1, cfg.members + 1):
        run_dir = Path(cfg.run_dir) / f"member_{k}"
        resume = cfg.resume and (run_dir / "checkpoints" / "last.pt").exists()
        out.append(dataclasses.replace(cfg, members=1, seed=cfg.seed + k - 1, run_dir=str(run_dir), resume=resume))
    return out


def train_members(cfg: TrainConfig, device: str, log: Callable[[str], None] = tqdm.write) -> None:
    """Train every member, then build and validate their ensemble."""
    members = member_configs(cfg)
    for m in members:  # before any member starts, not after some have finished
        last = Path(m.run_dir) / "checkpoints" / "last.pt"
        if last.exists() and not cfg.resume:  # a member continues a run of its own recipe only
            refuse_other_recipe(last, load(last).get("train_config", {}), m)
    for m in members:
        Path(m.run_dir).mkdir(parents=True, exist_ok=True)
        (Path(m.run_dir) / "recipe.yaml").write_text(yaml.safe_dump(to_dict(m), sort_keys=False), encoding="utf-8")
    together = device == "cuda"
    log(f"training {cfg.members} members ({'side by side' if together else 'one after another'}) in {cfg.run_dir}/member_*")
    bar = tqdm(total=cfg.members * cfg.optim.max_steps, dynamic_ncols=True, unit="upd", desc="members",
               disable=not sys.stderr.isatty())  # a log file gets the members' lines, not bar frames
    try:
        for group in [members] if together else [[m] for m in members]:
            _run(group, members, bar)
    finally:
        bar.close()
    _ensemble_and_validate(cfg, members, device, log)


def _run(members: list[TrainConfig], everyone: list[TrainConfig], bar: tqdm) -> None:
    """Start these members' processes and wait for all of them; the bar counts everyone's steps."""
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // len(members))))  # not N times all cores
    procs = []
    for m in members:
        logf = open(Path(m.run_dir) / "train.log", "a", encoding="utf-8")  # a resumed member adds to its log
        cmd = [sys.executable, "-m", "train", str(Path(m.run_dir) / "recipe.yaml"), "--no-test"]
        procs.append((m, subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT, env=env), logf))
    try:
        while any(p.poll() is None for _, p, _ in procs):
            _show_steps(everyone, bar)
            time.sleep(1.0)
    except KeyboardInterrupt:  # the members got the Ctrl-C too: let them save their checkpoints
        for _, p, _ in procs:
            p.wait()
        raise
    finally:
        for _, p, logf in procs:
            if p.poll() is None:
                p.terminate()
            logf.close()
    _show_steps(everyone, bar)
    if any(p.returncode == 130 for _, p, _ in procs):  # a member saved last.pt on an interrupt
        raise KeyboardInterrupt
    for m, p, _ in procs:
        if p.returncode != 0:
            log_path = Path(m.run_dir) / "train.log"
            lines = log_path.read_text(encoding="utf-8", errors="replace").strip().splitlines()
            raise MemberError(f"{log_path}: member training failed (exit {p.returncode}): {lines[-1] if lines else 'no output'}")


def _show_steps(members: list[TrainConfig], bar: tqdm) -> None:
    done = sum(_last_step(Path(m.run_dir) / "metrics.jsonl") for m in members)
    bar.update(max(0, done - bar.n))


def _last_step(metrics: Path) -> int:
    if not metrics.exists():
        return 0
    steps = [json.loads(line)["step"] for line in metrics.read_text().splitlines() if line.endswith("}")]
    return max(steps, default=0)


def _ensemble_and_validate(cfg: TrainConfig, members: list[TrainConfig], device: str, log) -> None:
    finals = [Path(m.run_dir) / "checkpoints" / "final.pt" for m in members]
    final = Path(cfg.run_dir) / "checkpoints" / "final.pt"
    save_atomic({**ensemble(finals), "train_config": to_dict(cfg)}, final)  # evaluate reads its eval.search
    valid = load_split(cfg.data, cfg.data.valid)
    translator = Translator.from_checkpoint(final, device=device)
    hyps = best_translations(translator, valid.src, cfg.eval.search, cfg.eval.max_tokens, "ensemble validation")
    scores = score(hyps, [valid.tgt], with_ter=False)
    singles = [_best_bleu(Path(m.run_dir) / "metrics.jsonl") for m in members]
    record = {"kind": "valid_ensemble", "members": len(members), "member_best_bleu": singles, **scores,
              "bleu_lc": score(hyps, [valid.tgt], lowercase=True, with_ter=False)["bleu"]}
    with (Path(cfg.run_dir) / "metrics.jsonl").open("a") as f:
        f.write(json.dumps(record) + "\n")
    plot_members([Path(m.run_dir) / "metrics.jsonl" for m in members], scores["bleu"], Path(cfg.run_dir) / "curves.png")
    log(f"ensemble of {len(members)}: valid BLEU {scores['bleu']:.2f} chrF {scores['chrf']:.2f}"
        f" (members {', '.join(f'{b:.2f}' for b in singles)}); final checkpoint: {final}")


def _best_bleu(metrics: Path) -> float:
    records = [json.loads(line) for line in metrics.read_text().splitlines()]
    return max(r["bleu"] for r in records if r["kind"] in ("valid", "valid_averaged"))
