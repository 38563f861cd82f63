"""Where CPU decoding time goes in the linear layers, fp32, in one process; prints one JSON object.

Three measurements on the transformer-base-sized model of bench/peers.py (random weights):
- products: one linear layer of each decoder shape, weights packed by oneDNN for 1-row or
  32-row products, called with 1, 4 and 32 rows (microseconds per call, weights warm in cache
  for the small shapes, so read these as relative);
- step_linears: the 37 packed products of one batch-1 decoding step (6 layers x fused q/k/v,
  out, cross q, cross out, two feed-forward; the output projection), called back to back with
  nothing else: the floor for a batch-1 step built from these kernels;
- decode: our cached greedy and beam search end to end at a forced length, with the weights
  packed for 1 row, packed for 32 rows (what seq2seq.packed does), or per-layer products left
  to PyTorch's default (MKL) with only the output projection packed.

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
from seq2seq import packed  # noqa: E402


def per_call(fn, x, calls: int) -> float:
    for _ in range(3):
        fn(x)
    start = time.perf_counter()
    for _ in range(calls):
        fn(x)
    return (time.perf_counter() - start) / calls


def products() -> list[dict]:
    rows_out = []
    for out_f, in_f in [(1536, 512), (512, 512), (2048, 512), (512, 2048), (32000, 512)]:
        weight, bias = torch.randn(out_f, in_f), torch.randn(out_f)
        layers = {hint: packed.PackedLinear(weight, bias, rows_hint=hint) for hint in (1, 32)}
        for rows in (1, 4, 32):
            x = torch.randn(rows, in_f)
            calls = 10 if out_f == 32000 else 50
            us = {f"packed_for_{hint}": round(per_call(layer, x, calls) * 1e6, 1) for hint, layer in layers.items()}
            rows_out.append({"shape": [out_f, in_f], "rows": rows, "us_per_call": us})
    return rows_out


def step_linears(model: nn.Module) -> dict:
    """The products one batch-1 step runs, back to back."""
    step = []
    for layer in model.decoder_layers:
        step += [layer.self_attn.qkv_proj, layer.self_attn.out_proj, layer.cross_attn.q_proj,
                 layer.cross_attn.out_proj, layer.ff.fc1, layer.ff.fc2]
    step.append(model.output_proj)
    inputs = {lin.in_features: torch.randn(1, lin.in_features) for lin in step}

    def run(_):
        for lin in step:
            lin(inputs[lin.in_features])

    seconds = per_call(run, None, 30)
    weight_bytes = sum(lin.packed.numel() * 4 for lin in step)
    return {"products": len(step), "ms_per_step": round(seconds * 1e3, 2), "weight_mb": round(weight_bytes / 1e6, 1),
            "gb_per_s": round(weight_bytes / seconds / 1e9, 1)}


def mkl_layers(model: nn.Module) -> nn.Module:
    """Per-layer products on PyTorch's default path, self-attention q/k/v fused as when packed,
    only the (tied) output projection packed."""
    with torch.no_grad():
        for attn in [layer.self_attn for layer in [*model.encoder_layers, *model.decoder_layers]]:
            fused = nn.Linear(attn.q_proj.in_features, 3 * attn.q_proj.out_features)
            fused.weight.copy_(torch.cat([attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight]))
            fused.bias.copy_(torch.cat([attn.q_proj.bias, attn.k_proj.bias, attn.v_proj.bias]))
            attn.qkv_proj = fused
        model.output_proj = packed.PackedLinear(model.tgt_embed.weight, None)
    return model.eval()


def decode_cells(args) -> list[dict]:
    models = {"packed_for_1": packed.pack_for_cpu(transformer_base(args.vocab), rows_hint=1),
              "packed_for_32": packed.pack_for_cpu(transformer_base(args.vocab), rows_hint=32),
              "mkl_layers": mkl_layers(transformer_base(args.vocab))}
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
    with torch.inference_mode():
        result = {"benchmark": "cpu_linears", "torch": torch.__version__, "threads": args.threads,
                  "products": products(), "step_linears": step_linears(packed.pack_for_cpu(transformer_base(args.vocab)))}
    result["decode"] = decode_cells(args)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
