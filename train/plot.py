"""Training curves as a PNG: loss (train and validation) and validation BLEU against updates."""
from __future__ import annotations

import json
from pathlib import Path


def _records(metrics_path: Path) -> tuple[list[dict], list[dict]]:
    """The train and valid records of a metrics.jsonl."""
    train, valid = [], []
    if metrics_path.exists():
        for line in metrics_path.read_text().splitlines():
            record = json.loads(line)
            if record["kind"] == "train":
                train.append(record)
            elif record["kind"] == "valid":
                valid.append(record)
    return train, valid


def _figure():
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    return plt, *plt.subplots(1, 2, figsize=(11, 4))


def _save(plt, fig, axes, out_path: Path) -> None:
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.tight_layout()
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_path, dpi=100)
    plt.close(fig)


def plot_metrics(metrics_path: Path, out_path: Path) -> None:
    train, valid = _records(metrics_path)
    plt, fig, (ax_loss, ax_bleu) = _figure()
    if train:
        ax_loss.plot([r["step"] for r in train], [r["loss"] for r in train], label="train (label-smoothed)", lw=1)
    if valid:
        ax_loss.plot([r["step"] for r in valid], [r["valid_loss"] for r in valid], "o-", label="validation (NLL)")
        ax_bleu.plot([r["step"] for r in valid], [r["bleu"] for r in valid], "o-", color="C2")
    ax_loss.set(xlabel="update", ylabel="loss per target token", title="Loss")
    ax_loss.legend()
    ax_bleu.set(xlabel="update", ylabel="BLEU", title="Validation BLEU (sacrebleu)")
    _save(plt, fig, (ax_loss, ax_bleu), out_path)


def plot_members(member_metrics: list[Path], ensemble_bleu: float, out_path: Path) -> None:
    """Every member's curves in one figure, with the ensemble's validation BLEU as a line."""
    plt, fig, (ax_loss, ax_bleu) = _figure()
    for k, path in enumerate(member_metrics, 1):
        train, valid = _records(path)
        ax_loss.plot([r["step"] for r in train], [r["loss"] for r in train], lw=1, color=f"C{k - 1}", label=f"member {k} train")
        ax_loss.plot([r["step"] for r in valid], [r["valid_loss"] for r in valid], "o-", ms=3, color=f"C{k - 1}", alpha=0.6)
        ax_bleu.plot([r["step"] for r in valid], [r["bleu"] for r in valid], "o-", ms=3, color=f"C{k - 1}", label=f"member {k}")
    ax_bleu.axhline(ensemble_bleu, color="k", ls="--", label=f"ensemble ({ensemble_bleu:.2f})")
    ax_loss.set(xlabel="update", ylabel="loss per target token", title="Loss (lines: train; dots: validation NLL)")
    ax_bleu.set(xlabel="update", ylabel="BLEU", title="Validation BLEU (sacrebleu)")
    ax_loss.legend()
    ax_bleu.legend()
    _save(plt, fig, (ax_loss, ax_bleu), out_path)
