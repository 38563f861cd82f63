"""SDPA attention equals the explicit softmax(QK^T / sqrt(d)) V it stands for."""
import math

import pytest
import torch

from seq2seq.attention import MultiHeadAttention, attend_by_reduction


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


def test_attention_by_reduction_matches_explicit_softmax():
    """The reductions a compiled CPU decoding step attends with (eager here) equal the explicit
    formula, with a padding mask and with beams folded into the query length."""
    torch.manual_seed(0)
    q, k, v = torch.randn(2, 4, 3, 8), torch.randn(2, 4, 7, 8), torch.randn(2, 4, 7, 8)
    mask = (torch.arange(7) < torch.tensor([7, 2])[:, None])[:, None, None, :]
    torch.testing.assert_close(attend_by_reduction(q, k, v, mask), explicit_attention(q, k, v, mask),
                               rtol=1e-5, atol=1e-6)


def test_compiled_decoding_attention_equals_sdpa():
    """Compiled on CPU, a few query rows take the reductions; the output equals eager SDPA's."""
    torch.manual_seed(0)
    attn = MultiHeadAttention(d_model=32, n_heads=4).eval()
    x, memory = torch.randn(2 * 3, 1, 32), torch.randn(2, 5, 32)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0]], dtype=torch.bool)[:, None, None, :]

    def attend(x, memory, mask):
        k, v = attn.project_kv(memory)
        return attn.attend(attn.project_q(x), k, v, mask)

    with torch.no_grad():
        torch.testing.assert_close(torch.compile(attend, fullgraph=True)(x, memory, mask), attend(x, memory, mask),
                                   rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("values_last", [True, False])
def test_compiled_attention_takes_the_reductions_over_many_keys_only_on_positions_last_values(values_last, monkeypatch):
    """Over more than REDUCE_KEYS keys, compiled on CPU, values held positions-last (as
    StaticCache(values_last=True) holds them) take the reductions and the usual layout SDPA;
    both equal eager SDPA."""
    import seq2seq.attention as attention

    calls = []
    reduce = attention.attend_by_reduction
    monkeypatch.setattr(attention, "attend_by_reduction", lambda *args: calls.append(1) or reduce(*args))
    torch.manual_seed(0)
    attn = MultiHeadAttention(d_model=32, n_heads=4).eval()
    keys = attention.REDUCE_KEYS + 72
    q, k, v = torch.randn(2, 4, 3, 8), torch.randn(2, 4, keys, 8), torch.randn(2, 4, 8, keys)
    v = v.transpose(2, 3) if values_last else v.transpose(2, 3).contiguous()  # (B, H, L, Dh) either way
    mask = (torch.arange(keys) < torch.tensor([keys, 9])[:, None])[:, None, None, :]
    with torch.no_grad():
        got = torch.compile(attn.attend, fullgraph=True, dynamic=False)(q, k, v, mask)
        torch.testing.assert_close(got, attn.attend(q, k, v.contiguous(), mask), rtol=1e-5, atol=1e-5)
    assert bool(calls) == values_last


def _native_ready():
    from seq2seq import native

    return native.load()


@pytest.mark.skipif(not _native_ready(), reason="native kernels not built here")
@pytest.mark.parametrize("values_last", [False, True])
@pytest.mark.parametrize("queries,dh,keys", [(1, 64, 21), (4, 8, 16), (3, 32, 9), (2, 72, 13)])
@pytest.mark.parametrize("masking", ["prefix", "random", "open"])
def test_native_attention_equals_explicit_softmax_and_reads_no_key_past_the_mask(values_last, queries, dh, keys, masking):
    """seq2seq::masked_attention (a compiled CPU step's attention from NATIVE_KEY_ROWS key rows)
    equals the explicit formula for either value layout, one or several queries per key row, and
    a mask per key row or broadcast. Keys and values past the last position any query of a key
    row may see are NaN here: reading one would turn its row's output NaN."""
    torch.manual_seed(queries * 100 + keys)
    b, h = 3, 2
    q, k, v = torch.randn(b, h, queries, dh), torch.randn(b, h, keys, dh), torch.randn(b, h, keys, dh)
    if masking == "prefix":  # written positions: 1, some, all
        mask = (torch.arange(keys) < torch.tensor([1, keys // 2 + 1, keys])[:, None])[:, None, None, :]
    elif masking == "random":
        mask = torch.rand(b, 1, queries, keys) < 0.5
        mask[..., 0] = True
    else:
        mask = torch.ones(1, 1, 1, keys, dtype=torch.bool)
    expected = explicit_attention(q, k, v, mask)
    seen = mask.expand(b, h, queries, keys).any(2, keepdim=True).flip(-1).cumsum(-1).flip(-1) > 0  # up to the last open key
    k, v = k.masked_fill(~seen.transpose(2, 3), float("nan")), v.masked_fill(~seen.transpose(2, 3), float("nan"))
    if values_last:
        v = v.transpose(2, 3).contiguous().transpose(2, 3)  # (B, H, L, Dh) over positions-last memory
    got = torch.ops.seq2seq.masked_attention(q, k, v, mask)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.skipif(not _native_ready(), reason="native kernels not built here")
def test_native_attention_names_what_it_cannot_take():
    q, k = torch.randn(1, 2, 1, 12), torch.randn(1, 2, 5, 12)
    with pytest.raises(RuntimeError, match="head dim must be a multiple of 8 up to 256, got 12"):
        torch.ops.seq2seq.masked_attention(q, k, k, torch.ones(1, 1, 1, 5, dtype=torch.bool))
    q, k = torch.randn(1, 2, 1, 8), torch.randn(1, 2, 5, 8)
    with pytest.raises(RuntimeError, match="mask must be bool"):
        torch.ops.seq2seq.masked_attention(q, k, k, torch.ones(1, 1, 1, 5))
    with pytest.raises(RuntimeError, match="fp32 on CPU"):
        torch.ops.seq2seq.masked_attention(q.double(), k, k, torch.ones(1, 1, 1, 5, dtype=torch.bool))


@pytest.mark.skipif(not _native_ready(), reason="native kernels not built here")
@pytest.mark.parametrize("key_rows", [1, 2])
def test_compiled_attention_goes_native_from_native_key_rows(key_rows, monkeypatch):
    """Compiled on CPU, few queries over NATIVE_KEY_ROWS key rows or more attend natively, fewer by
    the reductions; both equal eager SDPA (grouped beams and a padding mask included)."""
    import seq2seq.attention as attention

    monkeypatch.setattr(attention, "NATIVE_KEY_ROWS", 2)
    took = []
    decide = attention.native_attention
    monkeypatch.setattr(attention, "native_attention", lambda *args: took.append(decide(*args)) or took[-1])
    torch.manual_seed(0)
    attn = MultiHeadAttention(d_model=32, n_heads=4).eval()
    x, memory = torch.randn(key_rows * 3, 1, 32), torch.randn(key_rows, 5, 32)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0]], dtype=torch.bool)[:key_rows, None, None, :]

    def attend(x, memory, mask):
        k, v = attn.project_kv(memory)
        return attn.attend(attn.project_q(x), k, v, mask)

    with torch.no_grad():
        torch.testing.assert_close(torch.compile(attend, fullgraph=True, dynamic=False)(x, memory, mask),
                                   attend(x, memory, mask), rtol=1e-5, atol=1e-5)
    assert took == [key_rows >= 2]
