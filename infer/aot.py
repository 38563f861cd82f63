"""A graphed search's CPU step compiled ahead of time by AOTInductor: one C++ call a step.

A step compiled by torch.compile (infer.graphed, compile=True) still goes through dynamo at every
call: a guard check over every tensor it reads and a Python wrapper around its kernels, about
1.5 ms of a 9 ms batch-1 greedy step on our 2-core CPU in a profile. compile_ahead exports the same step
with torch.export and compiles one shared library per span bucket; the search's run then calls
those instead (bench/decode_cpu.py's ours_aot column measures it against CTranslate2).

The step reads and writes the search's buffers and its StaticCache's. Export takes them as
inputs that the step mutates in place: while it traces, those attributes are pointed at the
traced inputs, and at run time the library gets the search's own tensors, which run updates in
place as it always does.

The library holds no weights: it is built without its constants, which are then pointed at the
model's own tensors (AOTInductor's user-managed constants). A step reads the very tensors eager
decoding does, on huge pages where pack_for_cpu put them there (seq2seq.pages), and every span
bucket shares them instead of holding a copy each. The model must outlive the search, and its
tensors must not be replaced (model.to, say) once compiled.

Limits: one row (batch 1 greedy). With the panel kernel a step multiplies the packed panels,
an ordinary tensor, through the seq2seq::panel_linear op (which must be loaded where the step
runs: seq2seq.native does so); with oneDNN's it multiplies the plain weights, as fused
reductions, since export cannot hold oneDNN's opaque packed ones, which are hidden from it.
Compiling takes about 30 s per span bucket on two cores.
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import torch
from torch import Tensor, nn

from infer.graphed import GraphedGreedy
from seq2seq.packed import PackedLinear

Slot = tuple[object, str, "tuple[int, int] | None"]  # owner, attribute, (layer, K or V) of a list


def _state_slots(search: GraphedGreedy) -> list[Slot]:
    """Every tensor of the search and its cache, in a fixed order."""
    slots: list[Slot] = [(owner, name, None) for owner in (search, search.cache)
                         for name, value in vars(owner).items() if isinstance(value, Tensor)]
    slots += [(search.cache, "self_kv", (layer, i)) for layer in range(len(search.cache.self_kv)) for i in (0, 1)]
    return slots


def _slot_tensor(slot: Slot) -> Tensor:
    owner, name, index = slot
    value = getattr(owner, name)
    return value if index is None else value[index[0]][index[1]]


class _ExportedStep(nn.Module):
    """search._step_at(span) as a module of the state tensors, which it mutates in place."""

    def __init__(self, search: GraphedGreedy, span: int, slots: list[Slot]):
        super().__init__()
        self.search, self.span, self.slots = search, span, slots
        self.model = search.model  # its weights become the module's, constants of the library

    def forward(self, *tensors: Tensor) -> tuple:
        cache = self.search.cache
        saved = {(id(owner), name): (owner, name, getattr(owner, name)) for owner, name, _ in self.slots}
        saved[id(cache), "step_mask"] = (cache, "step_mask", cache.step_mask)  # the step sets it: leave no traced tensor
        kv = [list(pair) for pair in cache.self_kv]
        for (owner, name, index), tensor in zip(self.slots, tensors):
            if index is None:
                setattr(owner, name, tensor)
            else:
                kv[index[0]][index[1]] = tensor
        cache.self_kv = [tuple(pair) for pair in kv]
        try:
            self.search._step_at(self.span)
        finally:
            for owner, name, value in saved.values():
                setattr(owner, name, value)
        return ()


def _with_model_constants(runner, step: nn.Module):
    """Point a library built without constants at the step module's own weights and buffers."""
    own = dict(step.named_parameters(remove_duplicate=False)) | dict(step.named_buffers(remove_duplicate=False))
    names = runner.get_constant_fqns()
    missing = [name for name in names if name not in own]
    if missing:  # e.g. a constant inductor folded ahead of time, which no module holds
        raise RuntimeError(f"compile_ahead: the compiled step needs constants the model does not hold: {missing[:3]}")
    runner.load_constants({name: own[name] for name in names}, check_full_update=True, user_managed=True)
    return runner


def compile_ahead(search: GraphedGreedy, workdir: Path | None = None) -> GraphedGreedy:
    """Compile search's step ahead of time, one library per span bucket; its run then calls them.
    search: a GraphedGreedy for one sentence on CPU, use_graph=False, on an fp32 model packed for
    the panel kernel, or for oneDNN's keeping the plain weights (pack_for_cpu(model,
    keep_weights=True)), or unpacked. workdir: where the libraries go (a temporary folder by
    default). Returns search."""
    if not isinstance(search, GraphedGreedy) or search.use_graph or search.last.device.type != "cpu":
        raise ValueError("compile_ahead takes a GraphedGreedy on CPU built with use_graph=False")
    if search.last.numel() != 1:
        raise ValueError(f"compile_ahead compiles 1-row steps (batch 1 greedy) only, not {search.last.numel()} rows")
    packed = [m for m in search.model.modules() if isinstance(m, PackedLinear)]
    opaque = [m for m in packed if m.kernel == "onednn"]  # export cannot hold oneDNN's packed weights
    if any(m.weight is None for m in opaque):
        raise ValueError("compile_ahead needs the plain weights of oneDNN-packed layers: pack the model with "
                         "pack_for_cpu(model, keep_weights=True)")
    workdir = Path(workdir or tempfile.mkdtemp(prefix="seq2seq-aot-"))
    slots = _state_slots(search)
    kept = [m.packed for m in opaque]
    runners = {}
    try:
        for m in opaque:  # a 1-row step multiplies their plain weights instead
            m.packed = None
        with torch.inference_mode(), torch._inductor.config.patch({"aot_inductor.package_constants_in_so": False}):
            for span in sorted({search._span(t) for t in range(search.steps)}):
                step = _ExportedStep(search, span, slots)
                program = torch.export.export(step, tuple(map(_slot_tensor, slots)), strict=False)
                path = torch._inductor.aoti_compile_and_package(program, package_path=str(workdir / f"step_{span}.pt2"))
                runners[span] = _with_model_constants(torch._inductor.aoti_load_package(path), step)
    finally:
        for m, weight in zip(opaque, kept):
            m.packed = weight
    state = [_slot_tensor(slot) for slot in slots]  # the tensors themselves: run updates them in place
    search.ahead = lambda span: runners[span](*state)
    return search
