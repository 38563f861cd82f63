"""The decoding engine: every search of the toolkit runs through Engine.search.

Shapes: B sentences, S source length, M steps (the longest budget, plus EOS).

For a batch it builds a decoder (seq2seq's KVCache, or the uncached reference) and a greedy or
beam search over it, and steps the search until every sentence is done, asking "all done?"
(the only host sync) every `check_every` steps. Two ways to run the same search:
- dynamic (the default on CPU): a decoder and search sized for each batch; step t attends over
  exactly the t + 1 positions written, and finished sentences leave the batch (once a quarter
  of it is done: each time, every buffer is copied).
- static (the default on CUDA): a batch is padded up to a bucket of shapes (sentences, source
  length, steps), and step t attends over the written positions rounded up to SPAN. Each bucket
  keeps its decoder and search for every later batch of that bucket, and on CUDA one graph of
  the step per span, captured once and replayed (seq2seq.speed.graphs).
"""
from __future__ import annotations

import torch
from torch import Tensor

from infer.beam import BeamSearch
from infer.decoders import make_decoder
from infer.greedy import GreedySearch
from infer.search import Hypothesis, SearchConfig, max_output_lengths, rows_per_sentence
from seq2seq.ensemble import Ensemble
from seq2seq.model import Transformer

SPAN = 16  # positions per graph: a step attends over the written positions rounded up to this
CHECK_EVERY_CUDA = 8  # steps between "all done?" checks on CUDA, where each check stalls the GPU
SHRINK_FRACTION = 4  # a dynamic batch sheds its finished sentences once 1 / this of it is done
MAX_BUCKETS = 16  # static shapes kept with their buffers and graphs; the oldest makes room


def batch_bucket(n: int) -> int:
    """Sentences a static batch of n is padded to: a power of two up to 64, then multiples of 64."""
    return 1 << (n - 1).bit_length() if n <= 64 else -(-n // 64) * 64


def round_up(n: int, to: int) -> int:
    return -(-n // to) * to


class Engine:
    """Engine(model).search(src, max_lens, cfg, greedy) -> per sentence, its n-best list.

    static: bucketed shapes, and on CUDA captured steps (None: on CUDA). use_cache=False decodes
    by recomputing every prefix (the reference the tests compare against; dynamic only)."""

    def __init__(self, model: Transformer | Ensemble, static: bool | None = None, use_cache: bool = True,
                 check_every: int | None = None):
        self.model = model
        self.device = next(model.parameters()).device
        self.static = self.device.type == "cuda" if static is None else static
        if self.static and not use_cache:
            raise ValueError("the uncached reference decoder runs with dynamic shapes only")
        self.use_cache = use_cache
        self.check_every = check_every or (CHECK_EVERY_CUDA if self.device.type == "cuda" else 1)
        self.buckets: dict[tuple, tuple] = {}  # (greedy, cfg, B, S, M) -> (decoder, search, step)
        self.pool = None  # one memory pool for every graph: they replay one at a time

    @torch.inference_mode()
    def search(self, src: Tensor, max_lens: Tensor, cfg: SearchConfig, greedy: bool = False,
               prefix: tuple[Tensor, Tensor] | None = None) -> list[list[Hypothesis]]:
        """src (B, S) right-padded source ids on the model's device; max_lens (B,) output budgets
        -> per sentence, up to cfg.n_best hypotheses, best first (greedy: one). prefix: tokens
        (B, P) and lengths (B,) on the device that each sentence's output must begin with."""
        steps = int(max_lens.max()) + 1  # the longest budget, then EOS
        if not self.static or cfg.sample or prefix is not None:  # a generator or a prefix: not captured
            decoder, search = self._build(src, cfg, greedy, steps, dynamic=True)
            search.start(max_lens.to(self.device), prefix)
            return run(search, steps, self.check_every, shrink=decoder)
        batch = src.size(0)
        src, max_lens = self._pad_to_bucket(src, max_lens)
        positions = min(round_up(steps, SPAN), self.model.config.max_positions)  # the bucket's cache
        try:
            decoder, search, step = self._bucket(src, cfg, greedy, positions)
            decoder.load(src)
            search.start(max_lens.to(self.device))
            return run(search, steps, self.check_every, lambda span: step(min(round_up(span, SPAN), positions)))[:batch]
        except torch.cuda.OutOfMemoryError:
            self.buckets.clear()  # give their memory back before the caller retries a smaller batch
            self.pool = None
            raise

    def _build(self, src: Tensor, cfg: SearchConfig, greedy: bool, steps: int, dynamic: bool = False):
        decoder = make_decoder(self.model, src, rows_per_sentence(cfg, greedy), steps, self.use_cache, dynamic)
        search_cls = GreedySearch if greedy else BeamSearch
        return decoder, search_cls(decoder, self.model.config, cfg, src.size(0), steps, self.device)

    def _pad_to_bucket(self, src: Tensor, max_lens: Tensor) -> tuple[Tensor, Tensor]:
        """Pad the batch with sentences of one EOS and the source with padding, up to its bucket;
        neither changes the real sentences' results."""
        mc = self.model.config
        b, s = src.shape
        rows, width = batch_bucket(b), min(round_up(s, SPAN), mc.max_positions)
        padded = src.new_full((rows, width), mc.pad_id)
        padded[:b, :s] = src
        padded[b:, 0] = mc.eos_id
        return padded, torch.cat([max_lens, max_lens.new_ones(rows - b)])

    def _bucket(self, src: Tensor, cfg: SearchConfig, greedy: bool, steps: int):
        """The decoder, search and step(span) of this batch's bucket, built on first use; on
        CUDA the step replays graphs, captured here."""
        key = (greedy, cfg, *src.shape, steps)
        if key not in self.buckets:
            if len(self.buckets) >= MAX_BUCKETS:
                del self.buckets[next(iter(self.buckets))]
            decoder, search = self._build(src, cfg, greedy, steps)
            step = search.step
            if self.device.type == "cuda":
                from seq2seq.speed.graphs import StepGraphs

                search.start(torch.ones(src.size(0), dtype=torch.long, device=self.device))
                step = StepGraphs(search.step, [min(s, steps) for s in range(SPAN, steps + SPAN, SPAN)], self.pool)
                self.pool = step.pool
            self.buckets[key] = (decoder, search, step)
        return self.buckets[key]


def run(search, steps: int, check_every: int = 1, step=None, shrink=None) -> list[list[Hypothesis]]:
    """Step a started search (step(span), by default search.step) until every sentence is done
    or `steps` ran, checking every check_every steps; -> per sentence, its n-best list. shrink:
    the search's decoder, to drop finished sentences from both once 1 / SHRINK_FRACTION of the
    batch is done."""
    step = step or search.step
    batch = int(search.max_lens.numel())
    alive = torch.arange(batch)  # each row's sentence in the batch as given
    results: list = [None] * batch
    for t in range(steps):
        step(t + 1)  # step t writes position t: t + 1 positions to attend over
        if (t + 1) % check_every:
            continue
        done = search.sentences_done()
        if bool(done.all()):
            break
        if shrink is not None and SHRINK_FRACTION * int(done.sum()) >= alive.numel():
            finished, going = done.nonzero().squeeze(1), (~done).nonzero().squeeze(1)
            for i, hyps in zip(alive[finished.cpu()].tolist(), search.results(finished)):
                results[i] = hyps
            search.keep(going)
            shrink.keep(going)
            alive = alive[going.cpu()]
    for i, hyps in zip(alive.tolist(), search.results()):
        results[i] = hyps
    return results


def greedy_search(model: Transformer | Ensemble, src: Tensor, cfg: SearchConfig = SearchConfig(),
                  use_cache: bool = True) -> list[Hypothesis]:
    """src (B, S) right-padded -> one hypothesis per sentence, eagerly (tests and quick use)."""
    return [h[0] for h in _search(model, src, cfg, True, use_cache)]


def beam_search(model: Transformer | Ensemble, src: Tensor, cfg: SearchConfig = SearchConfig(),
                use_cache: bool = True) -> list[list[Hypothesis]]:
    """src (B, S) right-padded -> per sentence, up to cfg.n_best hypotheses, best first."""
    return _search(model, src, cfg, False, use_cache)


def _search(model, src: Tensor, cfg: SearchConfig, greedy: bool, use_cache: bool) -> list[list[Hypothesis]]:
    mc = model.config
    max_lens = max_output_lengths((src != mc.pad_id).sum(dim=1), cfg, mc.max_positions)
    return Engine(model, static=False, use_cache=use_cache).search(src, max_lens, cfg, greedy)
