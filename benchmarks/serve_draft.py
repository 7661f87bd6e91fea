"""`slmkit serve --draft`: single-stream output tok/s of a model served alone and with a draft
model drafting for it (speculative rounds), on the same prompts, alternating.

    python benchmarks/serve_draft.py --model models/qwen2.5-coder-1.5b-instruct \\
        --draft models/qwen2.5-coder-0.5b-instruct --tag _qwen15b

Each server answers the same chat prompts (Python FAQ questions, greedy, --max-tokens new tokens)
one after another; tok/s is completion tokens over the request's wall time, measured at the
client. The two servers alternate for --rounds rounds (one at a time). Writes
results/serve_draft<tag>.json, the draft's acceptance rate included (its /metrics).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).parent))

from _common import write_result  # noqa: E402
from serve import Server, free_port  # noqa: E402

QUESTIONS = ["Write a Python function that returns the n-th Fibonacci number iteratively.",
             "Write a Python function that checks whether a string is a palindrome, ignoring case.",
             "Write a Python class for a stack with push, pop and peek methods."]


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--draft", required=True)
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--tag", default="")
    return ap.parse_args(argv)


def ask(url: str, max_tokens: int) -> list[float]:
    import httpx

    speeds = []
    for q in QUESTIONS:
        body = {"model": "m", "messages": [{"role": "user", "content": q}], "max_tokens": max_tokens,
                "temperature": 0}
        t0 = time.perf_counter()
        r = httpx.post(url + "/v1/chat/completions", json=body, timeout=900)
        r.raise_for_status()
        speeds.append(r.json()["usage"]["completion_tokens"] / (time.perf_counter() - t0))
    return speeds


def accepted(url: str) -> dict:
    import httpx

    text = httpx.get(url + "/metrics").text
    got = {m.group(1): float(m.group(2)) for m in
           re.finditer(r'slmkit_draft_tokens_total\{model="m",outcome="(\w+)"\} ([0-9.e+]+)', text)}
    return {"proposed": got.get("proposed", 0.0), "accepted": got.get("accepted", 0.0)}


def main(argv=None) -> dict:
    args = parse_args(argv)
    base = [sys.executable, "-m", "slmkit.cli.main", "serve", f"m={args.model}", "--dtype", args.dtype]
    speeds: dict[str, list[float]] = {"alone": [], "draft": []}
    drafts = {}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for kind in ("alone", "draft"):
                port = free_port()
                cmd = base + ["--port", port] + (["--draft", args.draft] if kind == "draft" else [])
                server = Server(cmd, Path(tmp) / f"{kind}-{r}.log", port)
                try:
                    speeds[kind] += ask(server.url, args.max_tokens)
                    if kind == "draft":
                        drafts = accepted(server.url)
                finally:
                    server.stop()
                print(f"[serve_draft] round {r} {kind}: {statistics.median(speeds[kind]):.2f} tok/s", flush=True)
    alone, draft = statistics.median(speeds["alone"]), statistics.median(speeds["draft"])
    out = {"model": args.model, "draft": args.draft, "max_tokens": args.max_tokens, "tok_s": speeds,
           "alone_tok_s": alone, "draft_tok_s": draft, "speedup": draft / alone,
           "acceptance_rate": drafts["accepted"] / drafts["proposed"] if drafts.get("proposed") else None}
    print(json.dumps({k: v for k, v in out.items() if k != "tok_s"}, indent=1))
    write_result(f"serve_draft{args.tag}", out)
    return out


if __name__ == "__main__":
    main()
