"""Sampling in the one greedy search: top-k 1 is greedy, a seed repeats, top-p keeps to the
nucleus, n_best gives n samples, and cached equals uncached."""
import pytest
import torch

from infer.engine import greedy_search
from infer.search import SearchConfig, draw
from tests.conftest import pad_batch, random_sentences, tiny_model

BUDGET = dict(max_len_a=0.0, max_len_b=8, max_len=8)


@pytest.fixture(scope="module")
def model():
    return tiny_model(seed=5).eval()  # random weights: spread-out distributions, so samples differ


@pytest.fixture(scope="module")
def src():
    return pad_batch(random_sentences(6, 2, 7, 20, seed=3))


def tokens(hyps):
    return [[h.tokens for h in nbest] if isinstance(nbest, list) else nbest.tokens for nbest in hyps]


def test_top_k_one_is_greedy(model, src, copy_model):
    for m in (model, copy_model):
        source = src if m is model else pad_batch(random_sentences(6, 1, 6, 12, seed=3))
        greedy = greedy_search(m, source, SearchConfig(beam_size=1, **BUDGET))
        sampled = greedy_search(m, source, SearchConfig(beam_size=1, sample=True, top_k=1, seed=9, **BUDGET))
        assert tokens(sampled) == tokens(greedy)
        assert [h.log_prob for h in sampled] == pytest.approx([h.log_prob for h in greedy], abs=1e-5)


def test_a_seeded_run_repeats_and_another_seed_differs(model, src):
    def run(seed):
        return tokens(greedy_search(model, src, SearchConfig(beam_size=1, sample=True, seed=seed, **BUDGET)))

    assert run(1) == run(1)
    assert run(1) != run(2)


def test_n_best_gives_n_samples_best_first_and_cached_equals_uncached(model, src):
    from infer.engine import Engine
    from infer.search import max_output_lengths

    cfg = SearchConfig(beam_size=1, n_best=3, sample=True, temperature=1.5, seed=4, **BUDGET)
    max_lens = max_output_lengths((src != 0).sum(1), cfg, model.config.max_positions)
    cached = Engine(model, static=False).search(src, max_lens, cfg, greedy=True)
    uncached = Engine(model, static=False, use_cache=False).search(src, max_lens, cfg, greedy=True)
    assert all(len(n) == 3 for n in cached)
    assert all([h.score for h in n] == sorted((h.score for h in n), reverse=True) for n in cached)
    assert any(len({tuple(h.tokens) for h in n}) > 1 for n in cached)  # the samples differ
    assert tokens(cached) == tokens(uncached)
    for a, b in zip(cached, uncached):
        assert [h.log_prob for h in a] == pytest.approx([h.log_prob for h in b], abs=1e-4)


def test_top_p_never_leaves_the_nucleus_and_top_k_never_leaves_the_k():
    g = torch.Generator().manual_seed(0)
    lp = torch.log_softmax(torch.tensor([[3.0, 2.5, 1.0, 0.5, 0.0, -1.0]] * 4000), -1)
    probs = lp[0].exp()
    order = probs.argsort(descending=True).tolist()
    for p in (0.5, 0.8, 0.95):
        got = set(draw(lp, SearchConfig(sample=True, top_p=p), g).tolist())
        mass, nucleus = 0.0, set()
        for i in order:  # the smallest most-probable set whose mass reaches p
            nucleus.add(i)
            mass += float(probs[i])
            if mass >= p:
                break
        assert got == nucleus
    assert set(draw(lp, SearchConfig(sample=True, top_k=2), g).tolist()) == set(order[:2])
    banned = lp.clone()
    banned[:, order[0]] = float("-inf")  # a token a step may not emit is never drawn
    assert order[0] not in set(draw(banned, SearchConfig(sample=True), g).tolist())


def test_translator_and_cli_sample(tmp_path, copy_model):
    from infer.cli import translate_main
    from seq2seq.checkpoint import inference_state, save_atomic
    from seq2seq.tokenizer import Tokenizer, Vocabularies

    tok = Tokenizer.placeholder(12)
    save_atomic(inference_state(copy_model, Vocabularies(tok, tok)), tmp_path / "m.pt")
    (tmp_path / "in.txt").write_text("t4 t5 t6\nt7 t8\n")
    args = [str(tmp_path / "m.pt"), str(tmp_path / "in.txt"), "--quiet", "--device", "cpu", "--sample", "--top-k", "1",
            "--n-best", "2", "-o"]
    assert translate_main([*args, str(tmp_path / "a.tsv")]) == 0
    assert translate_main([*args[:5], "--greedy", "-o", str(tmp_path / "g.txt")]) == 0
    rows = [line.split("\t") for line in (tmp_path / "a.tsv").read_text().splitlines()]
    assert [r[:2] for r in rows] == [["1", "1"], ["1", "2"], ["2", "1"], ["2", "2"]]
    assert [r[3] for r in rows][::2] == (tmp_path / "g.txt").read_text().splitlines()  # top-k 1: greedy's
