"""Training throughput of a recipe: tokens/s, and on GPU the model FLOPs utilisation (MFU).

Builds the recipe's data, vocabulary and model as seq2seq-train does, then times optimizer
updates on the recipe's own batches (after warm-up). Prints one JSON object.

    python bench/train.py configs/multi30k_de_en_cpu.yaml
    python bench/train.py configs/multi30k_de_en.yaml --peak-tflops 989   # H100 SXM dense bf16

With --hf, the same updates are timed on a Hugging Face MarianMTModel of the same size (random
weights; bf16 autocast on CUDA; AdamW, fused on CUDA; our label-smoothed loss on its logits;
the same batches), and the ratio printed: the peer as a user of transformers would train it.

    python bench/train.py configs/multi30k_de_en.yaml model.d_model=512 ... --peak-tflops 989 --hf

Under torchrun every process takes its share of each update's batches, as seq2seq-train's
processes do, and the first prints the whole job's figures (tokens of every process); the
scaling over one device is the ratio to the same command run alone:

    python bench/train.py configs/multi30k_de_en.yaml ...                                 # one GPU
    torchrun --standalone --nproc_per_node 2 bench/train.py configs/multi30k_de_en.yaml ...  # two

FLOPs are counted analytically: 2 per multiply-add of every matrix product a token goes
through (projections, feed-forward, attention scores and values, output layer), times 3 for
the forward and backward passes.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from train import distributed  # noqa: E402
from train.config import load_config  # noqa: E402
from train.trainer import Trainer  # noqa: E402


def forward_flops(cfg, src_lens: list[int], tgt_lens: list[int], src_width: int, tgt_width: int) -> float:
    """Forward FLOPs of one padded batch (B rows, widths as the model sees them)."""
    d, f = cfg.d_model, cfg.d_ff
    rows = len(src_lens)
    s_tok, t_tok = rows * src_width, rows * tgt_width  # padded positions are computed too
    enc = cfg.n_encoder_layers * (s_tok * 2 * (4 * d * d + 2 * d * f) + rows * 4 * src_width * src_width * d)
    dec = cfg.n_decoder_layers * (
        t_tok * 2 * (6 * d * d + 2 * d * f)  # self q/k/v/out, cross q/out, feed-forward
        + s_tok * 2 * 2 * d * d  # cross-attention k/v from the memory
        + rows * 4 * tgt_width * (tgt_width + src_width) * d  # self and cross scores and values
    )
    return enc + dec + t_tok * 2 * d * cfg.tgt_vocab_size


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("config")
    p.add_argument("overrides", nargs="*")
    p.add_argument("--updates", type=int, default=200, help="timed updates")
    p.add_argument("--warmup", type=int, default=50, help="untimed updates first: new batch shapes pick kernels and grow the allocator")
    p.add_argument("--peak-tflops", type=float, default=0.0, help="device peak for MFU (GPU: bf16 dense)")
    p.add_argument("--hf", action="store_true", help="also time a MarianMTModel of the same size on the same batches")
    args = p.parse_intermixed_args()
    with tempfile.TemporaryDirectory() as run_dir:
        cfg = load_config(args.config, [*args.overrides, f"run_dir={run_dir}"])
        trainer = Trainer(cfg, log=lambda m: print(m, file=sys.stderr))
        env = trainer.env
        if args.hf and env.enabled:
            raise SystemExit("bench/train.py: --hf times one process; run it without torchrun")
        plan = trainer.plan(0)
        accum = cfg.optim.accum_steps
        per_update = env.world_size * accum  # batches of one update, every process's
        needed = (args.warmup + args.updates) * per_update
        plan = (plan * (needed // len(plan) + 1))[:needed]
        (src_side, tgt_side), mc = trainer.train_sides, trainer.model_cfg
        cuda_sync = torch.cuda.synchronize if trainer.device.type == "cuda" else (lambda: None)

        def sync() -> None:  # every process's device done, and every process here
            cuda_sync()
            distributed.barrier(env)

        tokens = tgt_tokens = flops = 0
        for u in range(args.warmup + args.updates):
            batches = plan[u * per_update : (u + 1) * per_update]
            n_tgt = trainer.target_tokens(batches)
            if u == args.warmup:
                sync()
                start = time.perf_counter()
            trainer.update(batches[env.rank * accum : (env.rank + 1) * accum], n_tgt)
            if u >= args.warmup:
                tgt_tokens += n_tgt
                tokens += n_tgt + sum(int(src_side.lengths[b].sum()) for b in batches)
                for b in batches:
                    src_lens, tgt_lens = src_side.lengths[b].tolist(), tgt_side.lengths[b].tolist()
                    flops += 3 * forward_flops(mc, src_lens, tgt_lens, max(src_lens), max(tgt_lens))
        sync()
        seconds = time.perf_counter() - start
        distributed.shutdown(env)
    if not env.is_main:
        return
    achieved = flops / seconds / 1e12
    out = {
        "benchmark": "train", "config": args.config, "overrides": args.overrides,
        "device": torch.cuda.get_device_name() if trainer.device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)",
        "processes": env.world_size,
        "precision": "bf16 autocast" if trainer.device.type == "cuda" else "fp32",
        "params_m": round(sum(p.numel() for p in trainer.model.parameters()) / 1e6, 2),
        "updates": args.updates, "max_tokens": cfg.optim.max_tokens, "accum_steps": cfg.optim.accum_steps,
        "seconds": round(seconds, 3), "updates_per_s": round(args.updates / seconds, 2),
        "tgt_tokens": tgt_tokens, "tokens_per_s": round(tokens / seconds), "tgt_tokens_per_s": round(tgt_tokens / seconds),
        "model_tflops_per_s": round(achieved, 3),
    }
    if args.peak_tflops:
        out["mfu"] = round(achieved / args.peak_tflops, 4)
    if args.hf:
        hf_seconds = time_hf(trainer, plan, args.warmup, args.updates, per_update)
        out["hf_seconds"] = round(hf_seconds, 3)
        out["hf_tgt_tokens_per_s"] = round(tgt_tokens / hf_seconds)
        out["ours_over_hf"] = round(hf_seconds / seconds, 2)
    print(json.dumps(out, indent=1))


def time_hf(trainer, plan, warmup: int, updates: int, per_update: int) -> float:
    """Seconds for `updates` updates of a MarianMTModel of the trainer's size on the same batches."""
    from contextlib import nullcontext

    from transformers import MarianConfig, MarianMTModel

    from seq2seq.marian import marian_config
    from train.data import make_batch
    from train.loss import cross_entropy_sum

    mc, device, o = trainer.model_cfg, trainer.device, trainer.cfg.optim
    config = {k: v for k, v in marian_config(mc).items() if k not in ("architectures", "model_type")}
    model = MarianMTModel(MarianConfig(**config)).to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(o.beta1, o.beta2), fused=device.type == "cuda")
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for u in range(warmup + updates):
        if u == warmup:
            sync()
            start = time.perf_counter()
        batches = plan[u * per_update : (u + 1) * per_update]
        n_tgt = trainer.target_tokens(batches)
        for indices in batches:
            src, tgt_in, tgt_out = (t.to(device, non_blocking=True) for t in make_batch(*trainer.train_sides, indices, mc.pad_id, mc.bos_id))
            with autocast:
                logits = model(input_ids=src, attention_mask=src != mc.pad_id, decoder_input_ids=tgt_in,
                               decoder_attention_mask=tgt_in != mc.pad_id).logits
            (cross_entropy_sum(logits, tgt_out, mc.pad_id, o.label_smoothing) / n_tgt).backward()
        if o.clip_norm > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), o.clip_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    sync()
    return time.perf_counter() - start


if __name__ == "__main__":
    main()
