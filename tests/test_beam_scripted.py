"""Beam search on a decoder whose next-token probabilities are scripted, checked by hand.

Vocabulary: 0 pad, 1 bos, 2 eos, 3 a, 4 b, 5 c. A script maps an output prefix to the
probabilities of the next token; anything unlisted has probability 0.
"""
import math

import pytest
import torch

from infer.beam import BeamSearch
from infer.engine import run
from infer.greedy import GreedySearch
from infer.search import SearchConfig
from seq2seq.config import ModelConfig

PAD, BOS, EOS, A, B, C = 0, 1, 2, 3, 4, 5
VOCAB = 6
IDS = ModelConfig(pad_id=PAD, bos_id=BOS, eos_id=EOS)

# Beam finds what greedy misses: greedy takes "a" (0.6) then EOS (0.4): P = 0.24,
# while "b" then EOS has P = 0.4 * 0.9 = 0.36.
SCRIPT_BEAM_BEATS_GREEDY = {
    (): {A: 0.6, B: 0.4},
    (A,): {EOS: 0.4, A: 0.35, B: 0.25},
    (B,): {EOS: 0.9, A: 0.1},
    (A, A): {EOS: 1.0},
    (A, B): {EOS: 1.0},
    (B, A): {EOS: 1.0},
}
# Length matters: finished hypotheses are "a" (P 0.30, 2 tokens with EOS), "a c" (0.243, 3)
# and "b c c" (0.288, 4). Raw log-prob prefers "a"; per-token averaging prefers "b c c".
SCRIPT_LENGTH = {
    (): {A: 0.6, B: 0.4},
    (A,): {EOS: 0.5, C: 0.45, B: 0.05},
    (B,): {EOS: 0.1, C: 0.9},
    (A, B): {EOS: 1.0},
    (A, C): {EOS: 0.9, C: 0.1},
    (B, C): {EOS: 0.2, C: 0.8},
    (A, C, C): {EOS: 1.0},
    (B, C, C): {EOS: 1.0},
}


class ScriptedDecoder:
    """A decoder (step / reorder) reading scripted probabilities."""

    def __init__(self, scripts, beam_size):
        self.beam_size = beam_size
        self.sentence = [s for s in range(len(scripts)) for _ in range(beam_size)]
        self.scripts = scripts
        self.prefix = [()] * len(self.sentence)
        self.steps = 0
        self.rows_per_step = []

    def step(self, last, span):
        self.steps += 1
        self.rows_per_step.append(len(self.prefix))
        if self.steps > 1:
            self.prefix = [p + (t,) for p, t in zip(self.prefix, last.tolist())]
        logits = torch.full((len(self.prefix), VOCAB), float("-inf"))
        for row, (s, p) in enumerate(zip(self.sentence, self.prefix)):
            for token, prob in self.scripts[s].get(p, {}).items():
                logits[row, token] = math.log(prob)
        return logits

    def reorder(self, rows):
        self.prefix = [self.prefix[r] for r in rows.tolist()]


def search(search_cls, scripts, budget, cfg):
    """Run a search over the scripts, checking for the end after every step, as on CPU."""
    decoder = ScriptedDecoder(scripts, 1 if search_cls is GreedySearch else cfg.beam_size)
    found = search_cls(decoder, IDS, cfg, len(scripts), budget + 1, torch.device("cpu"))
    found.start(torch.tensor([budget] * len(scripts)))
    return run(found, budget + 1), decoder


def beam(scripts, budget, **cfg):
    """Beam search, stop "current" unless cfg says otherwise (the hand derivations below assume it)."""
    return search(BeamSearch, scripts, budget, SearchConfig(**{"beam_size": 2, "stop": "current", **cfg}))


def test_beam_finds_the_better_hypothesis_and_stops_early():
    (nbest,), state = beam([SCRIPT_BEAM_BEATS_GREEDY], budget=10, n_best=2, length_norm="none")
    assert [h.tokens for h in nbest] == [[B], [A]]
    assert [h.log_prob for h in nbest] == pytest.approx([math.log(0.36), math.log(0.24)])
    # After two steps, two hypotheses are finished and the best live one ("a a", 0.21) is
    # worse than both: the sentence stops though its budget allows ten tokens.
    assert state.steps == 2


def test_greedy_on_the_same_script_takes_the_locally_best_path():
    ((hyp,),), _ = search(GreedySearch, [SCRIPT_BEAM_BEATS_GREEDY], 10, SearchConfig(length_norm="none"))
    assert hyp.tokens == [A] and hyp.log_prob == pytest.approx(math.log(0.24))


def test_beam_size_one_equals_greedy_on_the_script():
    (nbest,), _ = beam([SCRIPT_BEAM_BEATS_GREEDY], budget=10, beam_size=1, length_norm="none")
    assert nbest[0].tokens == [A] and nbest[0].log_prob == pytest.approx(math.log(0.24))


@pytest.mark.parametrize(
    "length_norm, alpha, tokens, score",
    [
        ("none", 0.0, [A], math.log(0.30)),
        ("average", 0.0, [B, C, C], math.log(0.288) / 4),
        ("gnmt", 1.0, [B, C, C], math.log(0.288) / (9 / 6)),
        ("gnmt", 0.0, [A], math.log(0.30)),  # alpha 0 is no penalty at all
    ],
)
def test_length_penalty_decides_between_short_and_long(length_norm, alpha, tokens, score):
    (nbest,), _ = beam([SCRIPT_LENGTH], budget=3, length_norm=length_norm, alpha=alpha)
    assert nbest[0].tokens == tokens and nbest[0].score == pytest.approx(score)


def test_finished_hypotheses_are_set_aside_while_beams_go_on():
    """Averaging: "a" finishes at step 1 and "a c" at step 2 while "b c" lives on; every
    finished hypothesis is kept, ranked, and the long one that ends last wins."""
    (nbest,), state = beam([SCRIPT_LENGTH], budget=3, beam_size=2, n_best=2, length_norm="average")
    assert [h.tokens for h in nbest] == [[B, C, C], [A, C]]
    assert [h.score for h in nbest] == pytest.approx([math.log(0.288) / 4, math.log(0.243) / 3])
    assert state.steps == 4


def test_early_stop_ends_once_beam_size_are_finished():
    """Averaging, stop "early": "a" finishes at step 2 and "a c" at step 3; two are finished, so
    the sentence is done, though the live "b c c" (log 0.288 / 4 were it to end) would beat both,
    as stop "current" finds above."""
    (nbest,), state = beam([SCRIPT_LENGTH], budget=3, beam_size=2, n_best=2, length_norm="average", stop="early")
    assert [h.tokens for h in nbest] == [[A, C], [A]]
    assert [h.score for h in nbest] == pytest.approx([math.log(0.243) / 3, math.log(0.30) / 2])
    assert state.steps == 3


def test_budget_forces_eos_keeping_its_probability():
    """With a budget of 2 tokens, step 2 may only emit EOS: "b c" ends with P(eos) = 0.2."""
    (nbest,), _ = beam([SCRIPT_LENGTH], budget=2, n_best=2, length_norm="average")
    assert [h.tokens for h in nbest] == [[A, C], [A]]
    (nbest,), _ = beam([SCRIPT_LENGTH], budget=1, n_best=2, length_norm="none")
    assert [h.tokens for h in nbest] == [[A], [B]]
    assert [h.log_prob for h in nbest] == pytest.approx([math.log(0.30), math.log(0.04)])


def test_min_len_forbids_early_eos():
    (nbest,), _ = beam([SCRIPT_BEAM_BEATS_GREEDY], budget=10, n_best=2, length_norm="none", min_len=2)
    assert [h.tokens for h in nbest] == [[A, A], [A, B]]
    assert [h.log_prob for h in nbest] == pytest.approx([math.log(0.21), math.log(0.15)])


def test_batch_of_scripts_finishing_at_different_steps():
    """Averaging. Sentence 0: "b" (log 0.36 / 2) and "a" finish at step 1, but "a a" could
    still reach log 0.21 / 4; at step 2 its beams both end and it settles, keeping its results
    while the batch steps on. Sentence 1 runs to its budget, as above; then the search stops."""
    results, state = beam([SCRIPT_BEAM_BEATS_GREEDY, SCRIPT_LENGTH], budget=3, length_norm="average")
    assert [r[0].tokens for r in results] == [[B], [B, C, C]]
    assert [h.tokens for h in results[0]] == [[B]] and state.steps == 4
