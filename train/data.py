"""Training data: read the splits, train or load the vocabularies, encode, clean, batch."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from seq2seq.batching import pad
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
    src = pad([enc.src[i] for i in indices], pad_id)
    tgt_in = pad([[bos_id] + enc.tgt[i][:-1] for i in indices], pad_id)
    tgt_out = pad([enc.tgt[i] for i in indices], pad_id)
    return src, tgt_in, tgt_out


def read_splits(cfg: DataConfig) -> tuple[Parallel, Parallel]:
    return load_split(cfg, cfg.train), load_split(cfg, cfg.valid)
