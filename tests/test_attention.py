"""SDPA attention equals the explicit softmax(QK^T / sqrt(d)) V it stands for, and so does the
speed layer's products_attention, which CPU inference swaps in."""
import math

import pytest
import torch

from seq2seq.attention import MultiHeadAttention
from seq2seq.speed.attention import products_attention, use_products_attention


def explicit_attention(q, k, v, mask):
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.size(-1))
    scores = scores.masked_fill(~mask, float("-inf"))
    return torch.softmax(scores, dim=-1) @ v


def test_sdpa_matches_explicit_softmax_with_padding_mask():
    torch.manual_seed(0)
    attn = MultiHeadAttention(d_model=32, n_heads=4).eval()
    x, memory = torch.randn(3, 5, 32), torch.randn(3, 7, 32)
    lengths = torch.tensor([7, 4, 1])
    mask = (torch.arange(7) < lengths[:, None])[:, None, None, :]  # (B, 1, 1, L)
    q = attn.project_q(x)
    k, v = attn.project_kv(memory)
    expected = attn.out_proj(explicit_attention(q, k, v, mask).transpose(1, 2).reshape(3, 5, 32))
    torch.testing.assert_close(attn(x, memory, mask), expected, rtol=1e-5, atol=1e-6)


def test_causal_sdpa_matches_explicit_lower_triangular_mask():
    torch.manual_seed(0)
    attn = MultiHeadAttention(d_model=32, n_heads=4).eval()
    x = torch.randn(2, 6, 32)
    q = attn.project_q(x)
    k, v = attn.project_kv(x)
    causal = torch.ones(6, 6, dtype=torch.bool).tril()
    expected = attn.out_proj(explicit_attention(q, k, v, causal).transpose(1, 2).reshape(2, 6, 32))
    torch.testing.assert_close(attn(x, x, is_causal=True), expected, rtol=1e-5, atol=1e-6)


def test_grouped_queries_equal_keys_copied_per_group():
    """Beams folded onto their sentence's K/V give what copying the K/V per beam gives."""
    torch.manual_seed(0)
    attn = MultiHeadAttention(d_model=32, n_heads=4).eval()
    beams, x, memory = 3, torch.randn(2 * 3, 4, 32), torch.randn(2, 5, 32)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0]], dtype=torch.bool)[:, None, None, :]
    k, v = attn.project_kv(memory)
    q = attn.project_q(x)
    grouped = attn.attend(q, k, v, mask)
    copied = attn.attend(
        q, k.repeat_interleave(beams, 0), v.repeat_interleave(beams, 0), mask.repeat_interleave(beams, 0)
    )
    torch.testing.assert_close(grouped, copied, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("causal", [False, True])
def test_products_attention_equals_sdpa_masked_causal_and_grouped(causal):
    torch.manual_seed(0)
    plain = MultiHeadAttention(d_model=32, n_heads=4).eval()
    fast = use_products_attention(MultiHeadAttention(d_model=32, n_heads=4).eval())
    fast.load_state_dict(plain.state_dict())
    assert fast.kernel is products_attention
    if causal:
        x = torch.randn(2, 6, 32)
        torch.testing.assert_close(fast(x, x, is_causal=True), plain(x, x, is_causal=True), rtol=1e-5, atol=1e-6)
        return
    x, memory = torch.randn(2 * 3, 4, 32), torch.randn(2, 5, 32)  # 3 query rows per key row: grouped
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0]], dtype=torch.bool)[:, None, None, :]
    torch.testing.assert_close(fast(x, memory, mask), plain(x, memory, mask), rtol=1e-5, atol=1e-6)


def test_products_attention_refuses_dropout():
    q = torch.randn(1, 2, 3, 8)
    with pytest.raises(ValueError, match="dropout_p must be 0"):
        products_attention(q, q, q, dropout_p=0.1)
