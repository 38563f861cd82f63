"""Training data: read the splits, train or load the vocabularies, encode, clean, batch."""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from functools import cached_property

import torch

from seq2seq.data import DataConfig, Parallel, clean_indices, load_split
from seq2seq.tokenizer import Vocabularies


@dataclass
class Encoded:
    """Subword ids of a split, each sequence ending with EOS."""

    src: list[list[int]]
    tgt: list[list[int]]

    def lengths(self) -> tuple[list[int], list[int]]:
        """Padded widths per pair: source ids + EOS; decoder BOS + ids, which is as long."""
        return [len(s) for s in self.src], [len(t) for t in self.tgt]

    @cached_property
    def packed(self) -> tuple[Flat, Flat]:
        return Flat(self.src), Flat(self.tgt)


class Flat:
    """One side's ids in a single tensor, so a batch is padded by indexing, not a Python loop
    over its rows (about 30 ms for a 16k-token batch, which the GPU would wait for)."""

    def __init__(self, seqs: list[list[int]]):
        self.lengths = torch.tensor([len(s) for s in seqs], dtype=torch.long)
        self.starts = torch.cumsum(self.lengths, 0) - self.lengths
        self.ids = torch.tensor(list(itertools.chain.from_iterable(seqs)), dtype=torch.long)

    def pad(self, rows: torch.Tensor, pad_id: int, prefix: int | None = None, drop_last: bool = False) -> torch.Tensor:
        """(B, W) ids of these rows, right-padded; with prefix, that id first; with drop_last,
        each row's last id (EOS) left out. W is the longest row's resulting length."""
        lengths = self.lengths[rows] - int(drop_last)
        shift = int(prefix is not None)
        width = int(lengths.max()) + shift
        pos = torch.arange(width) - shift  # position within the stored row
        valid = (pos >= 0) & (pos < lengths[:, None])
        src = (self.starts[rows, None] + pos).clamp_(0, max(len(self.ids) - 1, 0))
        out = torch.where(valid, self.ids[src], pad_id)
        if prefix is not None:
            out[:, 0] = prefix
        return out


def encode(vocab: Vocabularies, corpus: Parallel, eos_id: int, max_len: int | None = None) -> Encoded:
    """Ids + EOS per side; max_len cuts longer sequences (validation data is never dropped,
    but the model cannot read past its positions)."""
    return Encoded([s[:max_len] + [eos_id] for s in vocab.src.encode_batch(corpus.src)],
                   [t[:max_len] + [eos_id] for t in vocab.tgt.encode_batch(corpus.tgt)])


def clean_training(enc: Encoded, cfg: DataConfig) -> tuple[Encoded, dict]:
    """Drop empty, over-long and badly proportioned pairs (lengths without EOS); report counts."""
    keep, dropped = clean_indices([len(s) - 1 for s in enc.src], [len(t) - 1 for t in enc.tgt], cfg.max_len, cfg.max_ratio)
    return Encoded([enc.src[i] for i in keep], [enc.tgt[i] for i in keep]), dropped


def make_batch(enc: Encoded, indices: list[int], pad_id: int, bos_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """src (B, S); tgt_in (B, T) = BOS + ids; tgt_out (B, T) = ids + EOS."""
    src, tgt = enc.packed
    rows = torch.tensor(indices, dtype=torch.long)
    return src.pad(rows, pad_id), tgt.pad(rows, pad_id, prefix=bos_id, drop_last=True), tgt.pad(rows, pad_id)


def read_splits(cfg: DataConfig) -> tuple[Parallel, Parallel]:
    return load_split(cfg, cfg.train), load_split(cfg, cfg.valid)
