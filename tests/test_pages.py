"""Moving a model onto huge pages changes where its tensors live, nothing else."""
import copy

import pytest
import torch
from torch import nn

from infer.engine import greedy_search
from infer.search import SearchConfig
from seq2seq.speed import packed, pages
from tests.conftest import pad_batch, random_sentences, tiny_model

pytestmark = pytest.mark.skipif(not pages.available(), reason="no MADV_HUGEPAGE on this platform")


def test_to_huge_pages_keeps_values_sharing_and_parameters():
    model = tiny_model(seed=7)
    model.src_embed.tokens.weight = model.tgt_embed.tokens.weight  # tied, as a shared vocabulary's are
    model.register_buffer("odd", torch.arange(10, dtype=torch.int64)[::3])  # a strided view of another size
    before = {name: t.clone() for name, t in model.state_dict().items()}
    views = {name: (t.dtype, t.shape, t.stride()) for name, t in model.state_dict().items()}
    grads = {name: p.requires_grad for name, p in model.named_parameters()}

    pages.to_huge_pages(model)

    after = model.state_dict()
    assert all(torch.equal(before[name], t) for name, t in after.items())
    assert {name: (t.dtype, t.shape, t.stride()) for name, t in after.items()} == views
    assert model.src_embed.tokens.weight is model.tgt_embed.tokens.weight  # ties stay one Parameter
    assert all(isinstance(p, nn.Parameter) and p.requires_grad == grads[name] for name, p in model.named_parameters())
    assert len({t.untyped_storage().data_ptr() for t in after.values()}) == 1  # all in the one mapping


def test_packed_model_on_huge_pages_decodes_as_before():
    """pack_for_cpu moves the model by default; the hypotheses equal those on ordinary pages."""
    plain, src = tiny_model(seed=4), pad_batch(random_sentences(3, 4, 9, 24, seed=5))
    cfg = SearchConfig(beam_size=1, max_len=10)
    ordinary = packed.pack_for_cpu(copy.deepcopy(plain), huge_pages=False)
    huge = packed.pack_for_cpu(copy.deepcopy(plain))
    assert len({t.untyped_storage().data_ptr() for t in ordinary.state_dict().values()}) > 1
    assert len({t.untyped_storage().data_ptr() for t in huge.state_dict().values() if not t.is_mkldnn}) == 1
    with torch.inference_mode():
        assert [h.tokens for h in greedy_search(huge, src, cfg)] == [h.tokens for h in greedy_search(ordinary, src, cfg)]


def test_to_huge_pages_leaves_a_module_without_cpu_tensors_alone():
    assert list(pages.to_huge_pages(nn.ReLU()).parameters()) == []


def test_to_huge_pages_without_kernel_support_still_moves_the_tensors(monkeypatch):
    """A kernel built without transparent huge pages refuses the advice: ordinary pages, same values."""
    class Refusing(pages.mmap.mmap):
        def madvise(self, *args):
            raise OSError(22, "Invalid argument")

    monkeypatch.setattr(pages.mmap, "mmap", Refusing)
    model = tiny_model(seed=8)
    before = {name: t.clone() for name, t in model.state_dict().items()}
    pages.to_huge_pages(model)
    assert all(torch.equal(before[name], t) for name, t in model.state_dict().items())
    assert len({t.untyped_storage().data_ptr() for t in model.state_dict().values()}) == 1
