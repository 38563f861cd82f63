"""Encoder-decoder transformer (Vaswani et al., 2017) with cached incremental decoding.

Shapes: B batch, G hypotheses per sentence (beams), N = B * G decoder rows, S source length,
T target length, D d_model, V target vocabulary.

Training calls forward (teacher forcing: the whole shifted target under a causal mask, no
cache). Inference calls encode once, init_cache once (which projects every layer's
cross-attention K/V) and then step per token. decode is the uncached full-prefix decoder that
the tests use as the reference.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from seq2seq.cache import KVCache
from seq2seq.config import ModelConfig
from seq2seq.embedding import Embedding
from seq2seq.layers import DecoderLayer, EncoderLayer


class Transformer(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.config = cfg
        self.tgt_embed = Embedding(cfg.tgt_vocab_size, cfg.d_model, cfg.pad_id, cfg.max_positions, cfg.dropout)
        if cfg.share_embeddings:
            self.src_embed = self.tgt_embed
        else:
            self.src_embed = Embedding(cfg.src_vocab_size, cfg.d_model, cfg.pad_id, cfg.max_positions, cfg.dropout)
        self.encoder_layers = nn.ModuleList(EncoderLayer(cfg) for _ in range(cfg.n_encoder_layers))
        self.decoder_layers = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.n_decoder_layers))
        # Pre-norm leaves the residual stream unnormalised, so each stack ends with a norm.
        self.encoder_norm = nn.LayerNorm(cfg.d_model) if cfg.norm == "pre" else nn.Identity()
        self.decoder_norm = nn.LayerNorm(cfg.d_model) if cfg.norm == "pre" else nn.Identity()
        self.output_proj = None if cfg.tie_output else nn.Linear(cfg.d_model, cfg.tgt_vocab_size, bias=False)
        self._init_linear_weights()

    def _init_linear_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    def padding_mask(self, src: Tensor) -> Tensor:
        """src (B, S) -> (B, 1, 1, S), True at real tokens."""
        return (src != self.config.pad_id)[:, None, None, :]

    def encode(self, src: Tensor) -> Tensor:
        """src (B, S) token ids, right-padded -> memory (B, S, D)."""
        src_mask = self.padding_mask(src)
        x = self.src_embed(src)
        for layer in self.encoder_layers:
            x = layer(x, src_mask)
        return self.encoder_norm(x)

    def decode(self, tgt_in: Tensor, memory: Tensor, src_mask: Tensor) -> Tensor:
        """Uncached decoder over the whole prefix. tgt_in (N, T), memory (B, S, D) -> (N, T, D)."""
        x = self.tgt_embed(tgt_in)
        for layer in self.decoder_layers:
            x = layer(x, memory, src_mask)
        return self.decoder_norm(x)

    def project(self, hidden: Tensor) -> Tensor:
        """hidden (..., D) -> logits (..., V)."""
        if self.output_proj is None:
            return F.linear(hidden, self.tgt_embed.weight)
        return self.output_proj(hidden)

    def forward(self, src: Tensor, tgt_in: Tensor) -> Tensor:
        """Teacher forcing: src (B, S), tgt_in (B, T) starting with BOS -> logits (B, T, V)."""
        memory = self.encode(src)
        return self.project(self.decode(tgt_in, memory, self.padding_mask(src)))

    def cross_kv(self, memory: Tensor) -> Tensor:
        """Every decoder layer's cross-attention K/V, projected once: memory (B, S, D) ->
        (Y, 2, B, H, S, Dh)."""
        return torch.stack([torch.stack(layer.cross_attn.project_kv(memory)) for layer in self.decoder_layers])

    def init_cache(self, memory: Tensor, src_mask: Tensor, beam_size: int = 1, max_len: int | None = None,
                   zeroed: bool = True) -> KVCache:
        """A cache over memory (B, S, D), src_mask (B, 1, 1, S) for beam_size rows per sentence
        and max_len target positions (default max_positions); zeroed: see KVCache.allocate."""
        max_len = self.config.max_positions if max_len is None else max_len
        if not 0 < max_len <= self.config.max_positions:
            raise ValueError(f"max_len={max_len} must be in [1, max_positions={self.config.max_positions}]")
        return KVCache.allocate(self.cross_kv(memory), src_mask, beam_size, max_len, zeroed)

    def step(self, tokens: Tensor, cache: KVCache) -> Tensor:
        """Decode each row's newest token (N,) at the cache's position; writes its K/V and
        advances the cache -> next-token logits (N, V)."""
        x = self.tgt_embed(tokens.unsqueeze(1), offset=cache.length)  # (N, 1, D)
        for i, layer in enumerate(self.decoder_layers):
            x = layer(x, None, cache.src_mask, cache.layer(i))
        cache.advance()
        return self.project(self.decoder_norm(x[:, 0]))
