"""Ours vs Hugging Face generate on the same weights, on a GPU in bf16, in one process.

Builds one transformer-base-sized model (6+6 layers, d_model 512, 8 heads, d_ff 2048, vocab 32k,
post-norm, shared tied embeddings, random weights), exports it with the hf-marian exporter,
loads the export as MarianMTModel, and decodes the same source batch with both at forced output
lengths (EOS forbidden for L tokens, then forced), batch 1/32/128, greedy and beam 4; each side
runs every cell once untimed first. Prints one
JSON object: target tokens/s of each, the ratio, and at batch 1 the fraction of the bound set by
reading the weights once a token (weight bytes per step / measured copy bandwidth).

    python bench/decode_gpu.py                       # the issue's grid
    python bench/decode_gpu.py --batches 1 --lengths 32

Ours: greedy runs infer.graphed.GraphedGreedy (one CUDA graph per step, no host sync but an
"all finished?" check every 8 steps); beam runs infer.beam_search with the KV cache, eagerly.
It also checks, in fp32, that our cached decoding (graphed greedy and eager beam) returns the
same tokens as our uncached reference.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, installed or not

from infer import SearchConfig, beam_search, greedy_search  # noqa: E402
from infer.graphed import GraphedGreedy  # noqa: E402
from seq2seq import ModelConfig, Transformer  # noqa: E402
from seq2seq.checkpoint import inference_state, save_atomic  # noqa: E402
from seq2seq.marian import export_marian, exported_id  # noqa: E402
from seq2seq.tokenizer import Tokenizer, Vocabularies  # noqa: E402


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--lengths", default="32,128", help="forced output lengths")
    p.add_argument("--batches", default="1,32,128")
    p.add_argument("--beams", default="1,4", help="1 runs greedy search, more runs beam search")
    p.add_argument("--src-len", type=int, default=32)
    p.add_argument("--repeats", type=int, default=3, help="timed runs of ours per cell; the median is reported")
    p.add_argument("--hf-repeats", type=int, default=1, help="timed runs of HF per cell")
    p.add_argument("--vocab", type=int, default=32000)
    return p.parse_args()


def forced(length: int, beam: int) -> SearchConfig:
    return SearchConfig(beam_size=beam, length_norm="none", max_len_a=0.0, max_len_b=length, max_len=length, min_len=length)


def timed(fn, repeats: int):
    times, out = [], None
    for _ in range(repeats):
        torch.cuda.synchronize()
        start = time.perf_counter()
        out = fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times), out


def copy_bandwidth() -> float:
    """Bytes/s of a 1 GiB device-to-device copy (read + write)."""
    a = torch.empty(2**28, dtype=torch.float32, device="cuda")
    b = torch.empty_like(a)
    for _ in range(3):
        b.copy_(a)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(10):
        b.copy_(a)
    end.record()
    torch.cuda.synchronize()
    return 10 * 2 * a.numel() * 4 / (start.elapsed_time(end) / 1000)


def step_weight_bytes(cfg: ModelConfig, bytes_per_param: int) -> int:
    """Weights one decoding step reads: every decoder layer but its cross-attention K/V
    projections (applied once per sentence), plus the output projection."""
    d, f = cfg.d_model, cfg.d_ff
    per_layer = (4 * d * d + 4 * d) + (2 * d * d + 2 * d) + (2 * d * f + d + f) + 3 * 2 * d
    return (cfg.n_decoder_layers * per_layer + cfg.tgt_vocab_size * d) * bytes_per_param


def main() -> None:
    args = parse_args()
    import transformers

    cfg = ModelConfig(
        src_vocab_size=args.vocab, tgt_vocab_size=args.vocab, d_model=512, n_heads=8, n_encoder_layers=6,
        n_decoder_layers=6, d_ff=2048, share_embeddings=True, dropout=0.0, norm="post", max_positions=512,
    )
    torch.manual_seed(0)
    model32 = Transformer(cfg).eval()
    with tempfile.TemporaryDirectory() as tmp:
        vocab = Tokenizer.placeholder(args.vocab)
        save_atomic(inference_state(model32, Vocabularies(vocab, vocab)), Path(tmp) / "model.pt")
        hf = transformers.MarianMTModel.from_pretrained(export_marian(Path(tmp) / "model.pt", Path(tmp) / "hf"),
                                                        dtype=torch.bfloat16).cuda().eval()
    model32 = model32.cuda()
    model = Transformer(cfg).cuda().eval()
    model.load_state_dict(model32.state_dict())
    model = model.to(torch.bfloat16)
    table = torch.tensor([exported_id(cfg, i) for i in range(cfg.tgt_vocab_size)], device="cuda")

    gen = torch.Generator().manual_seed(1)
    max_batch = max(int(b) for b in args.batches.split(","))
    all_src = torch.randint(4, args.vocab, (max_batch, args.src_len), generator=gen)
    all_src[:, -1] = cfg.eos_id
    all_src = all_src.cuda()
    pad = exported_id(cfg, cfg.pad_id)

    def ours(src, length, beam, graphs):
        if beam == 1:
            key = (src.size(0), length)
            if key not in graphs:
                graphs[key] = GraphedGreedy(model, src.size(0), src.size(1), forced(length, 1))
            return [h.tokens for h in graphs[key].run(src)]
        return [n[0].tokens for n in beam_search(model, src, forced(length, beam))]

    def theirs(src, length, beam):
        with torch.inference_mode():
            return hf.generate(input_ids=table[src], attention_mask=src != cfg.pad_id, num_beams=beam, do_sample=False,
                               min_new_tokens=length, max_new_tokens=length + 1, length_penalty=0.0, pad_token_id=pad)

    # fp32 on the GPU: cached (graphed greedy, eager beam) == uncached reference.
    checks = {}
    with torch.inference_mode():
        src = all_src[: min(32, max_batch)]
        graphed32 = GraphedGreedy(model32, src.size(0), src.size(1), forced(32, 1))
        checks["greedy_graphed_fp32_equals_uncached"] = (
            [h.tokens for h in graphed32.run(src)] == [h.tokens for h in greedy_search(model32, src, forced(32, 1), use_cache=False)])
        checks["beam4_cached_fp32_equals_uncached"] = (
            [n[0].tokens for n in beam_search(model32, src, forced(32, 4))]
            == [n[0].tokens for n in beam_search(model32, src, forced(32, 4), use_cache=False)])
        del graphed32
    print(json.dumps(checks), file=sys.stderr, flush=True)

    graphs: dict = {}
    ours(all_src[:2], 4, 1, graphs), ours(all_src[:2], 4, 2, graphs), theirs(all_src[:2], 4, 2)  # warm-up
    bandwidth = copy_bandwidth()
    bound = bandwidth / step_weight_bytes(cfg, 2)
    results = []
    for length in (int(x) for x in args.lengths.split(",")):
        for batch in (int(x) for x in args.batches.split(",")):
            for beam in (int(x) for x in args.beams.split(",")):
                src = all_src[:batch]
                tokens = batch * length
                cell = {"search": "greedy" if beam == 1 else f"beam{beam}", "batch": batch, "length": length}
                with torch.inference_mode():
                    ours(src, length, beam, graphs)  # capture / warm this shape
                    theirs(src, length, beam)  # and the same for HF
                    s_ours, _ = timed(lambda: ours(src, length, beam, graphs), args.repeats)
                    s_hf, _ = timed(lambda: theirs(src, length, beam), args.hf_repeats)
                cell["ours"] = {"seconds": round(s_ours, 4), "tgt_tokens_per_s": round(tokens / s_ours, 1)}
                cell["hf"] = {"seconds": round(s_hf, 4), "tgt_tokens_per_s": round(tokens / s_hf, 1)}
                cell["ours_vs_hf"] = round(s_hf / s_ours, 2)
                if batch == 1:
                    cell["fraction_of_weight_read_bound"] = round(tokens / s_ours / bound, 3)
                results.append(cell)
                print(json.dumps(cell), file=sys.stderr, flush=True)

    print(json.dumps({
        "benchmark": "decode_gpu", "device": torch.cuda.get_device_name(), "dtype": "bfloat16",
        "torch": torch.__version__, "transformers": transformers.__version__,
        "copy_bandwidth_gb_s": round(bandwidth / 1e9, 1), "step_weight_mb": round(step_weight_bytes(cfg, 2) / 1e6, 1),
        "weight_read_bound_tokens_per_s_batch1": round(bound, 0), "checks": checks,
        "src_len": args.src_len, "repeats": args.repeats, "hf_repeats": args.hf_repeats, "results": results,
    }, indent=1))


if __name__ == "__main__":
    main()
