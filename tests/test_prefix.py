"""A forced target prefix: kept verbatim, scored like the rest of the hypothesis, and the search
goes on from it as it would from that teacher-forced prefix; cached equals uncached."""
import pytest
import torch

from infer.engine import Engine
from infer.search import SearchConfig, max_output_lengths
from tests.conftest import BOS, EOS, PAD, pad_batch, random_sentences

CFG = dict(max_len_a=1.0, max_len_b=4, max_len=20)


def run(model, src, prefixes, cfg, greedy, use_cache=True):
    max_lens = max_output_lengths((src != PAD).sum(1), cfg, model.config.max_positions)
    max_lens = torch.maximum(max_lens, torch.tensor([len(p) for p in prefixes]))
    prefix = (pad_batch([p or [PAD] for p in prefixes]), torch.tensor([len(p) for p in prefixes]))
    return Engine(model, static=False, use_cache=use_cache).search(src, max_lens, cfg, greedy, prefix)


def sequence_log_prob(model, src_row, seq):
    """The model's log-prob of seq (ending in EOS), teacher-forced."""
    tgt_in = torch.tensor([[BOS] + seq[:-1]])
    with torch.no_grad():
        lp = torch.log_softmax(model(src_row.unsqueeze(0), tgt_in).float(), -1)[0]
    return lp.gather(1, torch.tensor(seq).unsqueeze(1)).sum().item()


def test_greedy_keeps_the_prefix_and_goes_on_as_from_the_teacher_forced_prefix(copy_model):
    src = pad_batch(random_sentences(6, 2, 6, 12, seed=1))
    prefixes = [[5, 9], [], [7], [4, 4, 4], [11, 6], [8]]
    cfg = SearchConfig(beam_size=1, **CFG)
    found = [h[0] for h in run(copy_model, src, prefixes, cfg, greedy=True)]
    budgets = torch.maximum(max_output_lengths((src != PAD).sum(1), cfg, 64), torch.tensor([len(p) for p in prefixes]))
    for row, prefix, hyp, budget in zip(src, prefixes, found, budgets.tolist()):
        assert hyp.tokens[: len(prefix)] == prefix
        seq = list(prefix)  # the oracle: argmax from the teacher-forced prefix, full forward each step
        while len(seq) < budget:
            with torch.no_grad():
                lp = torch.log_softmax(copy_model(row.unsqueeze(0), torch.tensor([[BOS] + seq])), -1)[0, -1]
            lp[[PAD, BOS]] = float("-inf")
            token = int(lp.argmax())
            if token == EOS:
                break
            seq.append(token)
        assert hyp.tokens == seq
        assert hyp.log_prob == pytest.approx(sequence_log_prob(copy_model, row, hyp.tokens + [EOS]), abs=1e-4)
    assert any(h.tokens[len(p):] for h, p in zip(found, prefixes))  # the continuation is not empty


@pytest.mark.parametrize("greedy", [True, False])
def test_cached_equals_uncached_with_a_prefix_and_beams_keep_it(copy_model, greedy):
    src = pad_batch(random_sentences(5, 2, 6, 12, seed=2))
    prefixes = [[6], [9, 9], [], [4, 5, 6, 7], [10]]
    cfg = SearchConfig(beam_size=1 if greedy else 3, n_best=1 if greedy else 2, **CFG)
    cached, uncached = (run(copy_model, src, prefixes, cfg, greedy, use_cache) for use_cache in (True, False))
    for row, prefix, a, b in zip(src, prefixes, cached, uncached):
        assert [h.tokens for h in a] == [h.tokens for h in b]
        assert [h.log_prob for h in a] == pytest.approx([h.log_prob for h in b], abs=1e-4)
        for h in a:
            assert h.tokens[: len(prefix)] == prefix
            assert h.log_prob == pytest.approx(sequence_log_prob(copy_model, row, h.tokens + [EOS]), abs=1e-4)


def test_cli_reads_one_prefix_a_line_and_names_the_file_when_counts_differ(tmp_path, copy_model, capsys):
    from infer.cli import translate_main
    from seq2seq.checkpoint import inference_state, save_atomic
    from seq2seq.tokenizer import Tokenizer, Vocabularies

    tok = Tokenizer.placeholder(12)
    save_atomic(inference_state(copy_model, Vocabularies(tok, tok)), tmp_path / "m.pt")
    (tmp_path / "in.txt").write_text("t4 t5 t6\n\nt7 t8\n")
    (tmp_path / "prefix.txt").write_text("t9 t9\nt5\n\n")
    args = [str(tmp_path / "m.pt"), str(tmp_path / "in.txt"), "--quiet", "--device", "cpu", "--prefix"]
    assert translate_main([*args, str(tmp_path / "prefix.txt"), "-o", str(tmp_path / "out.txt")]) == 0
    out = (tmp_path / "out.txt").read_text().splitlines()
    assert len(out) == 3 and out[0].startswith("t9 t9") and out[1] == "" and out[2]
    (tmp_path / "short.txt").write_text("t9\n")
    assert translate_main([*args, str(tmp_path / "short.txt")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and f"{tmp_path / 'short.txt'}: 1 prefixes for 3 input lines" in err
