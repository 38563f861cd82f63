"""What the benchmarks against other toolkits share: the grid options, the transformer-base model
exported for them, the token-id map between us and the export, a random source batch, and
timing."""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, installed or not

from seq2seq import ModelConfig, Transformer  # noqa: E402
from seq2seq.checkpoint import inference_state, save_atomic  # noqa: E402
from seq2seq.marian import export_marian, exported_id  # noqa: E402
from seq2seq.tokenizer import Tokenizer, Vocabularies  # noqa: E402


def add_grid_options(p: argparse.ArgumentParser, batches: str) -> None:
    p.add_argument("--lengths", default="32,128", help="forced output lengths")
    p.add_argument("--batches", default=batches)
    p.add_argument("--beams", default="1,4", help="1 runs greedy search, more runs beam search")
    p.add_argument("--src-len", type=int, default=32)
    p.add_argument("--vocab", type=int, default=32000)


def grid(args) -> list[tuple[int, int, int]]:
    """(length, batch, beam) cells in the order they run."""
    ints = lambda text: [int(x) for x in text.split(",")]  # noqa: E731
    return [(length, batch, beam) for length in ints(args.lengths) for batch in ints(args.batches) for beam in ints(args.beams)]


def transformer_base(vocab: int, layers: int = 6, d_model: int = 512) -> Transformer:
    """Post-norm relu transformer with shared tied embeddings (what Marian expresses), random
    weights from seed 0, fp32 on CPU, eval mode."""
    cfg = ModelConfig(
        src_vocab_size=vocab, tgt_vocab_size=vocab, d_model=d_model, n_heads=8, n_encoder_layers=layers,
        n_decoder_layers=layers, d_ff=4 * d_model, share_embeddings=True, dropout=0.0, norm="post",
        activation="relu", max_positions=512,
    )
    torch.manual_seed(0)
    return Transformer(cfg).eval()


def export(model: Transformer, workdir: Path) -> Path:
    """The hf-marian export of a random-weight model, with placeholder vocabulary pieces."""
    vocab = Tokenizer.placeholder(model.config.tgt_vocab_size)
    save_atomic(inference_state(model, Vocabularies(vocab, vocab)), workdir / "model.pt")
    return export_marian(workdir / "model.pt", workdir / "hf")


class IdMap:
    """Our token ids <-> the export's (where <pad> moves last)."""

    def __init__(self, cfg: ModelConfig, device="cpu"):
        self.table = torch.tensor([exported_id(cfg, i) for i in range(cfg.tgt_vocab_size)], device=device)
        self.inverse = torch.argsort(self.table)
        self.pad = exported_id(cfg, cfg.pad_id)

    def to_export(self, ids: torch.Tensor) -> torch.Tensor:
        return self.table[ids]

    def back(self, ids: list[int]) -> list[int]:
        return self.inverse[torch.tensor(ids, dtype=torch.long, device=self.inverse.device)].tolist()


def random_source(batch: int, length: int, vocab: int, eos_id: int) -> torch.Tensor:
    """(batch, length) ids from a fixed seed, no specials but a final EOS."""
    src = torch.randint(4, vocab, (batch, length), generator=torch.Generator().manual_seed(1))
    src[:, -1] = eos_id
    return src


def timed_rounds(fns: dict, repeats: int, only_first: dict | None = None) -> dict:
    """{name: (list of seconds, one per round it ran, and its last result)} of `repeats` rounds
    that each call every fn once, in turn, in the given order and then in reverse on every other
    round: a machine whose speed drifts during a cell slows every toolkit alike, not only the one
    that happened to run then (on our shared 2-core CPU, runs a minute apart differ by 15-50%),
    and neighbours swap who goes first. only_first: {name: n} runs that fn in the first n rounds
    only (a slow peer that is not the one compared closely)."""
    times, outs = {name: [] for name in fns}, {}
    for r in range(repeats):
        for name in (list(fns) if r % 2 == 0 else list(fns)[::-1]):
            if only_first and r >= only_first.get(name, repeats):
                continue
            start = time.perf_counter()
            outs[name] = fns[name]()
            times[name].append(time.perf_counter() - start)
    return {name: (times[name], outs[name]) for name in fns}


def paired_ratio(theirs: list, ours: list) -> float:
    """Median over rounds of their seconds / ours in the same round: each ratio compares two runs
    seconds apart, so a drift in the machine's speed between rounds cancels."""
    return statistics.median(t / o for t, o in zip(theirs, ours))


def timed(fn, repeats: int, sync=lambda: None):
    """Median seconds of `repeats` calls, and the last call's result."""
    times, out = [], None
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        out = fn()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times), out
