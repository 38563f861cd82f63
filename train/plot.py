"""Training curves as a PNG: loss (train and validation) and validation BLEU against updates."""
from __future__ import annotations

import json
from pathlib import Path


def read_metrics(metrics_path: Path) -> tuple[list[dict], list[dict]]:
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
    train, valid = read_metrics(metrics_path)
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
    plot_runs(member_metrics, [f"member {k}" for k in range(1, len(member_metrics) + 1)], out_path,
              (f"ensemble ({ensemble_bleu:.2f})", ensemble_bleu))


def plot_runs(metrics: list[Path], labels: list[str], out_path: Path, bleu_line: tuple[str, float] | None = None) -> None:
    """Several runs' curves in one figure (train loss as lines, validation NLL and BLEU as dots);
    bleu_line: (label, value) drawn across the BLEU panel."""
    plt, fig, (ax_loss, ax_bleu) = _figure()
    for k, (path, label) in enumerate(zip(metrics, labels)):
        train, valid = read_metrics(path)
        ax_loss.plot([r["step"] for r in train], [r["loss"] for r in train], lw=1, color=f"C{k}", label=f"{label} train")
        ax_loss.plot([r["step"] for r in valid], [r["valid_loss"] for r in valid], "o-", ms=3, color=f"C{k}", alpha=0.6)
        ax_bleu.plot([r["step"] for r in valid], [r["bleu"] for r in valid], "o-", ms=3, color=f"C{k}", label=label)
    if bleu_line is not None:
        ax_bleu.axhline(bleu_line[1], color="k", ls="--", label=bleu_line[0])
    ax_loss.set(xlabel="update", ylabel="loss per target token", title="Loss (lines: train; dots: validation NLL)")
    ax_bleu.set(xlabel="update", ylabel="BLEU", title="Validation BLEU (sacrebleu)")
    ax_loss.legend()
    ax_bleu.legend()
    _save(plt, fig, (ax_loss, ax_bleu), out_path)
