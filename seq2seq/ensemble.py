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


def check_members(configs: list[ModelConfig]) -> None:
    """ValueError naming the first member whose ids differ from member 1's."""
    if not configs:
        raise ValueError("an ensemble needs at least one model")
    for i, cfg in enumerate(configs[1:], 2):
        for key in SHARED_KEYS:
            if getattr(cfg, key) != getattr(configs[0], key):
                raise ValueError(f"ensemble member {i}: {key}={getattr(cfg, key)}, member 1 has {getattr(configs[0], key)}")


class Ensemble(nn.Module):
    def __init__(self, members: list[Transformer]):
        super().__init__()
        check_members([m.config for m in members])
        self.members = nn.ModuleList(members)

    @property
    def config(self) -> ModelConfig:
        """What the searches read: the shared ids, and the positions every member can attend to."""
        return dataclasses.replace(self.members[0].config, max_positions=min(m.config.max_positions for m in self.members))

    def __len__(self) -> int:
        return len(self.members)
