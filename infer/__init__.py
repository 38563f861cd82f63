"""infer: greedy and beam search over the seq2seq transformer."""
from infer.engine import Engine, beam_search, greedy_search
from infer.search import Hypothesis, SearchConfig
from infer.translator import Translator

__all__ = ["Engine", "Hypothesis", "SearchConfig", "Translator", "beam_search", "greedy_search"]
