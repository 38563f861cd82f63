"""Training data: the prepared training split (train.prepare), the validation split encoded in
memory, and padded batches of either."""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import torch

from seq2seq.data import Parallel
from seq2seq.prepared import Side
from seq2seq.tokenizer import Vocabularies


@dataclass
class Encoded:
    """Subword ids of a split held in memory, each sequence ending with EOS."""

    src: list[list[int]]
    tgt: list[list[int]]

    @cached_property
    def sides(self) -> tuple[Side, Side]:
        return Side.from_lists(self.src), Side.from_lists(self.tgt)


def encode(vocab: Vocabularies, corpus: Parallel, eos_id: int, max_len: int | None = None) -> Encoded:
    """Ids + EOS per side; max_len cuts longer sequences (validation data is never dropped,
    but the model cannot read past its positions)."""
    return Encoded([s[:max_len] + [eos_id] for s in vocab.src.encode_batch(corpus.src)],
                   [t[:max_len] + [eos_id] for t in vocab.tgt.encode_batch(corpus.tgt)])


def make_batch(src: Side, tgt: Side, indices, pad_id: int, bos_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Rows `indices` of a split's two sides -> src (B, S); tgt_in (B, T) = BOS + ids;
    tgt_out (B, T) = ids + EOS."""
    rows = torch.as_tensor(indices, dtype=torch.long)
    return src.pad(rows, pad_id), tgt.pad(rows, pad_id, prefix=bos_id, drop_last=True), tgt.pad(rows, pad_id)
