"""Searches on the cache equal the same searches recomputing the whole prefix."""
import pytest

from conftest import PAD, pad_batch, random_sentences, tiny_model
from infer import SearchConfig, beam_search, greedy_search
from infer.search import max_output_lengths


def assert_same_hypotheses(a, b):
    assert [h.tokens for h in a] == [h.tokens for h in b]
    for x, y in zip(a, b):
        assert x.score == pytest.approx(y.score, abs=1e-4) and x.log_prob == pytest.approx(y.log_prob, abs=1e-4)


@pytest.fixture
def copy_batch():
    return pad_batch(random_sentences(7, 1, 6, 12, seed=123))


def test_copy_model_sentences_finish_at_different_steps(copy_model, copy_batch):
    """Premise of the tests below: the batch really finishes unevenly, by EOS, not budget."""
    cfg = SearchConfig(max_len_a=2.0, max_len_b=5)
    hyps = greedy_search(copy_model, copy_batch, cfg)
    lengths = {len(h.tokens) for h in hyps}
    budgets = max_output_lengths((copy_batch != PAD).sum(dim=1), cfg, 64).tolist()
    assert len(lengths) > 2
    assert all(len(h.tokens) < b for h, b in zip(hyps, budgets))


@pytest.mark.parametrize("model_kind", ["copy", "random"])
def test_cached_greedy_equals_uncached_greedy(copy_model, copy_batch, model_kind):
    model = copy_model if model_kind == "copy" else tiny_model(src_vocab_size=12, tgt_vocab_size=12)
    cfg = SearchConfig(max_len_a=1.0, max_len_b=2)  # random model: budgets end it, unevenly
    assert_same_hypotheses(greedy_search(model, copy_batch, cfg), greedy_search(model, copy_batch, cfg, use_cache=False))


@pytest.mark.parametrize("model_kind", ["copy", "random"])
@pytest.mark.parametrize("length_norm", ["none", "average", "gnmt"])
def test_cached_beam_equals_uncached_beam(copy_model, copy_batch, model_kind, length_norm):
    model = copy_model if model_kind == "copy" else tiny_model(src_vocab_size=12, tgt_vocab_size=12)
    cfg = SearchConfig(beam_size=4, n_best=4, length_norm=length_norm, alpha=1.0, max_len_a=1.0, max_len_b=2)
    cached = beam_search(model, copy_batch, cfg)
    uncached = beam_search(model, copy_batch, cfg, use_cache=False)
    for a, b in zip(cached, uncached):
        assert_same_hypotheses(a, b)


@pytest.mark.parametrize("model_kind", ["copy", "random"])
def test_beam_size_one_equals_greedy(copy_model, copy_batch, model_kind):
    model = copy_model if model_kind == "copy" else tiny_model(src_vocab_size=12, tgt_vocab_size=12)
    cfg = SearchConfig(beam_size=1, length_norm="none", max_len_a=1.0, max_len_b=2)
    beams = beam_search(model, copy_batch, cfg)
    assert_same_hypotheses([b[0] for b in beams], greedy_search(model, copy_batch, cfg))


def test_beam_size_one_with_length_norm_never_scores_below_greedy():
    """Beam 1 follows greedy's path and finishes greedy's hypothesis at the same step; under
    a length penalty it may only replace it by a better-scoring one."""
    model = tiny_model(src_vocab_size=12, tgt_vocab_size=12)
    src = pad_batch(random_sentences(6, 1, 6, 12, seed=5))
    cfg = SearchConfig(beam_size=1, length_norm="average", max_len_a=1.0, max_len_b=3)
    for beam, greedy in zip(beam_search(model, src, cfg), greedy_search(model, src, cfg)):
        assert beam[0].score >= greedy.score - 1e-6


def test_batched_search_equals_one_sentence_at_a_time(copy_model, copy_batch):
    cfg = SearchConfig(beam_size=3, n_best=2, max_len_a=1.5, max_len_b=2)
    batched = beam_search(copy_model, copy_batch, cfg)
    for i in range(copy_batch.size(0)):
        row = copy_batch[i : i + 1, : int((copy_batch[i] != PAD).sum())]
        assert_same_hypotheses(batched[i], beam_search(copy_model, row, cfg)[0])


def test_beam_search_finds_at_least_the_copy(copy_model, copy_batch):
    hyps = beam_search(copy_model, copy_batch, SearchConfig(beam_size=4, n_best=4, max_len_a=2.0, max_len_b=5))
    greedy = greedy_search(copy_model, copy_batch, SearchConfig(length_norm="average", max_len_a=2.0, max_len_b=5))
    for nbest, g in zip(hyps, greedy):
        scores = [h.score for h in nbest]
        assert scores == sorted(scores, reverse=True) and len(nbest) == 4
        assert len({tuple(h.tokens) for h in nbest}) == 4  # distinct hypotheses
        assert nbest[0].score >= g.score - 1e-6


@pytest.mark.parametrize("search", ["greedy", "beam"])
def test_length_limits_hold(search):
    model = tiny_model(src_vocab_size=12, tgt_vocab_size=12)
    src = pad_batch(random_sentences(5, 1, 8, 12, seed=6))
    cfg = SearchConfig(beam_size=3, n_best=3, max_len_a=0.5, max_len_b=3, max_len=5, min_len=2)
    budgets = max_output_lengths((src != PAD).sum(dim=1), cfg, 64).tolist()
    assert max(budgets) == 5  # the hard cap binds for the longest sources
    if search == "greedy":
        outputs = [[h] for h in greedy_search(model, src, cfg)]
    else:
        outputs = beam_search(model, src, cfg)
    for hyps, budget in zip(outputs, budgets):
        for h in hyps:
            assert 2 <= len(h.tokens) <= budget


def test_forced_length_gives_exactly_that_length():
    """min_len == max_len: what the benchmarks use to force a fixed output length."""
    model = tiny_model(src_vocab_size=12, tgt_vocab_size=12)
    src = pad_batch(random_sentences(3, 1, 8, 12, seed=7))
    cfg = SearchConfig(beam_size=2, max_len_a=0, max_len_b=9, min_len=9)
    assert all(len(h.tokens) == 9 for h in greedy_search(model, src, cfg))
    assert all(len(b[0].tokens) == 9 for b in beam_search(model, src, cfg))


def test_search_never_emits_pad_or_bos():
    model = tiny_model(src_vocab_size=12, tgt_vocab_size=12)
    src = pad_batch(random_sentences(4, 2, 6, 12, seed=8))
    hyps = beam_search(model, src, SearchConfig(beam_size=3, n_best=3, max_len_a=1, max_len_b=3))
    assert all(t not in (0, 1) for nbest in hyps for h in nbest for t in h.tokens)


def test_search_config_rejects_bad_values():
    with pytest.raises(ValueError, match="n_best"):
        SearchConfig(beam_size=2, n_best=3)
    with pytest.raises(ValueError, match="length_norm"):
        SearchConfig(length_norm="sqrt")
    with pytest.raises(ValueError, match="beam_size"):
        SearchConfig(beam_size=0)


@pytest.mark.parametrize("v", [8000, 8003, 40])
def test_row_topk_equals_topk(v):
    """The vocabulary-wide selection through slice maxima returns topk's values and columns,
    with -inf entries (banned tokens) and when V does not divide into the slices; a small V
    falls back to topk itself."""
    import torch

    from infer.search import row_topk

    g = torch.Generator().manual_seed(v)
    x = torch.randn(33, v, generator=g)
    x[:, :5] = float("-inf")
    x[3, 100 % v] = 50.0  # one row with an outlier
    x[5, v - 1] = 40.0  # one in the last column (past the slices when V % 8)
    x[4] = float("-inf")
    x[4, :12] = torch.arange(12.0)  # a row where only 12 - 5 = 7 columns are finite: -inf fill the rest
    values, cols = row_topk(x, 10)
    expected = x.topk(10, dim=-1)
    assert torch.equal(values, expected.values)
    finite = torch.isfinite(values)
    assert torch.equal(cols[finite], expected.indices[finite])
    assert torch.equal(x.gather(1, cols), values)
