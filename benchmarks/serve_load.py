"""Load test of `slmkit serve`: N concurrent streaming clients for a while, on 127.0.0.1 only.

    python benchmarks/serve_load.py --model models/smollm2-135m-instruct --clients 32 --seconds 300

Starts `slmkit serve` on the model (a .gguf runs on llama.cpp), then each client sends streamed
completions one after another (8 to --max-words words of the embedded text, 16 to --max-new new
tokens) until the time
is up. Counts every outcome: a stream that ends with a finish reason is complete, a 429 is a clean
refusal, anything else (a 5xx, a broken stream, a timeout) is an error. The server's resident
memory is sampled every second; growth is its last minute's mean over the minute after warm-up
(the first 20% of the run). Writes results/serve_load<tag>.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).parent))

from serve import Server, free_port  # noqa: E402  (benchmarks/serve.py: a server process on 127.0.0.1)


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--seconds", type=float, default=300)
    ap.add_argument("--max-queue", type=int, default=16, help="the server's queue (beyond it: 429)")
    ap.add_argument("--kv-memory", default="256MB")
    ap.add_argument("--max-words", type=int, default=160, help="prompts of 8 to this many words")
    ap.add_argument("--max-new", type=int, default=128, help="16 to this many new tokens per request")
    ap.add_argument("--tag", default="")
    ap.add_argument("--no-save", action="store_true", help="print only (the CI version)")
    return ap.parse_args(argv)


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def words() -> list[str]:
    """Words to make prompts from: the embedded evaluation text (any tokenizer takes them)."""
    from pydoc_data import topics

    return " ".join(topics.topics.values()).split()


async def client(url: str, vocab: list[str], deadline: float, counts: dict, rng: random.Random,
                 max_words: int, max_new: int) -> None:
    import httpx

    async with httpx.AsyncClient(timeout=httpx.Timeout(120.0)) as http:
        while time.time() < deadline:
            start, n = rng.randrange(len(vocab) - max_words), rng.randint(8, max_words)
            body = {"model": "m", "prompt": " ".join(vocab[start:start + n]),
                    "max_tokens": rng.randint(16, max_new), "temperature": 0.7, "stream": True, "ignore_eos": True}
            try:
                async with http.stream("POST", url + "/v1/completions", json=body) as r:
                    if r.status_code == 429:
                        counts["refused"] += 1
                        await r.aread()
                        await asyncio.sleep(float(r.headers.get("Retry-After", "1")))
                        continue
                    if r.status_code != 200:
                        counts["errors"] += 1
                        counts.setdefault("statuses", []).append(r.status_code)
                        continue
                    finished = False
                    async for line in r.aiter_lines():
                        if line.startswith("data:") and '"finish_reason":"' in line.replace(" ", ""):
                            finished = True
                    counts["complete" if finished else "errors"] += 1
            except (httpx.HTTPError, asyncio.TimeoutError) as e:
                counts["errors"] += 1
                counts.setdefault("exceptions", []).append(type(e).__name__)


async def drive(url: str, n: int, seconds: float, vocab: list[str], pid: int, max_words: int,
                max_new: int) -> dict:
    counts = {"complete": 0, "refused": 0, "errors": 0}
    deadline = time.time() + seconds
    memory: list[tuple[float, float]] = []

    async def sample():
        t0 = time.time()
        while time.time() < deadline:
            memory.append((time.time() - t0, rss_mb(pid)))
            await asyncio.sleep(1.0)

    rngs = [random.Random(i) for i in range(n)]
    await asyncio.gather(sample(), *[client(url, vocab, deadline, counts, r, max_words, max_new) for r in rngs])
    warm = seconds * 0.2
    after = [m for t, m in memory if warm <= t < warm + 60] or [m for _, m in memory]
    last = [m for t, m in memory if t >= seconds - 60] or [m for _, m in memory]
    counts["rss_mb_after_warmup"] = sum(after) / len(after)
    counts["rss_mb_last_minute"] = sum(last) / len(last)
    counts["rss_growth"] = counts["rss_mb_last_minute"] / counts["rss_mb_after_warmup"] - 1
    counts["rss_mb_samples"] = [round(m, 1) for _, m in memory]
    return counts


def main(argv=None) -> dict:
    args = parse_args(argv)
    port = free_port()
    cmd = [sys.executable, "-m", "slmkit.cli.main", "serve", f"m={args.model}", "--port", port,
           "--max-queue", args.max_queue, "--kv-memory", args.kv_memory, "--max-seqs", 16]
    with tempfile.TemporaryDirectory() as tmp:
        server = Server(cmd, Path(tmp) / "server.log", port)
        try:
            out = asyncio.run(drive(server.url, args.clients, args.seconds, words(), server.proc.pid,
                                    args.max_words, args.max_new))
            out["server_alive"] = server.proc.poll() is None
        finally:
            server.stop()
    summary = {k: v for k, v in out.items() if k != "rss_mb_samples"}
    print(json.dumps(summary, indent=1))
    if not args.no_save:
        from _common import write_result

        write_result(f"serve_load{args.tag}", {"model": args.model, "clients": args.clients,
                                                "seconds": args.seconds, "max_queue": args.max_queue, **out})
    return out


if __name__ == "__main__":
    result = main()
    sys.exit(0 if result["errors"] == 0 and result["server_alive"] else 1)
