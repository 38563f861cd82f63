"""Model configuration: a frozen dataclass, the single source of truth for architecture."""
from __future__ import annotations

from dataclasses import dataclass

ACTIVATIONS = ("relu", "gelu")
NORMS = ("post", "pre")


@dataclass(frozen=True)
class ModelConfig:
    src_vocab_size: int = 32000  # source vocabulary size (joint vocab: equal to tgt_vocab_size)
    tgt_vocab_size: int = 32000  # target vocabulary size
    d_model: int = 512  # width of every residual stream
    n_heads: int = 8  # attention heads; must divide d_model
    n_encoder_layers: int = 6
    n_decoder_layers: int = 6
    d_ff: int = 2048  # hidden width of the position-wise feed-forward block
    dropout: float = 0.1  # on embeddings, sublayer outputs and the feed-forward hidden layer
    attn_dropout: float = 0.0  # on attention weights
    activation: str = "relu"  # "relu" (the paper) or "gelu"
    norm: str = "post"  # "post" (the paper: norm after the residual add) or "pre"
    tie_output: bool = True  # decoder input embedding doubles as the output projection
    share_embeddings: bool = False  # one table for source and target (joint vocabulary)
    max_positions: int = 1024  # longest source or target sequence, in tokens
    pad_id: int = 0
    bos_id: int = 1
    eos_id: int = 2

    def __post_init__(self) -> None:
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model={self.d_model} is not divisible by n_heads={self.n_heads}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation={self.activation!r}: expected one of {ACTIVATIONS}")
        if self.norm not in NORMS:
            raise ValueError(f"norm={self.norm!r}: expected one of {NORMS}")
        if self.share_embeddings and self.src_vocab_size != self.tgt_vocab_size:
            raise ValueError(
                f"share_embeddings needs equal vocab sizes, got src_vocab_size={self.src_vocab_size}"
                f" and tgt_vocab_size={self.tgt_vocab_size}"
            )
        for name in ("src_vocab_size", "tgt_vocab_size", "d_model", "n_heads", "d_ff", "max_positions"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name}={getattr(self, name)} must be positive")
        for name in ("n_encoder_layers", "n_decoder_layers"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be at least 1")
        for name in ("dropout", "attn_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name}={getattr(self, name)} must be in [0, 1)")
        specials = {"pad_id": self.pad_id, "bos_id": self.bos_id, "eos_id": self.eos_id}
        for name, value in specials.items():
            if not 0 <= value < min(self.src_vocab_size, self.tgt_vocab_size):
                raise ValueError(f"{name}={value} is outside the vocabulary")
        if len(set(specials.values())) != 3:
            raise ValueError(f"pad_id, bos_id and eos_id must differ, got {specials}")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads
