"""The cached step decoder computes exactly what teacher forcing computes."""
import pytest
import torch

from conftest import BOS, PAD, pad_batch, random_sentences, tiny_config, tiny_model
from seq2seq import ModelConfig


def padded_pair():
    src = pad_batch(random_sentences(4, 1, 9, 24, seed=1))  # source padding
    tgt = pad_batch([[BOS] + s for s in random_sentences(4, 1, 9, 24, seed=2)])  # target padding
    return src, tgt


def real_positions(tgt):
    return tgt != PAD


@pytest.mark.parametrize("norm", ["post", "pre"])
@pytest.mark.parametrize("activation", ["relu", "gelu"])
def test_teacher_forced_logits_equal_stepwise_cached_logits(norm, activation):
    model = tiny_model(norm=norm, activation=activation)
    src, tgt = padded_pair()
    with torch.no_grad():
        expected = model(src, tgt)
        memory = model.encode(src)
        cache = model.init_cache(memory, model.padding_mask(src), max_len=tgt.size(1))
        stepped = torch.stack([model.step(tgt[:, i], cache) for i in range(tgt.size(1))], dim=1)
    real = real_positions(tgt)
    torch.testing.assert_close(stepped[real], expected[real], rtol=1e-5, atol=1e-5)


def test_causality_later_target_tokens_do_not_change_earlier_logits():
    model = tiny_model()
    src, tgt = padded_pair()
    changed = tgt.clone()
    changed[:, 4:] = torch.randint(4, 24, changed[:, 4:].shape)
    with torch.no_grad():
        a, b = model(src, tgt), model(src, changed)
    torch.testing.assert_close(a[:, :4], b[:, :4], rtol=0, atol=0)
    assert not torch.allclose(a[:, 4:], b[:, 4:])  # the change is visible where it may be


@pytest.mark.parametrize("norm", ["post", "pre"])
def test_extra_source_padding_changes_nothing(norm):
    model = tiny_model(norm=norm)
    src, tgt = padded_pair()
    wider = torch.cat([src, torch.full((src.size(0), 5), PAD)], dim=1)
    with torch.no_grad():
        torch.testing.assert_close(model(wider, tgt), model(src, tgt), rtol=1e-5, atol=1e-5)


def test_each_sentence_is_independent_of_its_batch():
    model = tiny_model()
    src, tgt = padded_pair()
    with torch.no_grad():
        batched = model(src, tgt)
        alone = model(src[1:2, : int((src[1] != PAD).sum())], tgt[1:2])
    torch.testing.assert_close(batched[1:2], alone, rtol=1e-5, atol=1e-5)


def test_tied_embeddings_share_one_table():
    model = tiny_model(share_embeddings=True, tie_output=True)
    assert model.src_embed.weight is model.tgt_embed.weight
    assert model.output_proj is None
    names = {n for n, _ in model.named_parameters()}
    assert not any(n.startswith("src_embed") for n in names)  # counted once
    untied = tiny_model(share_embeddings=False, tie_output=False)
    assert untied.src_embed.weight is not untied.tgt_embed.weight
    assert untied.output_proj is not None


def test_embeddings_are_scaled_and_positioned():
    model = tiny_model()
    tokens = torch.tensor([[5, 5]])
    x = model.tgt_embed(tokens)
    row = model.tgt_embed.weight[5] * 32**0.5
    torch.testing.assert_close(x[0, 0], row + model.tgt_embed.positions[0])
    torch.testing.assert_close(x[0, 1], row + model.tgt_embed.positions[1])


def test_dropout_is_active_in_training_only():
    model = tiny_model(dropout=0.3)
    src, tgt = padded_pair()
    with torch.no_grad():
        model.eval()
        assert torch.equal(model(src, tgt), model(src, tgt))
        model.train()
        assert not torch.equal(model(src, tgt), model(src, tgt))


def test_sequences_longer_than_max_positions_are_rejected():
    model = tiny_model(max_positions=8)
    with pytest.raises(ValueError, match="max_positions=8"):
        model.encode(torch.full((1, 9), 5))


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(d_model=30, n_heads=4), "divisible"),
        (dict(activation="tanh"), "activation"),
        (dict(norm="sandwich"), "norm"),
        (dict(share_embeddings=True, src_vocab_size=10), "share_embeddings"),
        (dict(dropout=1.5), "dropout"),
        (dict(eos_id=0), "must differ"),
        (dict(n_decoder_layers=0), "n_decoder_layers"),
    ],
)
def test_config_rejects_inconsistent_values(overrides, message):
    with pytest.raises(ValueError, match=message):
        tiny_config(**overrides)


def test_config_is_frozen():
    with pytest.raises(AttributeError):
        ModelConfig().d_model = 8  # type: ignore[misc]


def test_model_follows_dtype_float64_matches_float32():
    model = tiny_model()
    src, tgt = padded_pair()
    with torch.no_grad():
        expected = model(src, tgt)
        model64 = tiny_model().double()
        cache = model64.init_cache(model64.encode(src), model64.padding_mask(src), max_len=tgt.size(1))
        assert cache.self_kv[0][0].dtype == torch.float64 and cache.cross_kv.dtype == torch.float64
        stepped = torch.stack([model64.step(tgt[:, i], cache) for i in range(tgt.size(1))], dim=1)
    real = real_positions(tgt)
    torch.testing.assert_close(stepped[real].float(), expected[real], rtol=1e-4, atol=1e-4)
