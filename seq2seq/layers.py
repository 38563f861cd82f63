"""Encoder and decoder layers, with post-norm (the paper) or pre-norm residual blocks.

Shapes: B batch, N decoder rows (B * beams), S source length, T target length, D d_model.
src_mask (B, 1, 1, S) is True at real source tokens.
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from seq2seq.attention import MultiHeadAttention
from seq2seq.cache import LayerCache
from seq2seq.config import ModelConfig


class FeedForward(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.fc1 = nn.Linear(cfg.d_model, cfg.d_ff)
        self.fc2 = nn.Linear(cfg.d_ff, cfg.d_model)
        self.activation = F.gelu if cfg.activation == "gelu" else F.relu
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.dropout(self.activation(self.fc1(x))))


class EncoderLayer(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.pre_norm = cfg.norm == "pre"
        self.self_attn = MultiHeadAttention(cfg.d_model, cfg.n_heads, cfg.attn_dropout)
        self.ff = FeedForward(cfg)
        self.norm1 = nn.LayerNorm(cfg.d_model)
        self.norm2 = nn.LayerNorm(cfg.d_model)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: Tensor, src_mask: Tensor) -> Tensor:
        """x (B, S, D) -> (B, S, D)."""
        if self.pre_norm:
            h = self.norm1(x)
            x = x + self.dropout(self.self_attn(h, h, src_mask))
            x = x + self.dropout(self.ff(self.norm2(x)))
        else:
            x = self.norm1(x + self.dropout(self.self_attn(x, x, src_mask)))
            x = self.norm2(x + self.dropout(self.ff(x)))
        return x


class DecoderLayer(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.pre_norm = cfg.norm == "pre"
        self.self_attn = MultiHeadAttention(cfg.d_model, cfg.n_heads, cfg.attn_dropout)
        self.cross_attn = MultiHeadAttention(cfg.d_model, cfg.n_heads, cfg.attn_dropout)
        self.ff = FeedForward(cfg)
        self.norm1 = nn.LayerNorm(cfg.d_model)
        self.norm2 = nn.LayerNorm(cfg.d_model)
        self.norm3 = nn.LayerNorm(cfg.d_model)
        self.dropout = nn.Dropout(cfg.dropout)

    def _self_attention(self, h: Tensor, cache: LayerCache | None) -> Tensor:
        q, k, v = self.self_attn.project_qkv(h)  # newest positions only when cached
        if cache is None:
            return self.self_attn.attend(q, k, v, is_causal=True)
        k, v = cache.append(k, v)  # every slot's first `span` positions
        return self.self_attn.attend(q, k, v, cache.self_mask())

    def _cross_attention(self, h: Tensor, memory: Tensor | None, src_mask: Tensor, cache: LayerCache | None) -> Tensor:
        # Cached decoding reads K/V projected once per sentence; training projects the memory.
        k, v = cache.cross_kv if cache is not None else self.cross_attn.project_kv(memory)
        return self.cross_attn.attend(self.cross_attn.project_q(h), k, v, src_mask)

    def forward(
        self, x: Tensor, memory: Tensor | None, src_mask: Tensor, cache: LayerCache | None = None
    ) -> Tensor:
        """x (N, T, D); memory (B, S, D), or None when the cache holds its K/V -> (N, T, D)."""
        if self.pre_norm:
            x = x + self.dropout(self._self_attention(self.norm1(x), cache))
            x = x + self.dropout(self._cross_attention(self.norm2(x), memory, src_mask, cache))
            x = x + self.dropout(self.ff(self.norm3(x)))
        else:
            x = self.norm1(x + self.dropout(self._self_attention(x, cache)))
            x = self.norm2(x + self.dropout(self._cross_attention(x, memory, src_mask, cache)))
            x = self.norm3(x + self.dropout(self.ff(x)))
        return x
