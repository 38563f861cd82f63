"""Multi-head attention, free of cache logic: callers decide where K and V come from.

Shapes: B batch of key rows, N query rows (a multiple of B: beams of one sentence share its
keys), T query length, L key length, D d_model, H heads, Dh head dim (D / H).
Masks are boolean and broadcast to (B, H, T, L); True means "may attend".
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


class MultiHeadAttention(nn.Module):
    def __init__(self, d_model: int, n_heads: int, dropout: float = 0.0):
        super().__init__()
        self.n_heads = n_heads
        self.dropout = dropout
        # softmax(q k^T / sqrt(Dh)) v with SDPA's signature; the speed layer may swap it for
        # inference (seq2seq.speed.attention).
        self.kernel = F.scaled_dot_product_attention
        self.q_proj = nn.Linear(d_model, d_model)
        self.k_proj = nn.Linear(d_model, d_model)
        self.v_proj = nn.Linear(d_model, d_model)
        self.out_proj = nn.Linear(d_model, d_model)

    def _split_heads(self, x: Tensor) -> Tensor:
        b, t, d = x.shape
        return x.view(b, t, self.n_heads, d // self.n_heads).transpose(1, 2)  # (B, H, T, Dh)

    def project_q(self, x: Tensor) -> Tensor:
        """x (N, T, D) -> q (N, H, T, Dh)."""
        return self._split_heads(self.q_proj(x))

    def project_kv(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """x (B, L, D) -> k, v, each (B, H, L, Dh)."""
        return self._split_heads(self.k_proj(x)), self._split_heads(self.v_proj(x))

    def project_qkv(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Self-attention: x (N, T, D) -> q, k, v, each (N, H, T, Dh)."""
        return (self.project_q(x), *self.project_kv(x))

    def attend(
        self, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None = None, is_causal: bool = False
    ) -> Tensor:
        """q (N, H, T, Dh), k/v (B, H, L, Dh) with N = B * G -> output (N, T, D).

        When G > 1, the G query rows of a key row are folded into its query length, so the
        beams of a sentence read the sentence's cross-attention K/V without copying them.
        """
        n, h, t, dh = q.shape
        b = k.size(0)
        group = n // b
        if group * b != n:
            raise ValueError(f"{n} query rows do not divide into {b} key rows")
        if group > 1:
            if is_causal:
                raise ValueError("is_causal applies to self-attention, which is never grouped")
            q = q.view(b, group, h, t, dh).transpose(1, 2).reshape(b, h, group * t, dh)
        p = self.dropout if self.training else 0.0
        out = self.kernel(q, k, v, attn_mask=mask, dropout_p=p, is_causal=is_causal)
        if group > 1:
            out = out.view(b, h, group, t, dh).transpose(1, 2).reshape(n, h, t, dh)
        out = out.transpose(1, 2).reshape(n, t, h * dh)  # merge heads: (N, T, D)
        return self.out_proj(out)

    def forward(self, x: Tensor, kv_input: Tensor, mask: Tensor | None = None, is_causal: bool = False) -> Tensor:
        """Plain attention of x (N, T, D) over kv_input (B, L, D); self-attention when they
        are one tensor."""
        if x is kv_input:
            return self.attend(*self.project_qkv(x), mask, is_causal)
        k, v = self.project_kv(kv_input)
        return self.attend(self.project_q(x), k, v, mask, is_causal)
