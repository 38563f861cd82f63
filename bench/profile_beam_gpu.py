"""Where a GraphedBeam step spends its GPU time: ms per step of the captured search, and the
CUDA kernels of one eager run under torch.profiler. bf16, the transformer-base-sized model of
bench/peers.py (random weights), forced output length.

    python bench/profile_beam_gpu.py                      # batch 128, beam 4, L 128
    python bench/profile_beam_gpu.py --batch 32 --length 32
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parent))

from decode_gpu import forced  # noqa: E402
from infer.graphed import GraphedBeam  # noqa: E402
from peers import random_source, transformer_base  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--beam", type=int, default=4)
    p.add_argument("--length", type=int, default=128)
    p.add_argument("--rows", type=int, default=30, help="kernels listed")
    args = p.parse_args()
    model = transformer_base(32000).cuda().to(torch.bfloat16)
    src = random_source(args.batch, 32, 32000, model.config.eos_id).cuda()
    steps = args.length + 1

    graphed = GraphedBeam(model, args.batch, src.size(1), forced(args.length, args.beam))
    graphed.run(src)  # capture
    times = []
    for _ in range(3):
        torch.cuda.synchronize()
        start = time.perf_counter()
        graphed.run(src)
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    print(json.dumps({"batch": args.batch, "beam": args.beam, "length": args.length,
                      "graphed_ms_per_step": round(sorted(times)[1] / steps * 1e3, 3)}), flush=True)

    eager = GraphedBeam(model, args.batch, src.size(1), forced(args.length, args.beam), use_graph=False)
    eager.run(src)
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        eager.run(src)
        torch.cuda.synchronize()
    print(f"eager run, {steps} steps:")
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=args.rows, max_name_column_width=70))


if __name__ == "__main__":
    main()
