"""A greedy step compiled ahead of time (AOTInductor) decodes as the eager search does."""
import copy

import pytest
import torch

from infer.aot import compile_ahead
from infer.graphed import GraphedBeam, GraphedGreedy
from infer.greedy import greedy_search
from infer.search import SearchConfig
from seq2seq import packed
from tests.conftest import KERNELS, pad_batch, random_sentences, tiny_model

pytestmark = pytest.mark.skipif(not packed.available(), reason="no oneDNN in this PyTorch build")


@pytest.mark.parametrize("kernel", KERNELS)
def test_ahead_of_time_step_equals_the_eager_search_and_reads_the_models_weights(tmp_path, kernel):
    """On a packed model (the panel kernel's panels, or oneDNN's with the plain weights kept, as
    decoding benchmarks run it), every step goes through the compiled library; the hypotheses
    equal greedy_search's on the plain model. The library holds no weights of its own: a weight
    changed in place after compiling changes its output as it does eager decoding's."""
    plain, src = tiny_model(seed=4), pad_batch(random_sentences(1, 4, 9, 24, seed=5))
    model = packed.pack_for_cpu(copy.deepcopy(plain), keep_weights=kernel == "onednn", kernel=kernel)
    cfg = SearchConfig(beam_size=1, min_len=2, max_len_a=0.0, max_len_b=8, max_len=8)
    search = compile_ahead(GraphedGreedy(model, 1, src.size(1), cfg, use_graph=False, span=16), tmp_path)
    library, spans = search.ahead, []
    search.ahead = lambda span: (spans.append(span), library(span))
    reference = greedy_search(plain, src, cfg)
    for _ in range(2):  # a second batch reuses the libraries on reset buffers
        got = search.run(src)
        assert [h.tokens for h in got] == [h.tokens for h in reference]
        assert got[0].log_prob == pytest.approx(reference[0].log_prob, abs=1e-4)
    assert spans and all(m.packed is not None for m in model.modules() if isinstance(m, packed.PackedLinear))

    with torch.no_grad():  # the same change to both: a bias that favours other tokens
        shift = torch.randn(plain.config.d_model, generator=torch.Generator().manual_seed(6)) * 3
        plain.decoder_layers[-1].ff.fc2.bias.add_(shift)
        model.decoder_layers[-1].ff.fc2.bias.add_(shift)
    changed = greedy_search(plain, src, cfg)
    assert [h.tokens for h in changed] != [h.tokens for h in reference]  # the check below can fail
    assert [h.tokens for h in search.run(src)] == [h.tokens for h in changed]


def test_compile_ahead_refuses_what_it_cannot_compile(copy_model):
    cfg = SearchConfig(beam_size=2)
    with pytest.raises(ValueError, match="1-row steps"):
        compile_ahead(GraphedGreedy(copy_model, 2, 5, cfg, use_graph=False))
    with pytest.raises(ValueError, match="GraphedGreedy on CPU"):
        compile_ahead(GraphedBeam(copy_model, 1, 5, cfg, use_graph=False))
    unkept = packed.pack_for_cpu(copy.deepcopy(copy_model), kernel="onednn")
    with pytest.raises(ValueError, match="keep_weights=True"):
        compile_ahead(GraphedGreedy(unkept, 1, 5, cfg, use_graph=False))
