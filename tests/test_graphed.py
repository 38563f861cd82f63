"""The CUDA-graph greedy and beam steps, run eagerly and compiled on CPU: the same hypotheses
as run_greedy and run_beam, and a static-cache step that gives the same logits as the growing
cache."""
import copy

import pytest
import torch

from infer.graphed import GraphedGreedy
from infer.greedy import greedy_search
from infer.search import SearchConfig
from seq2seq import packed
from seq2seq.cache import StaticCache
from tests.conftest import BOS, pad_batch, random_sentences, tiny_model


@pytest.mark.parametrize("values_last", [False, True])
def test_static_cache_steps_give_the_growing_cache_logits(values_last):
    model = tiny_model(seed=5, norm="pre")
    src = pad_batch(random_sentences(3, 2, 9, 24, seed=1))
    tgt = pad_batch([[BOS] + s for s in random_sentences(3, 6, 6, 24, seed=2)])  # 7 tokens each
    memory, mask = model.encode(src), model.padding_mask(src)
    growing = model.init_cache(memory, mask, max_len=10)
    static = StaticCache.allocate(growing.cross_kv.clone(), mask.clone(), 10, values_last=values_last)
    with torch.no_grad():
        for t in range(tgt.size(1)):
            a = model.step(tgt[:, t : t + 1], growing)
            b = model.step(tgt[:, t : t + 1], static)
            assert torch.allclose(a, b, atol=1e-5), t
    assert int(static.length) == growing.length == tgt.size(1)


@pytest.mark.parametrize("span,chunk", [(1, None), (3, 5), (16, None)])  # attention over length + 1 positions, buckets of 3, all at once
@pytest.mark.parametrize("case", ["copy", "copy_min_len", "budget", "min_len"])
def test_graphed_greedy_equals_run_greedy(case, span, chunk, copy_model):
    if case.startswith("copy"):  # rows end by EOS at different steps, or later than they would, under min_len
        model, src = copy_model, pad_batch(random_sentences(6, 1, 6, 12, seed=3))
        cfg = SearchConfig(beam_size=1, min_len=4 if case == "copy_min_len" else 0)
    else:  # a random model: every row runs to its own budget
        model = tiny_model(seed=4)
        src = pad_batch(random_sentences(5, 2, 9, 24, seed=5))
        cfg = SearchConfig(beam_size=1, max_len_a=1.0, max_len_b=2, min_len=3 if case == "min_len" else 0,
                           length_norm="gnmt")
    reference = greedy_search(model, src, cfg)
    graphed = GraphedGreedy(model, src.size(0), src.size(1), cfg, use_graph=False, check_every=2, span=span)
    graphed.top_chunk = chunk  # row_max over whole rows, or through chunks of 5 (a short last one)
    assert chunk is None or model.config.tgt_vocab_size % chunk
    for _ in range(2):  # the second batch reuses the buffers
        got = graphed.run(src)
        assert [h.tokens for h in got] == [h.tokens for h in reference]
        for g, r in zip(got, reference):
            assert g.log_prob == pytest.approx(r.log_prob, abs=1e-5) and g.score == pytest.approx(r.score, abs=1e-5)
    if case == "copy":
        assert len({len(h.tokens) for h in reference}) > 1
    if case == "copy_min_len":  # the rule changed some hypotheses
        assert [h.tokens for h in reference] != [h.tokens for h in greedy_search(model, src, SearchConfig(beam_size=1))]


@pytest.mark.parametrize("span", [1, 3, 16])
@pytest.mark.parametrize("case", ["copy", "copy_nbest_gnmt", "budget_average", "min_len_none"])
def test_graphed_beam_equals_run_beam(case, span, copy_model, monkeypatch):
    from infer.beam import beam_search
    from infer.graphed import GraphedBeam

    if case.startswith("copy"):  # hypotheses end by EOS at different steps; sentences stop early
        model, src = copy_model, pad_batch(random_sentences(6, 1, 6, 12, seed=3))
        cfg = SearchConfig(beam_size=4, n_best=3, length_norm="gnmt") if case == "copy_nbest_gnmt" else SearchConfig(beam_size=3)
    else:  # a random model: hypotheses run to their budgets
        model = tiny_model(seed=4)
        src = pad_batch(random_sentences(5, 2, 9, 24, seed=5))
        cfg = SearchConfig(beam_size=3, n_best=2, max_len_a=1.0, max_len_b=2, min_len=3 if case == "min_len_none" else 0,
                           length_norm="none" if case == "min_len_none" else "average")
    reference = beam_search(model, src, cfg)
    graphed = GraphedBeam(model, src.size(0), src.size(1), cfg, use_graph=False, check_every=3, span=span)
    # The row top-k through chunks (row_best), in chunks small enough to choose from at this vocabulary.
    graphed.top_chunk = model.config.tgt_vocab_size // (2 * cfg.beam_size + 3)
    rows = []  # rows of each step
    step = model.step
    monkeypatch.setattr(model, "step", lambda tokens, cache: rows.append(tokens.size(0)) or step(tokens, cache))
    for _ in range(2):  # the second batch reuses the buffers
        rows.clear()
        got = graphed.run(src)
        # Step 0 runs one row per sentence; the others one per beam.
        assert rows[0] == src.size(0) and set(rows[1:]) == {src.size(0) * cfg.beam_size}
        assert [[h.tokens for h in n] for n in got] == [[h.tokens for h in n] for n in reference]
        for g_n, r_n in zip(got, reference):
            for g, r in zip(g_n, r_n):
                assert g.log_prob == pytest.approx(r.log_prob, abs=1e-5) and g.score == pytest.approx(r.score, abs=1e-5)
    assert any(len(n) > 1 for n in reference) or cfg.n_best == 1


@pytest.mark.parametrize("vocab,chunk", [(64, 4), (70, 4), (33, 3), (20, 8), (20, None)])
def test_row_best_equals_topk_and_logsumexp(vocab, chunk):
    """Through chunks (a short last one, chunks too few to choose from, none) or not: the same
    columns as topk, best first, and the logsumexp of each row."""
    from infer.graphed import row_best

    logits = torch.randn(6, vocab, generator=torch.Generator().manual_seed(vocab))
    logits[0] = torch.arange(vocab) * 1e-3  # the best in the last chunk, short where vocab % chunk
    logits[1] = -logits[0]  # the best in the first
    best, lse = row_best(logits, 5, chunk)
    assert torch.equal(best, logits.topk(5, dim=-1).indices)
    torch.testing.assert_close(lse, logits.logsumexp(-1, keepdim=True))


@pytest.mark.parametrize("vocab,chunk", [(64, 4), (70, 4), (33, 3), (20, 8), (20, 32), (20, None)])
def test_row_max_equals_the_max_of_the_open_columns(vocab, chunk):
    """Through chunks (a short last one, shut columns in one chunk or several, one chunk or
    none) or not: each row's max and its first column over the columns not shut in that row,
    as max(dim=-1) after masking, and the logsumexp over all columns."""
    from infer.graphed import row_max

    gen = torch.Generator().manual_seed(vocab)
    logits = torch.randn(7, vocab, generator=gen).round(decimals=1)  # ties between columns
    logits[0] = torch.arange(vocab) * 1e-3  # the best in the last chunk
    logits[1] = -logits[0]  # the best in the first, and shut there
    logits[2, [5, 9, 17]] = 9.0  # a tie for the best across chunks, the first of it shut in some rows
    logits[3, 2] = 50.0  # a shut column far above the rest: the logsumexp is still of every column
    shut = torch.tensor([0, 5, 2])
    shut_on = torch.rand(7, 3, generator=gen) < 0.5
    shut_on[:4] = torch.tensor([[True, True, False], [True, False, True], [False, True, True], [True, True, True]])
    values, columns, lse = row_max(logits, shut, shut_on, chunk)
    closed = torch.zeros_like(logits, dtype=torch.bool)
    for e, column in enumerate(shut.tolist()):
        closed[:, column] = shut_on[:, e]
    expected_values, expected_columns = logits.masked_fill(closed, float("-inf")).max(dim=-1)
    assert torch.equal(columns, expected_columns) and torch.equal(values, expected_values)
    torch.testing.assert_close(lse, logits.logsumexp(-1, keepdim=True))


@pytest.mark.skipif(not packed.available(), reason="no oneDNN in this PyTorch build")
@pytest.mark.parametrize("search,batch,native_attention", [("greedy", 1, False), ("beam", 1, False), ("beam", 2, False),
                                                           ("greedy", 1, True), ("beam", 2, True)])
def test_compiled_cpu_search_equals_the_eager_search(search, batch, native_attention, copy_model, monkeypatch):
    """torch.compile of the static step on CPU (compile=True), on a model packed with its plain
    weights kept: the same hypotheses as the eager searches, for each way a compiled product
    runs: 1 row (a fused reduction on the layer's input as computed), 3 rows (reductions on a
    copy of the input), 6 rows (the opaque packed product), and for each way it attends: by
    reductions over positions-last values, or by the native kernel (from NATIVE_KEY_ROWS key
    rows, lowered to 1 here). Greedy attends over spans of 4 (one compile per span), beam over
    one span."""
    from infer.beam import beam_search
    from infer.graphed import GraphedBeam
    from seq2seq import attention, native

    if native_attention:
        if not native.load():
            pytest.skip(native.why_not)
        monkeypatch.setattr(attention, "NATIVE_KEY_ROWS", 1)

    if search == "greedy":
        plain, src = copy_model, pad_batch(random_sentences(batch, 1, 6, 12, seed=3))
        model = packed.pack_for_cpu(copy.deepcopy(plain), keep_weights=True)
        cfg = SearchConfig(beam_size=1, min_len=2, length_norm="gnmt")
        reference = [[h] for h in greedy_search(plain, src, cfg)]
        searcher = GraphedGreedy(model, batch, src.size(1), cfg, use_graph=False, span=4, compile=True)
        got = [[h] for h in searcher.run(src)]
    else:  # a random model: near-flat choices, so the kept hypotheses pass through every beam row
        plain, src = tiny_model(seed=4), pad_batch(random_sentences(batch, 2, 9, 24, seed=5))
        model = packed.pack_for_cpu(copy.deepcopy(plain), keep_weights=True)
        cfg = SearchConfig(beam_size=3, n_best=3, max_len_a=0.0, max_len_b=8, max_len=8, length_norm="none")
        reference = beam_search(plain, src, cfg)
        searcher = GraphedBeam(model, batch, src.size(1), cfg, use_graph=False, span=16, compile=True)
        got = searcher.run(src)
    assert searcher.cache.values_last != native_attention  # the native kernel reads values as rows
    assert [[h.tokens for h in n] for n in got] == [[h.tokens for h in n] for n in reference]
    for g_n, r_n in zip(got, reference):
        for g, r in zip(g_n, r_n):
            assert g.log_prob == pytest.approx(r.log_prob, abs=1e-4) and g.score == pytest.approx(r.score, abs=1e-4)
    assert model.output_proj.weight is not None and (batch * cfg.beam_size > packed.REDUCE_ROWS) == (batch == 2)


def test_graphed_search_refuses_a_batch_of_another_shape(copy_model):
    """The static buffers hold (B, S); a smaller batch would broadcast into them silently."""
    search = GraphedGreedy(copy_model, 3, 5, SearchConfig(beam_size=1), use_graph=False)
    with pytest.raises(ValueError, match=r"built for source batches of shape \(3, 5\), got \(1, 5\)"):
        search.run(pad_batch(random_sentences(1, 4, 4, 12, seed=1)))
