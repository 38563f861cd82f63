"""Packed weights (the native panel product and oneDNN's): the same logits and the same cached
search results as the plain model."""
import copy
import os
import platform
import shutil

import pytest
import torch

from infer.engine import beam_search, greedy_search
from infer.search import SearchConfig
from seq2seq.speed import native, packed
from tests.conftest import KERNELS, pad_batch, random_sentences, tiny_model

pytestmark = pytest.mark.skipif(not packed.available(), reason="no oneDNN in this PyTorch build")
def test_the_native_kernel_builds_where_it_can():
    """On x86-64 with AVX2 and a C++ compiler (CI's machine), the panel product must build and load."""
    if os.environ.get("SEQ2SEQ_NATIVE") == "0" or platform.machine().lower() not in ("x86_64", "amd64") \
            or torch.backends.cpu.get_cpu_capability() not in ("AVX2", "AVX512") or not shutil.which(os.environ.get("CXX", "c++")):
        pytest.skip("no AVX2 x86-64 CPU or no C++ compiler here")
    assert native.load(), native.why_not
    assert packed.default_kernel() == "panel"


@pytest.mark.skipif(not native.load(), reason=native.why_not)
@pytest.mark.parametrize("rows", [0, 1, 5, 6, 7, 13, 32])
@pytest.mark.parametrize("out_f,in_f", [(16, 64), (37, 5), (100, 130)])  # whole panels, a short last panel, K % 4 != 0
@pytest.mark.parametrize("bias", [True, False])
def test_panel_product_equals_the_plain_product(rows, out_f, in_f, bias):
    torch.manual_seed(rows * 1000 + out_f)
    weight, b = torch.randn(out_f, in_f), torch.randn(out_f) if bias else None
    x = torch.randn(in_f, rows).t()  # not contiguous: the op makes it so
    y = torch.ops.seq2seq.panel_linear(x, packed.to_panels(weight), b, out_f)
    torch.testing.assert_close(y, torch.nn.functional.linear(x, weight, b), rtol=1e-5, atol=1e-5)


@pytest.mark.skipif(not native.load(), reason=native.why_not)
def test_panel_product_names_what_does_not_fit():
    weight = torch.randn(40, 8)
    with pytest.raises(RuntimeError, match="do not hold 40 x 9 weights"):
        torch.ops.seq2seq.panel_linear(torch.randn(3, 9), packed.to_panels(weight), None, 40)
    with pytest.raises(RuntimeError, match="do not hold 60 x 8 weights"):
        torch.ops.seq2seq.panel_linear(torch.randn(3, 8), packed.to_panels(weight), None, 60)
    with pytest.raises(RuntimeError, match="bias must be fp32 with 40 values"):
        torch.ops.seq2seq.panel_linear(torch.randn(3, 8), packed.to_panels(weight), torch.randn(39), 40)


def test_an_unknown_or_missing_kernel_is_named(monkeypatch):
    with pytest.raises(ValueError, match="kernel must be one of panel, onednn, not 'mkl'"):
        packed.pack_for_cpu(tiny_model(), kernel="mkl")
    monkeypatch.setattr(native, "_loaded", False)
    monkeypatch.setattr(native, "why_not", "no C++ compiler 'c++' on PATH (set CXX)")
    assert packed.default_kernel() == "onednn"
    with pytest.raises(RuntimeError, match="panel kernel is not available: no C\\+\\+ compiler"):
        packed.pack_for_cpu(tiny_model(), kernel="panel")


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("variant", [dict(share_embeddings=True), dict(tie_output=False, activation="gelu", norm="pre")])
def test_packed_model_gives_the_same_logits_and_hypotheses(variant, kernel):
    plain = tiny_model(seed=2, **variant)
    fast = packed.pack_for_cpu(copy.deepcopy(plain), kernel=kernel)
    assert all(m.kernel == kernel for m in fast.modules() if isinstance(m, packed.PackedLinear))
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
    plain = Translator(*model_from_checkpoint(load(ckpt), ckpt))
    assert not any(isinstance(m, packed.PackedLinear) for m in plain.model.modules())
    lines = (multi30k_slice / "val.de").read_text(encoding="utf-8").splitlines()[:10]
    assert fast.translate(lines, beam_size=3, max_len=12) == plain.translate(lines, beam_size=3, max_len=12)


def test_many_rows_take_the_plain_weight(monkeypatch):
    """From PLAIN_ROWS rows a PackedLinear with its weight kept multiplies the plain weight (MKL);
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
