"""Greedy and beam search whose whole per-token step is one CUDA graph, replayed without host syncs.

The step (embedding at a device-side position, every decoder layer on a StaticCache, the output
projection, log-probs, the output rules of search.constrain, the search's own bookkeeping)
keeps the same shapes and reads no host value, so it is captured once per (sentences, source
length, budget) and replayed: once per length bucket of `span` positions, so that
self-attention reads the positions written so far rounded up to a bucket, not the whole buffer.
Finished sentences keep running (static shapes) but no longer change their results; the host
asks "all done?" only every `check_every` steps. The searches are run_greedy's and run_beam's:
same tokens, log-probs and scores (tests compare them eagerly on CPU; bench/decode_gpu.py on
the GPU).

The step can also be compiled (compile=True). On CUDA, torch.compile fuses its small kernels
before the capture. On CPU, without graphs, it turns the step into a few C++ loops: no
per-operator overhead of eager PyTorch (about a third of a batch-1 step); a model packed with
seq2seq.packed.pack_for_cpu multiplies through its packed kernel (with oneDNN's and
keep_weights=True, products of 1-4 rows as fused reductions instead). On CPU it compiles once per span
bucket, for fixed shapes (kernels compiled for any span ran up to 1.5x slower): 10-40 s each on
two cores the first time, less from inductor's on-disk cache after that; a coarser span (32)
means fewer compiles.

Shapes: B sentences, K beam size, N = B * K rows, S source length, M steps (budget + 1),
V vocabulary, C = 2K candidates, F = n_best finished hypotheses kept per sentence.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from infer.search import Hypothesis, SearchConfig, max_output_lengths
from seq2seq.attention import REDUCE_QUERIES, native_attention
from seq2seq.cache import StaticCache
from seq2seq.model import Transformer


# On CPU, each row's best tokens are found through the maxima of chunks of this many columns
# (row_best for beams, row_max for greedy). At N 128, V 32k, C 8: 3.2 against 8.4 ms for the
# top-k and log-softmax, compiled (a scratch timing, 2-core AMD EPYC); chunks of 128 ran about
# as fast.
TOP_CHUNK = 64


def _chunk_maxima(logits: Tensor, chunk: int) -> Tensor:
    """logits (N, V) -> the maximum of each run of `chunk` columns (N, ceil(V / chunk)); the last
    run may be short."""
    n, v = logits.shape
    full = v // chunk
    maxima = logits[:, : full * chunk].view(n, full, chunk).amax(-1)
    if full * chunk < v:
        maxima = torch.cat([maxima, logits[:, full * chunk :].amax(-1, keepdim=True)], dim=1)
    return maxima


def _chunk_columns(chunks: Tensor, chunk: int) -> Tensor:
    """Chunk indices (...) -> their columns (..., chunk); past the last column where it is short."""
    return chunks.unsqueeze(-1) * chunk + torch.arange(chunk, device=chunks.device)


def _logsumexp(logits: Tensor, maxima: Tensor) -> Tensor:
    """Each row's logsumexp in fp32 (N, 1), from the maxima of its chunks: no pass for the peak."""
    peak = maxima.amax(-1, keepdim=True).float()
    return peak + (logits.float() - peak).exp().sum(-1, keepdim=True).log()


def row_best(logits: Tensor, k: int, chunk: int | None = None) -> tuple[Tensor, Tensor]:
    """logits (N, V) -> the columns of each row's k largest, best first (N, k), and each row's
    logsumexp in fp32 (N, 1). With chunk: through the k chunks of `chunk` columns whose maxima
    are largest, which hold all k (a column outside them has k larger ones, their maxima): one
    max pass over the logits and top-k's over (N, V / chunk) and (N, k * chunk), instead of a
    top-k over (N, V), which on CPU copies and partially sorts every row."""
    n, v = logits.shape
    if not chunk or -(-v // chunk) < k:  # no chunks, or too few to choose k of
        return logits.topk(k, dim=-1).indices, logits.float().logsumexp(-1, keepdim=True)
    maxima = _chunk_maxima(logits, chunk)  # (N, V / chunk)
    columns = _chunk_columns(maxima.topk(k, dim=-1).indices, chunk).view(n, k * chunk)
    values = logits.gather(1, columns.clamp(max=v - 1)).masked_fill(columns >= v, float("-inf"))
    return columns.gather(1, values.topk(k, dim=-1).indices), _logsumexp(logits, maxima)


def row_max(logits: Tensor, shut: Tensor, shut_on: Tensor, chunk: int | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """The maximum of each row of logits (N, V) and its column, the first on ties, as max(dim=-1)
    gives, leaving out column shut[e] (E,) of the rows where shut_on[:, e] (N, E) holds; and each
    row's logsumexp over all columns, in fp32 (N, 1). With chunk: through the maxima of chunks of
    `chunk` columns, only the chunks holding shut columns recomputed without them; on CPU a max
    with its index runs column by column, a max alone on vectors (0.7 against 1.4 ms at 32 x 32k,
    compiled, with the logsumexp; a scratch timing, 2-core AMD EPYC)."""
    n, v = logits.shape
    if not chunk or v <= chunk:
        closed = torch.zeros_like(logits, dtype=torch.bool).index_copy(1, shut, shut_on)
        values, columns = logits.masked_fill(closed, float("-inf")).max(dim=-1)
        return values, columns, logits.float().logsumexp(-1, keepdim=True)

    def without_shut(columns: Tensor, on: Tensor) -> Tensor:
        """columns (N, ..., chunk) -> their logits, -inf where shut (on: (N, 1.., E)). Columns past V
        read column V - 1 again: a later copy never wins a max that takes the first on ties."""
        closed = ((columns.unsqueeze(-1) == shut) & on.unsqueeze(-2)).any(-1)
        return logits.gather(1, columns.clamp(max=v - 1).view(n, -1)).view(columns.shape).masked_fill(closed, float("-inf"))

    maxima = _chunk_maxima(logits, chunk)  # (N, C)
    lse = _logsumexp(logits, maxima)
    # The chunks of shut columns again, without them (a chunk met twice gets the same maximum twice).
    shut_chunks = (shut // chunk).expand(n, -1)  # (N, E)
    redone = without_shut(_chunk_columns(shut_chunks, chunk), shut_on.unsqueeze(1)).amax(-1)  # (N, E)
    best_chunk = maxima.scatter(1, shut_chunks, redone).argmax(-1, keepdim=True)  # (N, 1)
    columns = _chunk_columns(best_chunk, chunk)  # (N, 1, chunk)
    values, within = without_shut(columns, shut_on.unsqueeze(1)).max(dim=-1)
    return values.squeeze(1), columns.squeeze(1).gather(1, within).squeeze(1), lse


class _Graphed:
    """What both searches share: static buffers, capture and the loop."""

    def __init__(self, model: Transformer, batch: int, src_len: int, cfg: SearchConfig, beam_size: int,
                 use_graph: bool | None, check_every: int, span: int = 16, compile: bool = False):
        mc = model.config
        self.model, self.cfg, self.check_every, self.beam_size, self.span = model, cfg, check_every, beam_size, span
        self.shape = (batch, src_len)
        positions = model.tgt_embed.positions  # follows the model's device and dtype (packed weights are buffers)
        device, dtype = positions.device, positions.dtype
        self.use_graph = device.type == "cuda" if use_graph is None else use_graph
        # fullgraph: a graph break would silently run part of every step eagerly. On CPU,
        # dynamic=False: one compile per span (the only thing that changes), each with fixed-size
        # loops. On CUDA the compiled step is captured as a graph per span, and compiled for any
        # span after the second one it meets: Triton kernels bound-check their loops anyway.
        dynamic = None if device.type == "cuda" else False
        self.compiled = torch.compile(self._step_at, fullgraph=True, dynamic=dynamic) if compile else None
        self.steps = min(cfg.max_len, mc.max_positions - 1) + 1  # the longest budget, plus EOS
        cross = torch.zeros(mc.n_decoder_layers, 2, batch, mc.n_heads, src_len, mc.head_dim, device=device, dtype=dtype)
        mask = torch.zeros(batch, 1, 1, src_len, dtype=torch.bool, device=device)
        # V positions-last where attention runs as compiled reductions over any number of keys
        # (seq2seq.attention); SDPA, on CUDA or uncompiled, reads V as (positions, Dh), and so
        # does the native kernel, which ran 1.05-1.5x faster on it (bench/cpu_attention.py).
        values_last = (compile and device.type == "cpu" and beam_size <= REDUCE_QUERIES
                       and not native_attention(batch, mc.head_dim, dtype))
        self.cache = StaticCache.allocate(cross, mask, self.steps, beam_size, values_last=values_last)
        self.max_lens = torch.zeros(batch, dtype=torch.long, device=device)  # per sentence
        self.last = torch.full((batch * beam_size,), mc.bos_id, device=device)  # newest token of each row
        self.own_first = False  # whether step 0 runs _first_step, of other shapes, instead of _step
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}  # one per span (0: the first step)
        self.ahead: Callable[[int], None] | None = None  # a step per span compiled ahead of time (infer.aot)
        # row_best's and row_max's chunks, on CPU; CUDA's top-k or max over whole rows is one kernel already
        self.top_chunk = TOP_CHUNK if device.type == "cpu" else None
        # padding and BOS, never emitted, and EOS, emitted under its own rules (min_len, budgets)
        self.specials = torch.tensor([mc.pad_id, mc.bos_id, mc.eos_id], device=device)

    def _length_penalty(self, length: Tensor) -> Tensor:
        """SearchConfig.length_penalty on a device tensor of lengths (EOS included)."""
        if self.cfg.length_norm == "average":
            return length.float()
        if self.cfg.length_norm == "gnmt":
            return ((5.0 + length.float()) / 6.0) ** self.cfg.alpha
        return torch.ones_like(length, dtype=torch.float32)

    def _span(self, t: int) -> int:
        """Positions step t attends to (it writes position t), rounded up to the bucket."""
        return min(self.steps, (t // self.span + 1) * self.span)

    def _key(self, t: int) -> int:
        """Which step function step t runs: its span, or 0 for a search's own first step."""
        return 0 if t == 0 and self.own_first else self._span(t)

    def _step_at(self, span: int) -> None:
        """One step attending over the first `span` positions; span 0: the first step."""
        if span == 0:
            return self._first_step()
        self.cache.span = span
        self._step()

    def _run_step(self, span: int) -> None:
        if self.ahead is not None:
            return self.ahead(span)
        if self.compiled is None:
            return self._step_at(span)
        # Every object compiles the same method; the default limit of 8 compiled versions per
        # function would send later objects back to eager PyTorch.
        with torch._dynamo.config.patch(recompile_limit=1024):
            self.compiled(span)

    def _capture(self) -> None:
        """A graph per span. Warm-ups run real steps on whatever state is there; run resets it."""
        pool = None  # the graphs replay one at a time, so they share one memory pool
        for span in sorted({self._key(t) for t in range(self.steps)}):
            self._reset()
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):  # warm-up (and compile) off the default stream, as capture requires
                for _ in range(2):
                    self._run_step(span)
            torch.cuda.current_stream().wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=pool):
                self._run_step(span)
            pool = graph.pool()
            self.graphs[span] = graph

    @torch.inference_mode()
    def run(self, src: Tensor):
        """src (B, S) right-padded, of this object's shape -> the search's results."""
        model, mc = self.model, self.model.config
        if tuple(src.shape) != self.shape:  # a copy into the static buffers would broadcast a smaller batch
            raise ValueError(f"this search was built for source batches of shape {self.shape}, got {tuple(src.shape)}")
        memory = model.encode(src)
        cross = torch.stack([torch.stack(layer.cross_attn.project_kv(memory)) for layer in model.decoder_layers])
        self.cache.load(cross, model.padding_mask(src))
        self.max_lens.copy_(max_output_lengths((src != mc.pad_id).sum(dim=1), self.cfg, mc.max_positions))
        if self.use_graph and not self.graphs:
            self._capture()
        self._reset()
        for t in range(self.steps):
            span = self._key(t)
            if self.use_graph:
                self.graphs[span].replay()
            else:
                self._run_step(span)
            if (t + 1) % self.check_every == 0 and bool(self._all_done()):  # the only sync
                break
        return self._results()


class GraphedGreedy(_Graphed):
    """run_greedy as a captured step. GraphedGreedy(model, B, S, cfg).run(src) -> [Hypothesis] * B."""

    def __init__(self, model: Transformer, batch: int, src_len: int, cfg: SearchConfig,
                 use_graph: bool | None = None, check_every: int = 8, span: int = 16, compile: bool = False):
        super().__init__(model, batch, src_len, cfg, 1, use_graph, check_every, span, compile)
        device = self.last.device
        self.out = torch.full((batch, self.steps), model.config.pad_id, device=device)  # emitted tokens
        self.log_probs = torch.zeros(batch, device=device)
        self.ended_at = torch.full((batch,), -1, dtype=torch.long, device=device)  # step of EOS
        self.always = torch.ones(2, dtype=torch.bool, device=device)  # padding and BOS: never

    def _pick(self, step: Tensor) -> tuple[Tensor, Tensor]:
        """Each row's next token and its log-prob (N,) under search.constrain's rules, without
        host values: banned ids, no EOS before min_len, only EOS once a row's budget is spent.
        The best allowed logit is the best allowed log-prob (they differ by one number per row),
        so no (N, V) log-softmax is written."""
        mc, cfg = self.model.config, self.cfg
        logits = self.model.step(self.last.unsqueeze(1), self.cache)[:, -1]  # (N, V); advances the cache
        shut_on = torch.cat([self.always, step < cfg.min_len]).expand(logits.size(0), -1)  # (N, 3): banned, banned, EOS
        best_logit, best, lse = row_max(logits, self.specials, shut_on, self.top_chunk)
        forced = self.max_lens <= step  # (N,)
        best_logit = torch.where(forced, logits[:, mc.eos_id], best_logit)
        return torch.where(forced, mc.eos_id, best), best_logit.float() - lse.squeeze(1)

    def _reset(self) -> None:
        mc = self.model.config
        self.cache.reset()
        self.last.fill_(mc.bos_id)
        self.out.fill_(mc.pad_id)
        self.log_probs.zero_()
        self.ended_at.fill_(-1)

    def _step(self) -> None:
        mc = self.model.config
        step = self.cache.length.clone()  # (1,): the index of the token this step emits
        best, best_lp = self._pick(step)
        running = self.ended_at < 0
        self.log_probs.add_(torch.where(running, best_lp, 0.0))
        best = torch.where(running, best, mc.pad_id)
        self.out.index_copy_(1, step, best.unsqueeze(1))
        self.ended_at.copy_(torch.where(running & (best == mc.eos_id), step, self.ended_at))
        self.last.copy_(torch.where(running, best, mc.eos_id))

    def _all_done(self) -> Tensor:
        return (self.ended_at >= 0).all()

    def _results(self) -> list[Hypothesis]:
        out, ended, log_probs = self.out.tolist(), self.ended_at.tolist(), self.log_probs.tolist()
        return [Hypothesis(row[:end], lp / self.cfg.length_penalty(end + 1), lp) for row, end, lp in zip(out, ended, log_probs)]


class GraphedBeam(_Graphed):
    """run_beam as a captured step. GraphedBeam(model, B, S, cfg).run(src) -> per sentence, up to
    cfg.n_best hypotheses, best first. Re-ranking gathers token histories and the cache's
    ancestor table, never the K/V buffers. Step 0 runs one row per sentence (its own compile or
    graph): every beam would start from BOS alone."""

    def __init__(self, model: Transformer, batch: int, src_len: int, cfg: SearchConfig,
                 use_graph: bool | None = None, check_every: int = 8, span: int = 16, compile: bool = False):
        super().__init__(model, batch, src_len, cfg, cfg.beam_size, use_graph, check_every, span, compile)
        device, k, f = self.last.device, cfg.beam_size, cfg.n_best
        self.sentence = torch.arange(batch, device=device).unsqueeze(1)  # (B, 1)
        self.history = torch.full((batch * k, self.steps), model.config.pad_id, device=device)  # tokens so far
        self.scores = torch.zeros(batch, k, device=device)  # cumulative log-probs of live hypotheses
        self.fin_scores = torch.zeros(batch, f, device=device)  # finished, best first; -inf = empty
        self.fin_log_probs = torch.zeros(batch, f, device=device)
        self.fin_lengths = torch.zeros(batch, f, dtype=torch.long, device=device)
        self.fin_tokens = torch.zeros(batch, f, self.steps, dtype=torch.long, device=device)
        self.done = torch.zeros(batch, dtype=torch.bool, device=device)
        self.budget_penalty = torch.ones(batch, device=device)  # length penalty at each sentence's budget
        mc = model.config
        self.eos_column = torch.full((batch * k, 1), mc.eos_id, device=device)
        # Step 0 runs one row per sentence: all K beams start from BOS alone.
        self.own_first = k > 1
        self.first_cache = self.cache.first_slots()
        self.bos = torch.full((batch, 1), mc.bos_id, device=device)

    def _reset(self) -> None:
        mc = self.model.config
        self.cache.reset()
        self.last.fill_(mc.bos_id)
        self.history.fill_(mc.pad_id)
        self.scores.fill_(float("-inf"))
        self.scores[:, 0] = 0.0  # all beams start identical: let only the first expand
        self.fin_scores.fill_(float("-inf"))
        self.done.zero_()
        self.budget_penalty.copy_(self._length_penalty(self.max_lens + 1))

    def _candidates(self, step: Tensor, logits: Tensor, scores: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """The best C = 2K continuations of each sentence, best first: scores (B, C), beams and
        tokens, from the next-token logits (B * J, V) of J live beams with scores (B, J). The
        same as a top-C over all J x V of scores + constrained log-probs (as run_beam takes),
        but the top-k runs on rows, not on J x V: each row offers its best C tokens other than
        EOS plus EOS itself, and the rules of search.constrain apply to those few. The top-k
        reads the logits in the model's dtype (half the bytes in bf16; the same order, since
        the fp32 log-probs are those values minus one number per row)."""
        mc, cfg, k = self.model.config, self.cfg, self.beam_size
        b, j = scores.shape
        vocab = logits.size(-1)
        # The best R = 2K tokens other than those never offered: the top R + 3 by logit, less the
        # (at most 3) not offered. Masking them in the logits first would copy all N x V.
        wide, lse = row_best(logits, min(2 * k + self.specials.numel(), vocab), self.top_chunk)  # (B * J, R + 3)
        # log-probs (fp32) of the few tokens offered: logit - logsumexp, as run_beam's log-softmax
        eos_lp = torch.where(step < cfg.min_len, float("-inf"), logits[:, mc.eos_id : mc.eos_id + 1].float() - lse)  # (B * J, 1)
        offered = ~(wide.unsqueeze(-1) == self.specials).any(-1)
        keep = torch.argsort(offered.int(), dim=1, descending=True, stable=True)[:, : min(2 * k, vocab)]
        row_tok = wide.gather(1, keep)  # (B * J, R), best first
        shut = ~offered.gather(1, keep)  # a vocabulary under R + 3 leaves some in: never offered
        forced = (self.max_lens.repeat_interleave(j) <= step).unsqueeze(1)  # budget spent: only EOS
        row_lp = torch.where(forced | shut, float("-inf"), logits.gather(1, row_tok).float() - lse)
        offered_lp = torch.cat([row_lp, eos_lp], dim=1)  # (B * J, R + 1)
        offered_tok = torch.cat([row_tok, self.eos_column[: b * j]], dim=1)
        per_row = offered_lp.size(1)
        cand = (scores.reshape(-1, 1) + offered_lp).view(b, j * per_row)
        cand_scores, cand_ids = cand.topk(min(2 * k, j * vocab), dim=1)  # (B, C)
        return cand_scores, cand_ids // per_row, offered_tok.view(b, j * per_row).gather(1, cand_ids)

    def _step(self) -> None:
        logits = self.model.step(self.last.unsqueeze(1), self.cache)[:, -1]  # (N, V); advances the cache
        self._rerank(logits, self.scores)

    def _first_step(self) -> None:
        """Step 0 on one row per sentence, which writes slot 0; _rerank's reorder then makes
        slot 0 every beam's ancestor at position 0. Saves K - 1 rows of one step's work."""
        logits = self.model.step(self.bos, self.first_cache)[:, -1]  # (B, V); advances the shared length
        self._rerank(logits, self.scores[:, :1])

    def _rerank(self, logits: Tensor, scores: Tensor) -> None:
        """One step of run_beam from the logits (B * J, V) of the J live beams with scores (B, J)."""
        mc, k, f = self.model.config, self.beam_size, self.cfg.n_best
        b, m = self.scores.size(0), self.steps
        step = self.cache.length - 1  # (1,): the index of the token this step emits (the step advanced the cache)
        cand_scores, cand_beam, cand_tok = self._candidates(step, logits, scores)
        is_eos = cand_tok == mc.eos_id

        # EOS among the top K finishes a hypothesis, unless its sentence is already done; merge
        # them after the kept ones and keep the best F, ties in that order (as run_beam's list).
        ends = is_eos[:, :k] & torch.isfinite(cand_scores[:, :k]) & ~self.done.unsqueeze(1)  # (B, K)
        new_scores = torch.where(ends, cand_scores[:, :k] / self._length_penalty(step + 1), float("-inf"))
        prefix_rows = (self.sentence * k + cand_beam[:, :k]).view(-1)
        new_tokens = self.history.index_select(0, prefix_rows).view(b, k, m)
        merged = torch.cat([self.fin_scores, new_scores], dim=1)  # (B, F + K)
        keep = torch.sort(merged, dim=1, descending=True, stable=True).indices[:, :f]
        self.fin_scores.copy_(merged.gather(1, keep))
        self.fin_log_probs.copy_(torch.cat([self.fin_log_probs, cand_scores[:, :k]], 1).gather(1, keep))
        self.fin_lengths.copy_(torch.cat([self.fin_lengths, step.expand(b, k)], 1).gather(1, keep))
        self.fin_tokens.copy_(torch.cat([self.fin_tokens, new_tokens], 1).gather(1, keep.unsqueeze(2).expand(b, f, m)))

        # The best K non-EOS candidates stay live; a stable sort keeps their rank order.
        order = torch.argsort(is_eos.int(), dim=1, stable=True)[:, :k]
        self.scores.copy_(cand_scores.gather(1, order))
        rows = (self.sentence * k + cand_beam.gather(1, order)).view(-1)
        tokens = cand_tok.gather(1, order).view(-1)
        self.history.copy_(self.history.index_select(0, rows))
        self.history.index_copy_(1, step, tokens.unsqueeze(1))
        self.cache.reorder(rows)
        self.last.copy_(tokens)

        # Done: budget spent, or F finished and no live hypothesis can still beat the worst of them.
        live_best = self.scores[:, 0]
        reachable = torch.where(live_best < 0, live_best / self.budget_penalty, live_best)
        worst = self.fin_scores[:, f - 1]
        self.done.logical_or_(torch.isfinite(worst) & (worst >= reachable) | (step >= self.max_lens))

    def _all_done(self) -> Tensor:
        return self.done.all()

    def _results(self) -> list[list[Hypothesis]]:
        scores, log_probs = self.fin_scores.tolist(), self.fin_log_probs.tolist()
        lengths, tokens = self.fin_lengths.tolist(), self.fin_tokens.tolist()
        return [[Hypothesis(toks[:n], s, lp) for s, lp, n, toks in zip(*row) if s != float("-inf")]
                for row in zip(scores, log_probs, lengths, tokens)]
