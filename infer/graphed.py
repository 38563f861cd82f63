"""Greedy search whose whole per-token step is one CUDA graph, replayed without host syncs.

The step (embedding at a device-side position, every decoder layer on a StaticCache, the output
projection, log-softmax, the output rules of search.constrain, argmax, bookkeeping) keeps the
same shapes and reads no host value, so it is captured once per (rows, source length, budget)
and replayed. Finished rows keep running (static shapes) but no longer change; the host asks
"all finished?" only every `check_every` steps. The search it runs is run_greedy's: same tokens,
log-probs and scores (tests compare them eagerly on CPU; bench/decode_gpu.py on the GPU).

Shapes: B sentences (rows), S source length, M steps (budget + 1), V vocabulary.
"""
from __future__ import annotations

import torch
from torch import Tensor

from infer.search import Hypothesis, SearchConfig, max_output_lengths
from seq2seq.cache import StaticCache
from seq2seq.model import Transformer


class GraphedGreedy:
    """One batch shape's captured step. Call run(src) for each batch of that shape."""

    def __init__(self, model: Transformer, batch: int, src_len: int, cfg: SearchConfig,
                 use_graph: bool | None = None, check_every: int = 8):
        mc = model.config
        self.model, self.cfg, self.check_every = model, cfg, check_every
        device = next(model.parameters()).device
        self.use_graph = device.type == "cuda" if use_graph is None else use_graph
        self.steps = min(cfg.max_len, mc.max_positions - 1) + 1  # the longest budget, plus EOS
        self.banned = torch.tensor([mc.pad_id, mc.bos_id], device=device)
        # Static inputs and outputs of the step, written in place.
        cross = torch.zeros(mc.n_decoder_layers, 2, batch, mc.n_heads, src_len, mc.head_dim,
                            device=device, dtype=next(model.parameters()).dtype)
        self.cache = StaticCache.allocate(cross, torch.zeros(batch, 1, 1, src_len, dtype=torch.bool, device=device), self.steps)
        self.last = torch.full((batch,), mc.bos_id, device=device)  # newest token of each row
        self.max_lens = torch.zeros(batch, dtype=torch.long, device=device)
        self.out = torch.full((batch, self.steps), mc.pad_id, device=device)  # emitted tokens
        self.log_probs = torch.zeros(batch, device=device)
        self.ended_at = torch.full((batch,), -1, dtype=torch.long, device=device)  # step of EOS
        self.graph = None

    def _reset(self) -> None:
        mc = self.model.config
        self.cache.length.zero_()
        self.last.fill_(mc.bos_id)
        self.out.fill_(mc.pad_id)
        self.log_probs.zero_()
        self.ended_at.fill_(-1)

    def _step(self) -> None:
        """One token for every row; everything stays on the device."""
        mc, cfg = self.model.config, self.cfg
        step = self.cache.length.clone()  # (1,): the index of the token this step emits (the cache advances it)
        logits = self.model.step(self.last.unsqueeze(1), self.cache)[:, -1]  # advances the cache
        lp = torch.log_softmax(logits.float(), dim=-1)
        # search.constrain without host values: banned ids, EOS not before min_len, only EOS at the budget.
        lp.index_fill_(1, self.banned, float("-inf"))
        eos_lp = lp[:, mc.eos_id].clone()
        lp[:, mc.eos_id] = torch.where(step < cfg.min_len, float("-inf"), eos_lp)
        forced = (self.max_lens <= step).unsqueeze(1)  # (B, 1)
        only_eos = torch.full_like(lp, float("-inf"))
        only_eos[:, mc.eos_id] = eos_lp
        lp = torch.where(forced, only_eos, lp)
        best_lp, best = lp.max(dim=-1)
        running = self.ended_at < 0
        self.log_probs.add_(torch.where(running, best_lp, 0.0))
        best = torch.where(running, best, mc.pad_id)
        self.out.index_copy_(1, step, best.unsqueeze(1))
        self.ended_at.copy_(torch.where(running & (best == mc.eos_id), step, self.ended_at))
        self.last.copy_(torch.where(running, best, mc.eos_id))

    def _capture(self) -> None:
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):  # warm-up off the default stream, as capture requires
            for _ in range(2):
                self._step()
        torch.cuda.current_stream().wait_stream(stream)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self._step()

    @torch.inference_mode()
    def run(self, src: Tensor) -> list[Hypothesis]:
        """src (B, S) right-padded, of this object's shape -> one hypothesis per sentence."""
        model, cfg = self.model, self.cfg
        src_mask = model.padding_mask(src)
        memory = model.encode(src)
        cross = torch.stack([torch.stack(layer.cross_attn.project_kv(memory)) for layer in model.decoder_layers])
        self.cache.load(cross, src_mask)
        self.max_lens.copy_(max_output_lengths((src != model.config.pad_id).sum(dim=1), cfg, model.config.max_positions))
        if self.use_graph and self.graph is None:
            self._capture()
        self._reset()
        for t in range(self.steps):
            self.graph.replay() if self.use_graph else self._step()
            if (t + 1) % self.check_every == 0 and bool((self.ended_at >= 0).all()):  # the only sync
                break
        return self._hypotheses()

    def _hypotheses(self) -> list[Hypothesis]:
        out, ended, log_probs = self.out.tolist(), self.ended_at.tolist(), self.log_probs.tolist()
        return [Hypothesis(row[:end], lp / self.cfg.length_penalty(end + 1), lp) for row, end, lp in zip(out, ended, log_probs)]
