"""int8 on CPU (PyTorch's dynamic quantization of the linear layers): close to fp32 where it
counts, the same relations between searches, and reached from the Translator and the CLI."""
import copy

import pytest
import torch

from conftest import pad_batch, random_sentences
from infer.engine import beam_search, greedy_search
from infer.search import SearchConfig
from seq2seq.speed import int8

pytestmark = pytest.mark.skipif(not int8.available(), reason="no fbgemm in this PyTorch build")


def hyps(found):
    return [[h.tokens for h in n] for n in found]


@pytest.mark.parametrize("fixture", ["copy_model", "copy_model_pre_norm"])
def test_int8_model_stays_close_to_fp32_and_finds_the_same_copies(fixture, request):
    fp32 = request.getfixturevalue(fixture)
    q = int8.quantize_int8(copy.deepcopy(fp32))
    assert not any(isinstance(m, torch.nn.Linear) for m in q.modules())
    assert q.output_proj is not None or not fp32.config.tie_output
    src = pad_batch(random_sentences(6, 2, 6, 12, seed=5))
    tgt_in = pad_batch([[1] + s[:-1] for s in random_sentences(6, 2, 6, 12, seed=6)])
    with torch.no_grad():
        ref, got = fp32(src, tgt_in).log_softmax(-1), q(src, tgt_in).log_softmax(-1)
    assert not torch.equal(ref, got)  # the premise: int8 products, not the fp32 ones
    assert (got - ref).norm() < 0.03 * ref.norm()  # about 1% on these models
    top2 = ref.topk(2, -1).values
    sure = top2[..., 0] - top2[..., 1] > 1.0  # where fp32 prefers one token clearly, int8 agrees
    assert sure.float().mean() > 0.5 and torch.equal(got.argmax(-1)[sure], ref.argmax(-1)[sure])
    cfg = SearchConfig(beam_size=3)  # the best: runners-up differ by less than int8's error
    assert hyps(beam_search(q, src, cfg)) == hyps(beam_search(fp32, src, cfg))
    assert [h.tokens for h in greedy_search(q, src, cfg)] == [h.tokens for h in greedy_search(fp32, src, cfg)]


def test_int8_cached_finds_what_int8_uncached_finds_and_beam_1_is_greedy(copy_model):
    q = int8.quantize_int8(copy.deepcopy(copy_model))
    src = pad_batch(random_sentences(5, 1, 6, 12, seed=9))
    # Cached steps quantize the newest rows, uncached ones every position: the numbers differ
    # within int8's error, so the best hypotheses agree (runners-up can swap) and so do scores.
    cfg = SearchConfig(beam_size=3)
    cached, uncached = beam_search(q, src, cfg), beam_search(q, src, cfg, use_cache=False)
    assert hyps(cached) == hyps(uncached)
    assert [n[0].score for n in cached] == pytest.approx([n[0].score for n in uncached], abs=1e-2)
    one = SearchConfig(beam_size=1)
    greedy, beam = greedy_search(q, src, one), beam_search(q, src, one)
    assert [h.tokens for h in greedy] == [n[0].tokens for n in beam]
    # Inputs are quantized with one scale per product over all its rows, so a row's numbers move
    # a little with its batchmates (beam search drops finished sentences at other steps).
    assert [h.score for h in greedy] == pytest.approx([n[0].score for n in beam], abs=1e-2)


def test_int8_refuses_what_it_cannot_serve(copy_model):
    from infer.translator import Translator

    with pytest.raises(ValueError, match="fp32 model on CPU"):
        int8.quantize_int8(copy.deepcopy(copy_model).to(torch.bfloat16))
    with pytest.raises(ValueError, match="int8 runs on CPU only"):
        Translator(copy.deepcopy(copy_model), vocab=None, device="cuda", dtype="int8")


def test_translate_cli_in_int8_quantizes_and_keeps_one_line_per_input(tmp_path, multi30k_slice):
    from infer.cli import translate_main
    from infer.translator import Translator
    from tests.conftest import train_tiny

    ckpt = train_tiny(tmp_path / "run", multi30k_slice)
    t = Translator.from_checkpoint(ckpt, dtype="int8")
    assert t.dtype == "int8" and not any(isinstance(m, torch.nn.Linear) for m in t.model.modules())
    lines = (multi30k_slice / "val.de").read_text(encoding="utf-8").splitlines()[:8]
    src = tmp_path / "src.de"
    src.write_text("\n".join(lines[:4] + [""] + lines[4:]) + "\n", encoding="utf-8")
    argv = [str(ckpt), str(src), "-o", str(tmp_path / "out.en"), "--dtype", "int8", "--beam-size", "2", "--max-len", "12"]
    assert translate_main(argv + ["--quiet"]) == 0
    out = (tmp_path / "out.en").read_text(encoding="utf-8").split("\n")[:-1]
    assert len(out) == 9 and out[4] == ""
    assert out[:4] + out[5:] == t.translate(lines, beam_size=2, max_len=12)
