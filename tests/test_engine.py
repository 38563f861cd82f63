"""The engine's static path (batches padded to buckets, steps over spans of SPAN positions, the
bucket's decoder and search reused for later batches; on CUDA, replayed graphs) finds exactly
what the dynamic path finds, and what the uncached reference finds."""
import copy

import pytest
import torch

from conftest import PAD, pad_batch, random_sentences, tiny_model
from infer.engine import SPAN, Engine, batch_bucket
from infer.search import SearchConfig, max_output_lengths
from seq2seq.ensemble import Ensemble
from test_search import assert_same_hypotheses

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU"))]

CASES = {  # name: (copy model?, greedy?, search config)
    "greedy_copy": (True, True, SearchConfig(beam_size=1)),
    "greedy_min_len_gnmt": (True, True, SearchConfig(beam_size=1, min_len=4, length_norm="gnmt")),
    "greedy_budget": (False, True, SearchConfig(beam_size=1, max_len_a=1.0, max_len_b=2)),
    "beam_copy": (True, False, SearchConfig(beam_size=3)),
    "beam_nbest_gnmt": (True, False, SearchConfig(beam_size=4, n_best=3, length_norm="gnmt")),
    "beam_budget_min_len": (False, False, SearchConfig(beam_size=3, n_best=2, max_len_a=1.0, max_len_b=2, min_len=3,
                                                       length_norm="none")),
}


def search(engine, src, cfg, greedy):
    mc = engine.model.config
    return engine.search(src, max_output_lengths((src != PAD).sum(1), cfg, mc.max_positions), cfg, greedy)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", CASES)
def test_static_engine_equals_the_dynamic_one_and_reuses_its_bucket(case, device, copy_model):
    copied, greedy, cfg = CASES[case]
    model = copy.deepcopy(copy_model if copied else tiny_model(seed=4, src_vocab_size=12, tgt_vocab_size=12)).to(device)
    dynamic, static = Engine(model, static=False), Engine(model, static=True)
    # 6 sentences pad to a bucket of 8; then 5 more, of other lengths, reuse that bucket
    for seed, n in [(3, 6), (8, 5)]:
        src = pad_batch(random_sentences(n, 1, 6, 12, seed=seed)).to(device)
        expected, got = search(dynamic, src, cfg, greedy), search(static, src, cfg, greedy)
        assert len(got) == n
        for g, e in zip(got, expected):
            assert_same_hypotheses(g, e)
    assert len(static.buckets) == 1 and batch_bucket(6) == batch_bucket(5) == 8
    if copied and greedy:  # the premise: sentences end by EOS at different steps
        assert len({len(h[0].tokens) for h in expected}) > 1


def test_dynamic_beam_takes_its_first_step_on_one_row_per_sentence(copy_model, monkeypatch):
    """Every beam of a sentence starts alike, so a dynamic batch's first step runs one row per
    sentence (the static engine's full first step finds the same, above); later steps run them all."""
    from seq2seq.model import Transformer

    rows = []
    step = Transformer.step
    monkeypatch.setattr(Transformer, "step", lambda self, tokens, cache: rows.append(tokens.numel()) or step(self, tokens, cache))
    src = pad_batch(random_sentences(4, 2, 6, 12, seed=5))
    search(Engine(copy_model, static=False), src, SearchConfig(beam_size=3), False)
    assert rows[0] == 4 and rows[1] == 12


@pytest.mark.parametrize("greedy", [True, False])
def test_dynamic_engine_reads_only_the_positions_it_wrote(copy_model, monkeypatch, greedy):
    """A dynamic batch's K/V buffers start unfilled: with NaN there, it finds what the uncached
    reference finds. The static engine reads past the positions written (a span rounded up),
    and there the same NaN would reach the scores: it needs its zeros."""
    from seq2seq.cache import KVCache

    allocate = KVCache.allocate.__func__
    unfilled = []

    def nan_filled(cls, cross_kv, src_mask, beam_size, max_len, zeroed=True):
        cache = allocate(cls, cross_kv, src_mask, beam_size, max_len, zeroed)
        if not zeroed:
            unfilled.append(cache)
            for buffer in (b for kv in cache.self_kv for b in kv):
                buffer.fill_(float("nan"))
        return cache

    cfg = SearchConfig(beam_size=1 if greedy else 3, n_best=1 if greedy else 2)
    src = pad_batch(random_sentences(5, 1, 6, 12, seed=9))
    expected = search(Engine(copy_model, static=False, use_cache=False), src, cfg, greedy)
    monkeypatch.setattr(KVCache, "allocate", classmethod(nan_filled))
    for g, e in zip(search(Engine(copy_model, static=False), src, cfg, greedy), expected):
        assert_same_hypotheses(g, e)
    assert unfilled  # the premise: the dynamic engine's buffers were left unfilled

    monkeypatch.setattr(KVCache, "allocate", classmethod(lambda cls, *a: nan_filled(cls, *a[:4], zeroed=False)))
    static = search(Engine(copy_model, static=True), src, cfg, greedy)
    assert any(h.score != h.score for hyps in static for h in hyps) or [
        [h.tokens for h in hyps] for hyps in static] != [[h.tokens for h in hyps] for hyps in expected]


def test_static_engine_with_outputs_past_one_span_equals_the_reference(copy_model):
    """Budgets over SPAN tokens: steps attend over a second span bucket."""
    cfg = SearchConfig(beam_size=2, max_len_a=0, max_len_b=SPAN + 5, min_len=SPAN + 5)
    model = Ensemble([copy_model, copy_model])
    src = pad_batch(random_sentences(3, 2, 5, 12, seed=1))
    got = search(Engine(model, static=True), src, cfg, False)
    for g, e in zip(got, search(Engine(model, static=False, use_cache=False), src, cfg, False)):
        assert_same_hypotheses(g, e)
    assert all(len(h[0].tokens) == SPAN + 5 for h in got)


@pytest.mark.parametrize("device", DEVICES)
def test_static_engine_takes_budgets_up_to_positions_that_are_no_multiple_of_a_span(device):
    """max_positions 40: the longest budget (39 tokens, then EOS) fills the cache, which the span
    buckets of 16 would overrun."""
    model = tiny_model(seed=2, src_vocab_size=12, tgt_vocab_size=12, max_positions=40).to(device)
    cfg = SearchConfig(beam_size=2, max_len_a=0, max_len_b=39, min_len=39)
    src = pad_batch(random_sentences(3, 2, 5, 12, seed=2)).to(device)
    got = search(Engine(model, static=True), src, cfg, False)
    for g, e in zip(got, search(Engine(model, static=False), src, cfg, False)):
        assert_same_hypotheses(g, e)
    assert all(len(h[0].tokens) == 39 for h in got)


def test_a_static_engine_keeps_at_most_max_buckets(copy_model, monkeypatch):
    """The oldest bucket makes room (its buffers freed); a batch of it again is rebuilt, same results."""
    from infer import engine

    monkeypatch.setattr(engine, "MAX_BUCKETS", 1)
    static, dynamic = Engine(copy_model, static=True), Engine(copy_model, static=False)
    cfg = SearchConfig(beam_size=2)
    for n in (3, 9, 3):  # buckets of 4, 16, then 4 again
        src = pad_batch(random_sentences(n, 1, 6, 12, seed=n))
        for g, e in zip(search(static, src, cfg, False), search(dynamic, src, cfg, False)):
            assert_same_hypotheses(g, e)
        assert len(static.buckets) == 1 and next(iter(static.buckets))[2] == batch_bucket(n)


def test_running_out_of_gpu_memory_gives_the_buckets_back(copy_model, monkeypatch):
    """A static batch that runs out of memory drops every bucket before the caller retries it smaller."""
    from infer import engine

    static = Engine(copy_model, static=True)
    src = pad_batch(random_sentences(3, 1, 6, 12, seed=1))
    search(static, src, SearchConfig(beam_size=2), False)
    assert static.buckets

    def out_of_memory(*args, **kwargs):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")

    monkeypatch.setattr(engine, "run", out_of_memory)
    with pytest.raises(torch.cuda.OutOfMemoryError):
        search(static, src, SearchConfig(beam_size=2), False)
    assert static.buckets == {} and static.pool is None


def test_batch_buckets():
    assert [batch_bucket(n) for n in (1, 2, 3, 5, 63, 64, 65, 200)] == [1, 2, 4, 8, 64, 64, 128, 256]


def test_the_reference_runs_dynamic_shapes_only(copy_model):
    with pytest.raises(ValueError, match="dynamic shapes only"):
        Engine(copy_model, static=True, use_cache=False)


def test_a_dynamic_batch_drops_its_finished_sentences(copy_model, monkeypatch):
    """The copy model ends sentences at different steps: the dynamic engine shrinks its batch
    (search and cache) as they finish, and finds what the static engine finds."""
    from infer.decoders import CachedDecoder

    sizes = []
    keep = CachedDecoder.keep
    monkeypatch.setattr(CachedDecoder, "keep", lambda self, s: sizes.append(s.numel()) or keep(self, s))
    src = pad_batch(random_sentences(8, 1, 6, 12, seed=11))
    for greedy, cfg in [(True, SearchConfig(beam_size=1)), (False, SearchConfig(beam_size=3, n_best=2))]:
        sizes.clear()
        got = search(Engine(copy_model, static=False), src, cfg, greedy)
        assert sizes and sizes == sorted(sizes, reverse=True) and sizes[-1] < 8
        for g, e in zip(got, search(Engine(copy_model, static=True), src, cfg, greedy)):
            assert_same_hypotheses(g, e)


def test_the_bound_stop_is_exact_and_the_others_stop_no_later(copy_model, monkeypatch):
    """stop="bound" finds what running every sentence to its budget finds, though it stops
    sooner; stop="current" stops no later than "bound", and "early" no later than "current", with
    beam_size finished hypotheses for every sentence (test_beam_scripted shows it stopping sooner)."""
    from infer.beam import BeamSearch

    src = pad_batch(random_sentences(6, 2, 6, 12, seed=12))
    start, step = BeamSearch.start, BeamSearch.step
    steps = []  # steps each run took
    monkeypatch.setattr(BeamSearch, "step", lambda self, span: steps.append(int(self.t)) or step(self, span))

    def never_settled(self, max_lens, prefix=None):  # a bound no live hypothesis is ever under: only budgets end
        start(self, max_lens, prefix)
        self.budget_penalty.fill_(float("inf"))

    runs = {}
    for stop, begin in [("bound", start), ("current", start), ("early", start), ("exhaustive", never_settled)]:
        cfg = SearchConfig(beam_size=3, n_best=3 if stop == "early" else 2, length_norm="none", max_len_a=1.0,
                           max_len_b=6, stop="bound" if stop == "exhaustive" else stop)
        monkeypatch.setattr(BeamSearch, "start", begin)
        steps.clear()
        runs[stop] = (search(Engine(copy_model, static=False), src, cfg, False), len(steps))
    for g, e in zip(runs["bound"][0], runs["exhaustive"][0]):
        assert_same_hypotheses(g, e)
    assert runs["early"][1] <= runs["current"][1] <= runs["bound"][1] < runs["exhaustive"][1]
    assert all(len(hyps) == 3 for hyps in runs["early"][0])


def test_workers_search_batches_at_once_and_find_the_same(copy_model, monkeypatch):
    """translate_ids with workers: the batches run on that many threads at once (seen from the
    threads they ran on), each sentence's results are those of one worker, in input order, and
    PyTorch's thread count is what it was."""
    import threading

    from infer.translate import MIN_WORKER_BATCH, translate_ids

    sources = [s + [copy_model.config.eos_id] for s in random_sentences(6 * MIN_WORKER_BATCH, 1, 6, 12, seed=21)]
    cfg = SearchConfig(beam_size=3, n_best=2)
    threads = torch.get_num_threads()
    seen = set()
    search_fn = Engine.search
    monkeypatch.setattr(Engine, "search", lambda self, *a, **k: seen.add(threading.get_ident()) or search_fn(self, *a, **k))
    engine = Engine(copy_model, static=False)
    one = translate_ids(engine, sources, cfg, max_tokens=3 * 40, workers=1)
    assert len(seen) == 1
    seen.clear()
    three = translate_ids(engine, sources, cfg, max_tokens=3 * 40, workers=3)
    assert len(seen) == 3 and torch.get_num_threads() == threads
    for a, b in zip(one, three):
        assert_same_hypotheses(a, b)
    seen.clear()  # too few sentences for two batches a worker: one worker
    translate_ids(engine, sources[: 4 * MIN_WORKER_BATCH - 1], cfg, max_tokens=3 * 40, workers=2)
    assert len(seen) == 1
    with pytest.raises(ValueError, match="dynamic engine"):
        translate_ids(Engine(copy_model, static=True), sources, cfg, max_tokens=3 * 40, workers=2)


@pytest.mark.parametrize("workers", [2, 3])
def test_worker_plan_shares_batches_of_like_cost_evenly(workers):
    """Every sentence once, in a count of batches the workers share evenly, none over the
    budget, the most costly first, and closer in cost than the plain greedy cut (whose last
    batch holds what remains)."""
    from infer.translate import worker_plan
    from seq2seq.batching import batch_plan

    g = torch.Generator().manual_seed(5)
    lengths = torch.randint(3, 40, (500,), generator=g).tolist()
    out_lens = [int(1.5 * n) + 11 for n in lengths]
    cost = lambda batch: len(batch) * max(max(lengths[i], out_lens[i]) for i in batch)  # noqa: E731
    budget = 2000
    plain = batch_plan(lengths, out_lens, budget, 0, 0, shuffle=False)
    plan = worker_plan(lengths, out_lens, budget, workers)
    assert sorted(i for batch in plan for i in batch) == list(range(500))
    assert len(plan) % workers == 0 and len(plan) >= len(plain)
    costs = [cost(b) for b in plan]
    assert costs == sorted(costs, reverse=True) and costs[0] <= budget
    plain_costs = [cost(b) for b in plain]
    assert max(costs) - min(costs) < max(plain_costs) - min(plain_costs)


def test_translator_workers_default_and_refusals(copy_model):
    from infer.translator import MAX_CPU_WORKERS, Translator

    threads = torch.get_num_threads()
    assert Translator(copy.deepcopy(copy_model), vocab=None, device="cpu").workers == (
        threads if threads <= MAX_CPU_WORKERS else 1)
    assert Translator(copy.deepcopy(copy_model), vocab=None, device="cpu", static=True).workers == 1
    for bad in (dict(workers=0), dict(workers=2, static=True)):
        with pytest.raises(ValueError, match="workers="):
            Translator(copy.deepcopy(copy_model), vocab=None, device="cpu", **bad)
