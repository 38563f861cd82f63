"""Training objective: R-Drop adds exactly the symmetric KL of two dropout passes, nothing else."""
import math

import torch
import torch.nn.functional as F

from tests.conftest import BOS, pad_batch, random_sentences, tiny_model
from train.loss import cross_entropy_sum, objective, symmetric_kl_sum


def _batch(vocab=20):
    """src (4, S); tgt_in = BOS + tgt_out[:, :-1] (pads stay pads); tgt_out (4, T)."""
    src = pad_batch(random_sentences(4, 3, 9, vocab, seed=1))
    tgt_out = pad_batch(random_sentences(4, 2, 7, vocab, seed=2))
    tgt_in = torch.cat([torch.full((4, 1), BOS), tgt_out[:, :-1]], 1)
    return src, tgt_in, tgt_out


def test_symmetric_kl_matches_the_definition_and_skips_padding():
    torch.manual_seed(0)
    a, b = torch.randn(2, 3, 5), torch.randn(2, 3, 5)
    mask = torch.tensor([[True, True, False], [True, False, False]])
    pa, pb = a.softmax(-1), b.softmax(-1)
    expected = 0.0
    for i, j in mask.nonzero().tolist():
        kl_ab = sum(pa[i, j, v] * math.log(pa[i, j, v] / pb[i, j, v]) for v in range(5))
        kl_ba = sum(pb[i, j, v] * math.log(pb[i, j, v] / pa[i, j, v]) for v in range(5))
        expected += 0.5 * (kl_ab + kl_ba)
    assert torch.isclose(symmetric_kl_sum(a, b, mask), torch.tensor(float(expected)), atol=1e-5)
    assert symmetric_kl_sum(a, a, mask) == 0


def test_without_dropout_rdrop_equals_plain_cross_entropy_in_value_and_gradient():
    src, tgt_in, tgt_out = _batch()
    results = []
    for alpha in (0.0, 5.0):
        model = tiny_model(seed=3, dropout=0.0, attn_dropout=0.0).train()
        loss, ce = objective(model, src, tgt_in, tgt_out, 0, 0.1, alpha)
        loss.backward()
        results.append((loss.detach(), ce, [p.grad.clone() for p in model.parameters()]))
    (loss0, ce0, g0), (loss5, ce5, g5) = results
    assert torch.allclose(loss0, loss5, atol=1e-4) and torch.allclose(ce0, ce5, atol=1e-4)
    for x, y in zip(g0, g5):
        assert torch.allclose(x, y, atol=1e-5)


def test_with_dropout_rdrop_adds_a_positive_kl_to_the_reported_cross_entropy():
    src, tgt_in, tgt_out = _batch()
    model = tiny_model(seed=3, dropout=0.3).train()
    torch.manual_seed(0)
    loss, ce = objective(model, src, tgt_in, tgt_out, 0, 0.1, 5.0)
    assert loss > ce + 1e-3
    torch.manual_seed(0)
    plain, plain_ce = objective(model, src, tgt_in, tgt_out, 0, 0.1, 0.0)
    assert torch.equal(plain, plain_ce)
    assert torch.isclose(cross_entropy_sum(model.eval()(src, tgt_in), tgt_out, 0, 0.0),
                         F.cross_entropy(model(src, tgt_in).flatten(0, 1), tgt_out.flatten(), ignore_index=0, reduction="sum"))
