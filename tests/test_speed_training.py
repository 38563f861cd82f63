"""The training side of the speed layer: CPU dropout (seq2seq.speed.dropout) against what dropout
means, and the attention kernels CUDA training selects."""
import pytest
import torch
from torch import nn

from seq2seq.config import ModelConfig
from seq2seq.model import Transformer
from seq2seq import speed
from seq2seq.speed import for_training
from seq2seq.speed.dropout import MaskDropout


def test_drops_at_the_rate_and_scales_the_rest():
    torch.manual_seed(0)
    for p in (0.1, 0.3):
        y = MaskDropout(p)(torch.ones(400_001))
        kept = y != 0
        assert abs(kept.float().mean().item() - (1 - p)) < 0.003
        torch.testing.assert_close(y[kept], torch.full_like(y[kept], 1 / (1 - p)))


def test_gradient_flows_through_the_same_mask():
    x = torch.randn(37, 11, requires_grad=True)
    y = MaskDropout(0.25)(x)
    y.backward(torch.ones_like(y))
    torch.testing.assert_close(x.grad, (y != 0).float() / 0.75)


def test_seeded_runs_repeat_and_eval_is_the_identity():
    drop, x = MaskDropout(0.1), torch.randn(1000)
    torch.manual_seed(3)
    a = drop(x)
    torch.manual_seed(3)
    assert torch.equal(a, drop(x)) and not torch.equal(a, drop(x))
    assert drop.eval()(x) is x


def test_for_training_swaps_every_dropout_and_keeps_the_weights():
    cfg = ModelConfig(src_vocab_size=50, tgt_vocab_size=50, d_model=32, n_heads=2, n_encoder_layers=1,
                      n_decoder_layers=1, d_ff=64, dropout=0.2)
    model = Transformer(cfg)
    keys = set(model.state_dict())
    for_training(model)
    dropouts = [m for m in model.modules() if isinstance(m, nn.Dropout)]
    assert dropouts and all(type(m) is MaskDropout and m.p == 0.2 for m in dropouts)
    assert set(model.state_dict()) == keys
    src, tgt = torch.randint(3, 50, (2, 5)), torch.randint(3, 50, (2, 4))
    plain = Transformer(cfg)
    plain.load_state_dict(model.state_dict())
    torch.testing.assert_close(model.eval()(src, tgt), plain.eval()(src, tgt))


def test_fused_projections_give_the_same_loss_and_gradients_and_keep_the_weights():
    """Self-attention's q/k/v and cross-attention's k/v as one product each: same arithmetic,
    so the same loss and gradients, and the same parameters under the same names."""
    import copy

    from conftest import pad_batch, random_sentences, tiny_model
    from seq2seq.attention import MultiHeadAttention
    from seq2seq.speed.projections import FusedProjectionAttention, fuse_projections
    from train.loss import objective

    for norm in ("pre", "post"):
        plain = tiny_model(seed=2, norm=norm, dropout=0.1).train()
        fused = fuse_projections(copy.deepcopy(plain))
        kinds = {type(m) for m in fused.modules() if isinstance(m, MultiHeadAttention)}
        assert kinds == {FusedProjectionAttention}
        assert list(fused.state_dict()) == list(plain.state_dict())
        src = pad_batch(random_sentences(7, 2, 9, 24, seed=1))
        tgt = pad_batch(random_sentences(7, 2, 8, 24, seed=2))
        losses = []
        for model in (plain, fused):
            torch.manual_seed(5)  # the same dropout masks
            loss, _ = objective(model, src, tgt[:, :-1], tgt[:, 1:], 0, 0.1, 0.0)
            loss.backward()
            losses.append(loss)
        torch.testing.assert_close(losses[1], losses[0])
        for (name, a), b in zip(plain.named_parameters(), fused.parameters()):
            torch.testing.assert_close(b.grad, a.grad, msg=name)


def test_for_training_fuses_projections_off_the_cpu_only():
    from seq2seq.speed.projections import FusedProjectionAttention

    cfg = ModelConfig(src_vocab_size=50, tgt_vocab_size=50, d_model=32, n_heads=2, n_encoder_layers=1,
                      n_decoder_layers=1, d_ff=64)
    cpu = for_training(Transformer(cfg))
    assert not any(isinstance(m, FusedProjectionAttention) for m in cpu.modules())
    with torch.device("meta"):  # stands in for CUDA: any device but the CPU
        other = for_training(Transformer(cfg))
    assert sum(isinstance(m, FusedProjectionAttention) for m in other.modules()) == 3


def test_cuda_training_leaves_cudnn_attention_out_and_cpu_is_untouched():
    before = torch.backends.cuda.cudnn_sdp_enabled()
    with speed.training_attention(torch.device("cuda")):
        assert not torch.backends.cuda.cudnn_sdp_enabled()
        assert torch.backends.cuda.flash_sdp_enabled() and torch.backends.cuda.mem_efficient_sdp_enabled()
    assert torch.backends.cuda.cudnn_sdp_enabled() == before
    with speed.training_attention(torch.device("cpu")):
        assert torch.backends.cuda.cudnn_sdp_enabled() == before


def test_compiled_objective_is_one_graph_for_every_batch_shape_and_equals_eager():
    """train.compile=true compiles forward and loss as one graph with dynamic shapes: batches of
    new (sentences, length) shapes reuse it. Captured graphs run here as they are (no code
    generation), so loss and gradients must equal eager's."""
    import copy

    from conftest import pad_batch, random_sentences, tiny_model
    from train.loss import objective

    graphs = []

    def capture(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    torch._dynamo.reset()
    eager_model = tiny_model(seed=1).train()
    compiled_model = copy.deepcopy(eager_model)
    step = speed.compiled(objective, backend=capture)
    # The first batch's sources and targets are both 6 wide: the graph must not assume they agree.
    for seed, n, width in [(3, 5, 7), (4, 9, 11), (5, 6, 4)]:
        src = pad_batch(random_sentences(n, 2, 9, 24, seed=seed))
        tgt = pad_batch(random_sentences(n, 2, width, 24, seed=seed + 10))
        args = (src, tgt[:, :-1], tgt[:, 1:], 0, 0.1, 0.0)
        loss, ce = objective(eager_model, *args)
        loss.backward()
        got, got_ce = step(compiled_model, *args)
        got.backward()
        torch.testing.assert_close(got, loss)
        torch.testing.assert_close(got_ce, ce)
        for a, b in zip(eager_model.parameters(), compiled_model.parameters()):
            torch.testing.assert_close(b.grad, a.grad)
    assert len(graphs) == 1


def test_train_compile_true_trains_through_the_compiled_objective(monkeypatch, tmp_path, multi30k_slice):
    from conftest import train_tiny
    from train import trainer as trainer_module

    calls = []
    monkeypatch.setattr(trainer_module.speed, "compiled", lambda fn: calls.append(fn) or fn)
    train_tiny(tmp_path / "run", multi30k_slice, "compile=true", "optim.max_steps=2")
    assert calls == [trainer_module.objective]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU")
def test_compiled_objective_on_cuda_matches_eager_in_fp32():
    """Inductor's generated kernels (what compile=true runs on a GPU) against eager, dropout off."""
    import copy

    from conftest import pad_batch, random_sentences, tiny_model
    from train.loss import objective

    torch._dynamo.reset()
    eager_model = tiny_model(seed=1).train().cuda()
    compiled_model = copy.deepcopy(eager_model)
    step = speed.compiled(objective)
    for seed, n, width in [(4, 9, 11), (5, 6, 4)]:
        src = pad_batch(random_sentences(n, 2, 9, 24, seed=seed)).cuda()
        tgt = pad_batch(random_sentences(n, 2, width, 24, seed=seed + 10)).cuda()
        args = (src, tgt[:, :-1], tgt[:, 1:], 0, 0.1, 0.0)
        loss, _ = objective(eager_model, *args)
        loss.backward()
        got, _ = step(compiled_model, *args)
        got.backward()
        torch.testing.assert_close(got, loss, rtol=1e-4, atol=1e-4)
        for a, b in zip(eager_model.parameters(), compiled_model.parameters()):
            torch.testing.assert_close(b.grad, a.grad, rtol=1e-3, atol=1e-5)
