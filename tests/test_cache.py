"""The cache: preallocated, beams re-ranked through the ancestor table alone (K/V never move),
cross K/V projected once, shrinkable."""
import pytest
import torch

from conftest import BOS, pad_batch, random_sentences, tiny_model
from seq2seq.cache import StaticCache


def filled_cache(beam_size=3, steps=4):
    model = tiny_model()
    src = pad_batch(random_sentences(2, 2, 6, 24, seed=3))
    memory = model.encode(src)
    cache = model.init_cache(memory, model.padding_mask(src), beam_size=beam_size, max_len=10)
    tokens = torch.randint(4, 24, (2 * beam_size, steps))
    with torch.no_grad():
        for i in range(steps):
            model.step(tokens[:, i : i + 1], cache)
    return model, src, cache


def test_cross_kv_are_projected_once_per_sentence_not_per_beam():
    model, src, cache = filled_cache(beam_size=3)
    assert cache.cross_kv.shape[2] == 2 and cache.self_kv.shape[2] == 2 and cache.rows == 6
    with torch.no_grad():
        k, v = model.decoder_layers[1].cross_attn.project_kv(model.encode(src))
    torch.testing.assert_close(cache.cross_kv[1, 0], k)
    torch.testing.assert_close(cache.cross_kv[1, 1], v)


def test_steps_write_into_the_preallocated_buffer():
    model, src, cache = filled_cache()
    before = cache.self_kv.data_ptr(), cache.self_kv.shape
    with torch.no_grad():
        model.step(torch.full((6, 1), 5), cache)
    assert (cache.self_kv.data_ptr(), cache.self_kv.shape) == before
    assert cache.length == 5


def test_reorder_gathers_the_ancestor_table_and_moves_no_kv():
    _, _, cache = filled_cache()
    rows = torch.tensor([2, 2, 0, 5, 3, 3])  # beams re-ranked within each sentence
    t = cache.length
    expected = cache.ancestors.clone()
    expected[:, :t] = cache.ancestors[:, :t].index_select(0, rows)
    written = cache.self_kv[..., : t * 3, :].clone()  # beyond: never written, undefined
    cross_before, cross_ptr = cache.cross_kv.clone(), cache.cross_kv.data_ptr()
    cache.reorder(rows)
    assert torch.equal(cache.ancestors, expected)
    assert torch.equal(cache.ancestors[:, t:], torch.arange(3).repeat(2).unsqueeze(1).expand(6, 10 - t))  # own slots ahead
    assert torch.equal(cache.self_kv[..., : t * 3, :], written)
    assert cache.cross_kv.data_ptr() == cross_ptr and torch.equal(cache.cross_kv, cross_before)


def test_keep_sentences_shrinks_every_part():
    _, _, cache = filled_cache(beam_size=3)
    cache.reorder(torch.tensor([1, 1, 0, 5, 3, 4]))
    written = cache.self_kv[..., : cache.length * 3, :].clone()  # beyond length: never written, undefined
    cross_kv, mask, ancestors = cache.cross_kv.clone(), cache.src_mask.clone(), cache.ancestors.clone()
    cache.keep_sentences(torch.tensor([1]))
    assert cache.self_kv.shape[2] == 1 and cache.capacity == 10 and cache.rows == 3
    assert torch.equal(cache.self_kv[..., : cache.length * 3, :], written[:, :, 1:2])
    assert torch.equal(cache.ancestors, ancestors[3:6])
    assert torch.equal(cache.cross_kv, cross_kv[:, :, 1:2])
    assert torch.equal(cache.src_mask, mask[1:2])
    assert cache.beam_size == 3


def test_reordered_cache_decodes_like_a_cache_built_from_reordered_prefixes():
    """After reorder, a step equals decoding the reordered prefixes from scratch."""
    model = tiny_model()
    src = pad_batch(random_sentences(2, 2, 6, 24, seed=4))
    prefix = torch.cat([torch.full((6, 1), BOS), torch.randint(4, 24, (6, 3))], dim=1)
    rows = torch.tensor([1, 1, 2, 4, 3, 5])
    nxt = torch.randint(4, 24, (6, 2))  # two new positions in one step: the history mask is causal too
    with torch.no_grad():
        memory, mask = model.encode(src), model.padding_mask(src)
        cache = model.init_cache(memory, mask, beam_size=3, max_len=8)
        model.step(prefix, cache)
        cache.reorder(rows)
        got = model.step(nxt, cache)
        full = torch.cat([prefix[rows], nxt], dim=1)
        expected = model.project(model.decode(full, memory.repeat_interleave(3, 0), mask.repeat_interleave(3, 0)))
    torch.testing.assert_close(got, expected[:, -2:], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("values_last", [False, True])
def test_static_beam_cache_moves_no_kv_and_decodes_like_reordered_prefixes(values_last):
    """StaticCache re-ranks beams through its ancestor table only; every step still equals
    decoding each row's (re-ranked) token history from scratch, V held either way."""
    model = tiny_model(seed=3)
    src = pad_batch(random_sentences(2, 2, 6, 24, seed=4))
    gen = torch.Generator().manual_seed(0)
    tokens = torch.full((6, 1), BOS)
    with torch.no_grad():
        memory, mask = model.encode(src), model.padding_mask(src)
        grown = model.init_cache(memory, mask, beam_size=3, max_len=8)
        cache = StaticCache.allocate(grown.cross_kv.clone(), mask.clone(), 8, beam_size=3, values_last=values_last)
        for t in range(5):
            cache.span = t + 1 if t % 2 else cache.capacity  # attention over the written prefix, or all of it
            got = model.step(tokens[:, -1:], cache)[:, -1]
            expected = model.project(model.decode(tokens, memory.repeat_interleave(3, 0), mask.repeat_interleave(3, 0)))
            torch.testing.assert_close(got, expected[:, -1], rtol=1e-5, atol=1e-5)
            rows = torch.cat([torch.randint(0, 3, (3,), generator=gen), torch.randint(3, 6, (3,), generator=gen)])
            kv_before = [buffer.clone() for pair in cache.self_kv for buffer in pair]
            cache.reorder(rows)
            kv_after = [buffer for pair in cache.self_kv for buffer in pair]
            assert all(map(torch.equal, kv_after, kv_before))  # only the ancestor table moved
            tokens = torch.cat([tokens[rows], torch.randint(4, 24, (6, 1), generator=gen)], dim=1)
