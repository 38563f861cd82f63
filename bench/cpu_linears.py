"""Where CPU decoding time goes in the linear layers, fp32, in one process; prints one JSON object.

Three measurements on the transformer-base-sized model of bench/peers.py (random weights), each
comparing, side by side, the products seq2seq.packed can use: the native panel product
("panel", seq2seq/csrc/panel_linear.cpp), oneDNN's packed product laid out for 1 or 32 rows
("onednn_for_1", "onednn_for_32"), and PyTorch's default product on the plain weight ("mkl"):
- products: each decoder shape at 1, 4, 32 and 128 rows, the weights cold as in decoding (the
  layer is cycled through enough copies of its weight to overflow the caches); ms per call and
  GFLOPS, best of --repeats interleaved rounds;
- step_linears: the 37 products of one decoding step (6 layers x fused q/k/v, out, cross q,
  cross out, two feed-forward; the output projection) back to back with nothing else, at 1 and
  32 rows: the floor for a step built from these kernels;
- decode: our cached greedy and beam search end to end at a forced length (eager, not compiled)
  on the model packed for each kernel, and with per-layer products left to PyTorch's default
  (MKL) with only the output projection packed.

    python bench/cpu_linears.py                  # nothing else running
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))

from decode import decode  # noqa: E402
from peers import random_source, transformer_base  # noqa: E402
from seq2seq.speed import native, packed  # noqa: E402


def per_call(fn, x, calls: int) -> float:
    for _ in range(3):
        fn(x)
    start = time.perf_counter()
    for _ in range(calls):
        fn(x)
    return (time.perf_counter() - start) / calls


def layer(kernel: str, weight, bias) -> nn.Module:
    if kernel == "mkl":
        plain = nn.Linear(weight.size(1), weight.size(0))
        with torch.no_grad():
            plain.weight.copy_(weight), plain.bias.copy_(bias)
        return plain
    if kernel.startswith("onednn"):
        return packed.PackedLinear(weight, bias, rows_hint=int(kernel.rsplit("_", 1)[1]), kernel="onednn")
    return packed.PackedLinear(weight, bias, kernel=kernel)


def products(kernels: list[str], repeats: int) -> list[dict]:
    rows_out = []
    for out_f, in_f in [(1536, 512), (512, 512), (2048, 512), (512, 2048), (32000, 512)]:
        copies = max(1, int(200e6 // (out_f * in_f * 4)))  # 200 MB of weights: each call finds its own cold
        weights = [(torch.randn(out_f, in_f), torch.randn(out_f)) for _ in range(copies)]
        layers = {k: [layer(k, w, b) for w, b in weights] for k in kernels}
        for rows in (1, 4, 32, 128):
            x = torch.randn(rows, in_f)
            best = {k: float("inf") for k in kernels}
            for _ in range(repeats):  # interleaved rounds
                for k, copies_of in layers.items():
                    cycle = iter(copies_of * 2)
                    best[k] = min(best[k], per_call(lambda x: next(cycle)(x), x, len(copies_of)))
            rows_out.append({"shape": [out_f, in_f], "rows": rows,
                             "ms_per_call": {k: round(v * 1e3, 3) for k, v in best.items()},
                             "gflops": {k: round(2 * rows * out_f * in_f / v / 1e9, 1) for k, v in best.items()}})
            print(json.dumps(rows_out[-1]), file=sys.stderr, flush=True)
        del layers, weights
    return rows_out


def step_linears(model: nn.Module, rows: int) -> dict:
    """The products one step at `rows` rows runs, back to back."""
    step = []
    for layer in model.decoder_layers:
        step += [layer.self_attn.qkv_proj, layer.self_attn.out_proj, layer.cross_attn.q_proj,
                 layer.cross_attn.out_proj, layer.ff.fc1, layer.ff.fc2]
    step.append(model.output_proj)
    inputs = {lin.in_features: torch.randn(rows, lin.in_features) for lin in step}

    def run(_):
        for lin in step:
            lin(inputs[lin.in_features])

    seconds = per_call(run, None, 30 if rows == 1 else 10)
    weight_bytes = sum(lin.out_features * lin.in_features * 4 for lin in step)
    return {"rows": rows, "products": len(step), "ms_per_step": round(seconds * 1e3, 2),
            "weight_mb": round(weight_bytes / 1e6, 1), "gb_per_s": round(weight_bytes / seconds / 1e9, 1),
            "gflops": round(2 * rows * weight_bytes / 4 / seconds / 1e9, 1)}


def mkl_layers(model: nn.Module) -> nn.Module:
    """Per-layer products on PyTorch's default path, self-attention q/k/v fused as when packed,
    only the (tied) output projection packed."""
    with torch.no_grad():
        for attn in [layer.self_attn for layer in [*model.encoder_layers, *model.decoder_layers]]:
            fused = nn.Linear(attn.q_proj.in_features, 3 * attn.q_proj.out_features)
            fused.weight.copy_(torch.cat([attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight]))
            fused.bias.copy_(torch.cat([attn.q_proj.bias, attn.k_proj.bias, attn.v_proj.bias]))
            attn.qkv_proj = fused
        model.output_proj = packed.PackedLinear(model.tgt_embed.weight, None, kernel="onednn")
    return model.eval()


def packed_models(args) -> dict[str, nn.Module]:
    models = {"onednn_for_32": packed.pack_for_cpu(transformer_base(args.vocab), rows_hint=32, kernel="onednn")}
    if native.load():
        models["panel"] = packed.pack_for_cpu(transformer_base(args.vocab), kernel="panel")
    return models


def decode_cells(args) -> list[dict]:
    models = {**packed_models(args), "mkl_layers": mkl_layers(transformer_base(args.vocab))}
    cells = []
    for batch, beam in [(1, 1), (1, 4), (32, 1), (32, 4)]:
        src = random_source(batch, 32, args.vocab, 2)
        times = {name: [] for name in models}
        with torch.inference_mode():
            for model in models.values():
                decode(model, src, args.length, beam, True)
            for _ in range(args.repeats):  # interleaved, so a slow spell of the machine hits all alike
                for name, model in models.items():
                    start = time.perf_counter()
                    decode(model, src, args.length, beam, True)
                    times[name].append(time.perf_counter() - start)
        cells.append({"batch": batch, "beam": beam, "length": args.length,
                      "tgt_tokens_per_s": {name: round(batch * args.length / statistics.median(t), 1) for name, t in times.items()}})
        print(json.dumps(cells[-1]), file=sys.stderr, flush=True)
    return cells


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--length", type=int, default=32, help="forced output length of the decode cells")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--vocab", type=int, default=32000)
    p.add_argument("--threads", type=int, default=os.cpu_count())
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    if not packed.available():
        sys.exit("this PyTorch build has no oneDNN packed linear kernels")
    kernels = ["onednn_for_1", "onednn_for_32", "mkl"] + (["panel"] if native.load() else [])
    with torch.inference_mode():
        result = {"benchmark": "cpu_linears", "torch": torch.__version__, "threads": args.threads,
                  "native": native.load() or native.why_not, "products": products(kernels, args.repeats),
                  "step_linears": {name: [step_linears(model, rows) for rows in (1, 32)]
                                   for name, model in packed_models(args).items()}}
    result["decode"] = decode_cells(args)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
