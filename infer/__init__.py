"""infer: greedy and beam search over the seq2seq transformer."""
from infer.beam import beam_search
from infer.greedy import greedy_search
from infer.search import Hypothesis, SearchConfig
from infer.translator import Translator

__all__ = ["Hypothesis", "SearchConfig", "Translator", "beam_search", "greedy_search"]
