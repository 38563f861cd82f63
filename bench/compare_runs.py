"""Two or more training runs side by side: their loss and validation BLEU at the same updates,
as JSON, and their curves in one PNG. For runs that should train alike, such as two GPUs through
torchrun against one GPU accumulating the same global batch:

    seq2seq-train configs/multi30k_de_en.yaml members=1 optim.accum_steps=2 run_dir=runs/one
    torchrun --standalone --nproc_per_node 2 -m train configs/multi30k_de_en.yaml members=1 run_dir=runs/two
    python bench/compare_runs.py runs/one runs/two --png docs/bench/curves_one_two.png

Reads each run's metrics.jsonl (train records every logged update, valid records every
validation). Prints one JSON object: per shared update, each run's loss; per shared validation,
each run's NLL and BLEU; and the largest differences from the first run.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from train.plot import plot_runs, read_metrics  # noqa: E402


def compare(runs: list[Path]) -> dict:
    """runs: run folders -> the comparison (see the module docstring)."""
    records = []
    for run in runs:
        path = run / "metrics.jsonl"
        if not path.exists():
            raise SystemExit(f"bench/compare_runs.py: {path}: no such file (is {run} a run folder?)")
        train, valid = read_metrics(path)
        records.append(({r["step"]: r for r in train}, {r["step"]: r for r in valid}))
    shared_train = sorted(set.intersection(*(set(t) for t, _ in records)))
    shared_valid = sorted(set.intersection(*(set(v) for _, v in records)))
    loss = [{"step": s, "loss": [t[s]["loss"] for t, _ in records]} for s in shared_train]
    valid = [{"step": s, "valid_loss": [v[s]["valid_loss"] for _, v in records], "bleu": [v[s]["bleu"] for _, v in records]}
             for s in shared_valid]

    def largest(rows: list[dict], key: str) -> float | None:
        return max((abs(x - r[key][0]) for r in rows for x in r[key][1:]), default=None)

    return {"runs": [str(r) for r in runs], "loss": loss, "valid": valid,
            "max_loss_difference": largest(loss, "loss"), "max_valid_loss_difference": largest(valid, "valid_loss"),
            "max_bleu_difference": largest(valid, "bleu")}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("runs", nargs="+", type=Path, help="run folders (run_dir of seq2seq-train)")
    p.add_argument("--png", type=Path, help="also draw the runs' curves into this PNG")
    args = p.parse_args()
    if len(args.runs) < 2:
        p.error("give at least two runs")
    out = compare(args.runs)
    if args.png:
        plot_runs([r / "metrics.jsonl" for r in args.runs], [r.name for r in args.runs], args.png)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
