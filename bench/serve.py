"""Serving throughput and latency: seq2seq-serve under 1, 8 and 32 concurrent clients.

Starts `seq2seq-serve CHECKPOINT` as its own process, waits for /health, then sends the same
requests (one sentence each, the first --requests lines of Multi30k test_2016_flickr, beam 5)
from 1, 8 and 32 client threads over HTTP. With one client the requests go one at a time: the
baseline that dynamic batching is measured against. Prints one JSON object (also to --json):
sentences/s, p50/p99 latency, and throughput over the one-at-a-time run.

    python bench/serve.py --checkpoint model.pt --json serve.json
"""
import argparse
import gzip
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--data", default=str(ROOT.parent / "shared/data/multi30k"))
    p.add_argument("--requests", type=int, default=256)
    p.add_argument("--clients", default="1,8,32")
    p.add_argument("--beam-size", type=int, default=5)
    p.add_argument("--json")
    args = p.parse_args()
    with gzip.open(Path(args.data) / "test_2016_flickr.de.gz", "rt", encoding="utf-8") as f:
        sentences = [next(f).rstrip("\n") for _ in range(args.requests)]
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "infer.serve", args.checkpoint, "--port", str(port), "--device", "cpu"],
                              cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    result = {"benchmark": "serve", "checkpoint": args.checkpoint, "requests": args.requests, "beam_size": args.beam_size,
              "cpu": f"{platform.machine()} ({os.cpu_count()} cores)", "runs": []}
    try:
        for _ in range(600):
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        with httpx.Client(timeout=120) as client:  # warm the engine
            client.post(f"{url}/translate", json={"sentences": sentences[:8], "beam_size": args.beam_size})

        def one(sentence: str) -> float:
            start = time.perf_counter()
            with httpx.Client(timeout=300) as client:
                r = client.post(f"{url}/translate", json={"sentences": [sentence], "beam_size": args.beam_size})
                r.raise_for_status()
            return time.perf_counter() - start

        for clients in (int(c) for c in args.clients.split(",")):
            start = time.perf_counter()
            with ThreadPoolExecutor(clients) as pool:
                latencies = sorted(pool.map(one, sentences))
            seconds = time.perf_counter() - start
            result["runs"].append({"clients": clients, "seconds": round(seconds, 2),
                                   "sentences_per_s": round(len(sentences) / seconds, 1),
                                   "p50_ms": round(1000 * statistics.median(latencies), 1),
                                   "p99_ms": round(1000 * latencies[int(0.99 * (len(latencies) - 1))], 1)})
            print(json.dumps(result["runs"][-1]), file=sys.stderr, flush=True)
        base = result["runs"][0]["sentences_per_s"]
        for run in result["runs"]:
            run["over_one_at_a_time"] = round(run["sentences_per_s"] / base, 2)
    finally:
        server.terminate()
        server.wait(30)
    print(json.dumps(result, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
