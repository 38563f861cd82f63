"""The cache: preallocated, written in place, beams re-ranked through the ancestor table alone
(K/V never move), cross K/V projected once, reused for a new batch."""
import pytest
import torch

from conftest import BOS, pad_batch, random_sentences, tiny_model


def filled_cache(beam_size=3, steps=4):
    model = tiny_model()
    src = pad_batch(random_sentences(2, 2, 6, 24, seed=3))
    cache = model.init_cache(model.encode(src), model.padding_mask(src), beam_size=beam_size, max_len=10)
    tokens = torch.randint(4, 24, (2 * beam_size, steps))
    with torch.no_grad():
        for i in range(steps):
            model.step(tokens[:, i], cache)
    return model, src, cache


def test_cross_kv_are_projected_once_per_sentence_not_per_beam():
    model, src, cache = filled_cache(beam_size=3)
    assert cache.cross_kv.shape[2] == 2 and cache.self_kv[0][0].shape[0] == 2 and cache.rows == 6
    with torch.no_grad():
        k, v = model.decoder_layers[1].cross_attn.project_kv(model.encode(src))
    torch.testing.assert_close(cache.cross_kv[1, 0], k)
    torch.testing.assert_close(cache.cross_kv[1, 1], v)


def test_steps_write_into_the_preallocated_buffers():
    model, src, cache = filled_cache()
    before = [(b.data_ptr(), b.shape) for pair in cache.self_kv for b in pair]
    with torch.no_grad():
        model.step(torch.full((6,), 5), cache)
    assert [(b.data_ptr(), b.shape) for pair in cache.self_kv for b in pair] == before
    assert int(cache.length) == 5


def test_reorder_gathers_the_ancestor_table_and_moves_no_kv():
    _, _, cache = filled_cache()
    rows = torch.tensor([2, 2, 0, 5, 3, 3])  # beams re-ranked within each sentence
    t = int(cache.length)
    expected = cache.ancestors.clone()
    expected[:, :t] = cache.ancestors[:, :t].index_select(0, rows)
    kv = [b.clone() for pair in cache.self_kv for b in pair]
    cross_before, cross_ptr = cache.cross_kv.clone(), cache.cross_kv.data_ptr()
    cache.reorder(rows)
    assert torch.equal(cache.ancestors, expected)
    assert torch.equal(cache.ancestors[:, t:], torch.arange(3).repeat(2).unsqueeze(1).expand(6, 10 - t))  # own slots ahead
    assert all(map(torch.equal, [b for pair in cache.self_kv for b in pair], kv))
    assert cache.cross_kv.data_ptr() == cross_ptr and torch.equal(cache.cross_kv, cross_before)


@pytest.mark.parametrize("span", ["written", "all", "bucket"])
def test_reordered_beam_cache_decodes_like_the_reordered_prefixes_from_scratch(span):
    """Every step equals decoding each row's re-ranked token history from scratch, whether the
    step reads exactly the written positions, the whole buffer, or a bucket of 4 of them."""
    model = tiny_model(seed=3)
    src = pad_batch(random_sentences(2, 2, 6, 24, seed=4))
    gen = torch.Generator().manual_seed(0)
    tokens = torch.full((6, 1), BOS)
    with torch.no_grad():
        memory, mask = model.encode(src), model.padding_mask(src)
        cache = model.init_cache(memory, mask, beam_size=3, max_len=8)
        for t in range(6):
            cache.span = {"written": t + 1, "all": cache.capacity, "bucket": min(8, (t // 4 + 1) * 4)}[span]
            got = model.step(tokens[:, -1], cache)
            expected = model.project(model.decode(tokens, memory.repeat_interleave(3, 0), mask.repeat_interleave(3, 0)))
            torch.testing.assert_close(got, expected[:, -1], rtol=1e-5, atol=1e-5)
            rows = torch.cat([torch.randint(0, 3, (3,), generator=gen), torch.randint(3, 6, (3,), generator=gen)])
            cache.reorder(rows)
            tokens = torch.cat([tokens[rows], torch.randint(4, 24, (6, 1), generator=gen)], dim=1)


def test_a_loaded_batch_decodes_like_a_fresh_cache():
    """load puts a new batch of the same shape into the same buffers (what a captured step reads)."""
    model, _, cache = filled_cache(beam_size=2)
    src = pad_batch(random_sentences(2, 3, 6, 24, seed=9))
    tokens = torch.randint(4, 24, (4, 3))
    with torch.no_grad():
        cache.load(model.cross_kv(model.encode(src)), model.padding_mask(src))
        fresh = model.init_cache(model.encode(src), model.padding_mask(src), beam_size=2, max_len=10)
        for i in range(3):
            torch.testing.assert_close(model.step(tokens[:, i], cache), model.step(tokens[:, i], fresh))
