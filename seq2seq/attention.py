"""Multi-head attention, free of cache logic: callers decide where K and V come from.

Shapes: B batch of key rows, N query rows (a multiple of B: beams of one sentence share its
keys), T query length, L key length, D d_model, H heads, Dh head dim (D / H).
Masks are boolean and broadcast to (B, H, T, L); True means "may attend".
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from seq2seq import native

# Query rows (per key row, beams folded in) up to REDUCE_QUERIES, over keys up to REDUCE_KEYS, in a
# compiled CPU step, attend by plain reductions that inductor fuses, instead of the SDPA kernel,
# which is tiled for long queries. In A/B runs in one process (2-core AMD EPYC), compiled
# decoding gained 5% at batch 1 greedy, 1.6% at batch 32 greedy and 1.5% at batch 32 beam 4 at
# 32 output tokens (beams: 4 queries over 128 keys), and lost 2% at batch 32 beam 4 at 128
# tokens, where beams read up to 512 keys: inductor's loops redo a horizontal sum per key.
# Values laid out positions-last (seq2seq.cache.StaticCache(values_last=True)) lift the key
# limit: the weighted sum then reads positions contiguously, and the reductions beat SDPA (on
# values laid out as usual) at every size timed, 64 to 640 keys, batch 1 and 32, 1 and 4 queries
# (1.1-1.9x; SDPA on such values ran 3.3x slower still, at 640 keys).
REDUCE_QUERIES = 16
REDUCE_KEYS = 128

# From this many key rows (sentences) such a step attends through the native kernel instead
# (seq2seq/csrc/masked_attention.cpp), where seq2seq.native has loaded it: it reads keys only up
# to the last position the mask opens. In A/B runs of compiled decoding in one process, 32
# sentences gained 10% at beam 4 and stayed level at greedy (32 output tokens); 1 sentence lost
# 3-7%, where inductor fuses the reductions into the loops around them.
NATIVE_KEY_ROWS = 8


def native_attention(key_rows: int, head_dim: int, dtype: torch.dtype) -> bool:
    """Whether a compiled CPU step of few queries over key_rows rows attends natively."""
    return (key_rows >= NATIVE_KEY_ROWS and head_dim % 8 == 0 and head_dim <= 256 and dtype == torch.float32
            and native.ready())


def attend_by_reduction(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None) -> Tensor:
    """softmax(q k^T / sqrt(Dh)) v, masked, as sums over broadcast products, for torch.compile to
    fuse into loops that read K and V once; eager PyTorch would build (B, H, T, L, Dh) products.
    q (B, H, T, Dh), k/v (B, H, L, Dh), mask broadcast to (B, H, T, L) -> (B, H, T, Dh)."""
    scores = (q.unsqueeze(3) * k.unsqueeze(2)).sum(-1) * q.size(-1) ** -0.5  # (B, H, T, L)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    # Normalised after the weighted sum: one division per output, not one per key and output.
    weights = (scores - scores.amax(-1, keepdim=True)).exp()
    return (weights.unsqueeze(-1) * v.unsqueeze(2)).sum(3) / weights.sum(-1, keepdim=True)


class MultiHeadAttention(nn.Module):
    def __init__(self, d_model: int, n_heads: int, dropout: float = 0.0):
        super().__init__()
        self.n_heads = n_heads
        self.dropout = dropout
        self.q_proj = nn.Linear(d_model, d_model)
        self.k_proj = nn.Linear(d_model, d_model)
        self.v_proj = nn.Linear(d_model, d_model)
        self.out_proj = nn.Linear(d_model, d_model)
        # Inference may set one projection for q, k and v of self-attention (seq2seq.packed does):
        # one weight read instead of three. Training never does; the three above stay the weights.
        self.qkv_proj: nn.Module | None = None

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
        if self.qkv_proj is None:
            return (self.project_q(x), *self.project_kv(x))
        q, k, v = self.qkv_proj(x).chunk(3, dim=-1)
        return self._split_heads(q), self._split_heads(k), self._split_heads(v)

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
        values_last = v.stride(2) == 1 and v.size(3) > 1
        few_queries = (torch.compiler.is_compiling() and not self.training and not is_causal
                       and q.device.type == "cpu" and q.size(2) <= REDUCE_QUERIES)
        if few_queries and native_attention(b, dh, q.dtype):
            # Reads keys only up to the last position the mask opens (seq2seq/csrc/masked_attention.cpp).
            mask = mask if mask is not None else torch.ones(1, 1, 1, k.size(2), dtype=torch.bool, device=q.device)
            out = torch.ops.seq2seq.masked_attention(q, k, v, mask)
        elif few_queries and (k.size(2) <= REDUCE_KEYS or values_last):
            out = attend_by_reduction(q, k, v, mask)
        else:
            p = self.dropout if self.training else 0.0
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p, is_causal=is_causal)
        if group > 1:
            out = out.view(b, h, group, t, dh).transpose(1, 2).reshape(n, h, t, dh)
        out = out.transpose(1, 2).reshape(n, t, h * dh)  # merge heads: (N, T, D)
        return self.out_proj(out)

    def forward(self, x: Tensor, kv_input: Tensor, mask: Tensor | None = None, is_causal: bool = False) -> Tensor:
        """Plain attention of x (N, T, D) over kv_input (B, L, D)."""
        if kv_input is x and self.qkv_proj is not None:
            q, k, v = self.project_qkv(x)
        else:  # k, v, then q: training's float results do not depend on which path exists
            k, v = self.project_kv(kv_input)
            q = self.project_q(x)
        return self.attend(q, k, v, mask, is_causal)
