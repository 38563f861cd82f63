"""Token embeddings scaled by sqrt(d_model) plus sinusoidal positions (Vaswani et al., 2017).

Shapes: B batch, T sequence length, D d_model, P max positions.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn


def sinusoidal_table(n_positions: int, d_model: int) -> Tensor:
    """(P, D): sin on even channels, cos on odd ones, wavelengths from 2*pi to 10000*2*pi."""
    position = torch.arange(n_positions, dtype=torch.float64).unsqueeze(1)
    inv_freq = torch.exp(torch.arange(0, d_model, 2, dtype=torch.float64) * (-math.log(10000.0) / d_model))
    table = torch.zeros(n_positions, d_model, dtype=torch.float64)
    table[:, 0::2] = torch.sin(position * inv_freq)
    table[:, 1::2] = torch.cos(position * inv_freq[: d_model // 2])
    return table.float()


class Embedding(nn.Module):
    def __init__(self, vocab_size: int, d_model: int, pad_id: int, max_positions: int, dropout: float):
        super().__init__()
        self.tokens = nn.Embedding(vocab_size, d_model, padding_idx=pad_id)
        nn.init.normal_(self.tokens.weight, mean=0.0, std=d_model**-0.5)
        with torch.no_grad():
            self.tokens.weight[pad_id].zero_()
        self.scale = math.sqrt(d_model)
        self.dropout = nn.Dropout(dropout)
        # Not a parameter and not saved: rebuilt from the config, and follows .to(device/dtype).
        self.register_buffer("positions", sinusoidal_table(max_positions, d_model), persistent=False)

    @property
    def weight(self) -> Tensor:
        return self.tokens.weight

    def forward(self, tokens: Tensor, offset: int | Tensor = 0) -> Tensor:
        """tokens (B, T) at positions offset..offset+T-1 -> (B, T, D). A (1,) tensor offset, one
        token a step, reads its position by index, so the step runs without a host value."""
        t = tokens.size(1)
        if isinstance(offset, Tensor):
            return self.dropout(self.tokens(tokens) * self.scale + self.positions.index_select(0, offset))
        if offset + t > self.positions.size(0):
            raise ValueError(
                f"sequence of {offset + t} tokens exceeds max_positions={self.positions.size(0)}"
            )
        x = self.tokens(tokens) * self.scale + self.positions[offset : offset + t]
        return self.dropout(x)
