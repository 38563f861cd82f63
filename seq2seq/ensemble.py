"""Several trained transformers decoded as one model, as fairseq and OpenNMT-py ensembles are:
every step averages the members' next-token probabilities. The members must share their
vocabularies and special ids; widths, depths and positions may differ.

Shapes: N decoder rows, V target vocabulary.
"""
from __future__ import annotations

import dataclasses

from torch import nn

from seq2seq.config import ModelConfig
from seq2seq.model import Transformer

# Every member reads the same source ids and writes the same target ids.
SHARED_KEYS = ("src_vocab_size", "tgt_vocab_size", "pad_id", "bos_id", "eos_id")


class Ensemble(nn.Module):
    def __init__(self, members: list[Transformer]):
        super().__init__()
        if not members:
            raise ValueError("an ensemble needs at least one model")
        first = members[0].config
        for i, m in enumerate(members[1:], 2):
            for key in SHARED_KEYS:
                if getattr(m.config, key) != getattr(first, key):
                    raise ValueError(f"ensemble member {i}: {key}={getattr(m.config, key)}, member 1 has {getattr(first, key)}")
        self.members = nn.ModuleList(members)

    @property
    def config(self) -> ModelConfig:
        """What the searches read: the shared ids, and the positions every member can attend to."""
        return dataclasses.replace(self.members[0].config, max_positions=min(m.config.max_positions for m in self.members))

    def __len__(self) -> int:
        return len(self.members)
