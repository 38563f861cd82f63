"""Packed weights (oneDNN's product on weights laid out once): the same logits and the same
search results as the plain model."""
import copy

import pytest
import torch

from infer.engine import beam_search, greedy_search
from infer.search import SearchConfig
from seq2seq.attention import MultiHeadAttention
from seq2seq.speed import packed
from seq2seq.speed.attention import products_attention
from tests.conftest import pad_batch, random_sentences, tiny_model

pytestmark = pytest.mark.skipif(not packed.available(), reason="no oneDNN in this PyTorch build")


@pytest.mark.parametrize("variant", [dict(share_embeddings=True), dict(tie_output=False, activation="gelu", norm="pre")])
def test_packed_model_gives_the_same_logits_and_hypotheses(variant):
    plain = tiny_model(seed=2, **variant)
    fast = packed.pack_for_cpu(copy.deepcopy(plain))
    assert not any(isinstance(m, torch.nn.Linear) for m in fast.modules())
    src = pad_batch(random_sentences(5, 2, 9, 24, seed=3))
    tgt_in = pad_batch([[1] + s[:-1] for s in random_sentences(5, 2, 7, 24, seed=4)])
    with torch.no_grad():
        assert torch.allclose(plain(src, tgt_in), fast(src, tgt_in), atol=1e-5)
    cfg = SearchConfig(beam_size=3, max_len_a=0.0, max_len_b=8, max_len=8)
    assert [h.tokens for h in greedy_search(plain, src, cfg)] == [h.tokens for h in greedy_search(fast, src, cfg)]
    assert ([[h.tokens for h in n] for n in beam_search(plain, src, cfg)]
            == [[h.tokens for h in n] for n in beam_search(fast, src, cfg)])


def test_packing_refuses_what_it_cannot_serve():
    with pytest.raises(ValueError, match="fp32 model on CPU"):
        packed.pack_for_cpu(tiny_model().to(torch.bfloat16))


def test_translator_from_checkpoint_packs_on_cpu_and_translates_the_same(tmp_path, multi30k_slice):
    from infer.translator import Translator
    from seq2seq.checkpoint import load, model_from_checkpoint
    from tests.conftest import train_tiny

    ckpt = train_tiny(tmp_path / "run", multi30k_slice)
    fast = Translator.from_checkpoint(ckpt)
    assert any(isinstance(m, packed.PackedLinear) for m in fast.model.modules())
    assert all(m.kernel is products_attention for m in fast.model.modules() if isinstance(m, MultiHeadAttention))
    plain = Translator(*model_from_checkpoint(load(ckpt), ckpt))
    assert not any(isinstance(m, packed.PackedLinear) for m in plain.model.modules())
    lines = (multi30k_slice / "val.de").read_text(encoding="utf-8").splitlines()[:10]
    assert fast.translate(lines, beam_size=3, max_len=12) == plain.translate(lines, beam_size=3, max_len=12)


def test_many_rows_take_the_plain_weight(monkeypatch):
    """From PLAIN_ROWS rows a PackedLinear with its weight kept multiplies the plain weight;
    below, the packed one. The packed weight is zeroed here, so the two paths tell apart."""
    monkeypatch.setattr(packed, "PLAIN_ROWS", 5)
    torch.manual_seed(0)
    plain = torch.nn.Linear(16, 24)
    fast = packed.PackedLinear(plain.weight, plain.bias, keep_weight=True)
    fast.packed = packed.PackedLinear(torch.zeros_like(plain.weight), None).packed
    with torch.no_grad():
        many, few = torch.randn(2, 3, 16), torch.randn(4, 16)
        torch.testing.assert_close(fast(many), plain(many))
        torch.testing.assert_close(fast(few), plain.bias.expand(4, 24))
