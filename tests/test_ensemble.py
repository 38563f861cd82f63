"""Ensembles: cached == uncached, the search maximises the members' mean probability, an
ensemble of one model is that model, and ensemble checkpoints load, check and refuse."""
import pytest
import torch

from conftest import BOS, pad_batch, random_sentences, tiny_model
from infer import SearchConfig, beam_search, greedy_search
from infer.translator import Translator
from seq2seq.checkpoint import CheckpointError, average, ensemble, inference_state, save_atomic
from seq2seq.data import DataConfig, load_split
from seq2seq.ensemble import Ensemble
from seq2seq.tokenizer import Vocabularies, VocabConfig
from test_search import assert_same_hypotheses


@pytest.fixture
def batch():
    return pad_batch(random_sentences(7, 1, 6, 12, seed=123))


def two_models(copy_model):
    # Members may differ in depth and positions; a random one keeps the beams from agreeing.
    return Ensemble([copy_model, tiny_model(seed=3, src_vocab_size=12, tgt_vocab_size=12, n_decoder_layers=1, max_positions=48)])


def test_ensemble_reads_the_shortest_positions_and_refuses_other_ids(copy_model):
    assert two_models(copy_model).config.max_positions == 48
    with pytest.raises(ValueError, match="member 2: src_vocab_size=24, member 1 has 12"):
        Ensemble([copy_model, tiny_model()])


@pytest.mark.parametrize("length_norm", ["average", "gnmt"])
def test_cached_ensemble_beam_equals_uncached(copy_model, batch, length_norm):
    model = two_models(copy_model)
    cfg = SearchConfig(beam_size=4, n_best=4, length_norm=length_norm, max_len_a=1.0, max_len_b=3)
    for a, b in zip(beam_search(model, batch, cfg), beam_search(model, batch, cfg, use_cache=False)):
        assert_same_hypotheses(a, b)
    greedy = SearchConfig(max_len_a=1.0, max_len_b=3)
    assert_same_hypotheses(greedy_search(model, batch, greedy), greedy_search(model, batch, greedy, use_cache=False))


def test_ensemble_scores_are_the_log_of_the_members_mean_probability(copy_model, batch):
    model = two_models(copy_model)
    hyps = beam_search(model, batch, SearchConfig(beam_size=3, n_best=3, max_len_a=1.0, max_len_b=3))
    for row, nbest in enumerate(hyps):
        for h in nbest:
            out = torch.tensor([h.tokens + [2]])  # EOS ends every hypothesis and is scored
            tgt_in = torch.cat([torch.tensor([[BOS]]), out[:, :-1]], dim=1)
            src = batch[row : row + 1]
            probs = torch.stack([torch.softmax(m(src, tgt_in), -1) for m in model.members]).mean(0)  # (1, T, V)
            assert h.log_prob == pytest.approx(probs[0].gather(1, out.T).log().sum().item(), abs=1e-4)


def test_an_ensemble_of_one_model_or_of_its_copies_is_that_model(copy_model, batch):
    cfg = SearchConfig(beam_size=4, n_best=2, max_len_a=1.0, max_len_b=3)
    alone = beam_search(copy_model, batch, cfg)
    for model in (Ensemble([copy_model]), Ensemble([copy_model, copy_model, copy_model])):
        for a, b in zip(beam_search(model, batch, cfg), alone):
            assert_same_hypotheses(a, b)


@pytest.fixture(scope="module")
def vocab(multi30k_slice):
    train = load_split(DataConfig(path=str(multi30k_slice)), "train")
    return Vocabularies.train(train.src, train.tgt, VocabConfig(size=300))


def _checkpoint(path, vocab, seed, **overrides):
    size = vocab.tgt.vocab_size
    save_atomic(inference_state(tiny_model(seed, src_vocab_size=size, tgt_vocab_size=size, **overrides), vocab), path)
    return path


def test_ensemble_checkpoint_translates_as_its_members_do_together(tmp_path, vocab, multi30k_slice):
    a, b = _checkpoint(tmp_path / "a.pt", vocab, 1), _checkpoint(tmp_path / "b.pt", vocab, 2, n_encoder_layers=1)
    save_atomic(ensemble([a, b]), tmp_path / "ab.pt")
    save_atomic(ensemble([tmp_path / "ab.pt", a]), tmp_path / "aba.pt")  # an ensemble contributes its members
    lines = (multi30k_slice / "val.de").read_text(encoding="utf-8").splitlines()[:6]
    opts = dict(beam_size=3, max_len_b=4, max_len=10)
    loaded = Translator.from_checkpoint(tmp_path / "ab.pt")  # packed for oneDNN on CPU, member by member
    members = [Translator.from_checkpoint(p).model for p in (a, b)]
    assert isinstance(loaded.model, Ensemble) and len(Translator.from_checkpoint(tmp_path / "aba.pt").model) == 3
    assert loaded.translate(lines, **opts) == Translator(Ensemble(members), vocab).translate(lines, **opts)


def test_ensemble_checkpoints_refuse_what_they_cannot_do(tmp_path, vocab, multi30k_slice):
    a = _checkpoint(tmp_path / "a.pt", vocab, 1)
    train = load_split(DataConfig(path=str(multi30k_slice)), "train")
    other = Vocabularies.train(train.src[:100], train.tgt[:100], VocabConfig(size=300))
    b = tmp_path / "b.pt"
    save_atomic(inference_state(tiny_model(2, src_vocab_size=other.tgt.vocab_size, tgt_vocab_size=other.tgt.vocab_size), other), b)
    with pytest.raises(CheckpointError, match=f"{b}: its vocabularies differ"):
        ensemble([a, b])
    save_atomic(ensemble([a, a]), tmp_path / "aa.pt")
    with pytest.raises(CheckpointError, match="aa.pt: is an ensemble of 2 models"):
        average([tmp_path / "aa.pt", a])
    pytest.importorskip("safetensors")
    from seq2seq.marian import ExportError, export_marian

    with pytest.raises(ExportError, match="is an ensemble of 2 models"):
        export_marian(tmp_path / "aa.pt", tmp_path / "out")
