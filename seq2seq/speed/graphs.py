"""CUDA graphs of a decoding step: captured once, replayed for every later step and batch.

A step of an encoder-decoder search runs hundreds of small kernels; launched one by one from
Python, a GPU spends most of each step waiting for the host. A step whose tensors keep their
addresses and shapes and which reads no host value (the searches of infer, on seq2seq's
KVCache) can instead be captured as a graph and replayed by one call.

The step takes one host value, the span of positions it attends over, so there is one graph
per span; they share one memory pool, since they replay one at a time on one stream.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable

import torch


class StepGraphs:
    """Graphs of step(span), one per span, sharing one memory pool (also across instances
    given the same pool)."""

    def __init__(self, step: Callable[[int], None], spans: Iterable[int], pool=None):
        """Capture step for every span. The warm-up step before each capture (libraries set
        themselves up on a first call, which a capture may not hold) runs on whatever state there
        is and changes it: reset it before replaying."""
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}
        for span in sorted(set(spans)):
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):  # warm up off the default stream, as capture requires
                step(span)
            torch.cuda.current_stream().wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=pool):
                step(span)
            pool = graph.pool()
            self.graphs[span] = graph
        self.pool = pool

    def __call__(self, span: int) -> None:
        self.graphs[span].replay()
