"""`slmkit serve` under load, beside llama.cpp's own server on the same GGUF: GuideLLM drives each
server at fixed concurrency (fixed 256-token prompts, 128 output tokens, end-of-sequence ignored),
and a mixed load sends one 2,000-token prompt while short streams decode.

    bash benchmarks/peers/setup.sh llamacpp guidellm     # llama-server; GuideLLM in its own venv
    python benchmarks/serve.py --model models/smollm2-135m-instruct --tag _smollm2
    python benchmarks/serve.py --gguf G.gguf --hf W4_FOLDER --tokenizer TOKDIR --tag _x

With --model, the two 4-bit files are made once under runs/serve/<model>/ (RTN, which decodes at
the same speed as any calibrated file of the same types): a Q4_0 GGUF (`quantize --gguf-type q4_0`,
then `export gguf`) and an int4 g64 folder for the PyTorch engine.

Engines: `slmkit-llamacpp` (slmkit serve on the GGUF: llama.cpp's kernels, slmkit's scheduler),
`llama-server` (`-t 2 -np C -c C x 512`, restarted per concurrency C; 2,304 per slot for the mixed
load), and with --hf `slmkit-torch` (slmkit serve on an HF-format int4 folder: slmkit's PyTorch
engine). The servers run one at a time. Per engine and load: output tok/s, requests/s, TTFT
p50/p99 and inter-token latency p50/p99 (GuideLLM's figures); mixed: TTFT of the short streams.
Results are written after every measurement (`results/serve<tag>.json`); a re-run skips what is
there (`--redo` to measure again).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).parent))

from _common import RESULTS, write_result  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
TOOLS = ROOT / ".venv-peers" / "llamacpp" / "bin"
GUIDELLM = ROOT / ".venv-peers" / "guidellm" / "bin" / "guidellm"
PROMPT, OUTPUT, LONG, SYSTEM = 256, 128, 2000, 1000


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="an HF folder: make its Q4_0 GGUF and int4 folder (see above)")
    ap.add_argument("--gguf", default=None, help="the GGUF both slmkit and llama-server serve")
    ap.add_argument("--hf", default=None, help="an HF-format int4 folder of the same model (slmkit-torch)")
    ap.add_argument("--tokenizer", default=None, help="HF folder whose tokenizer GuideLLM counts tokens with "
                                                     "(default: --model)")
    ap.add_argument("--concurrency", default="1,4,8,16")
    ap.add_argument("--requests", type=int, default=0, help="requests per load (default max(16, 4 x C))")
    ap.add_argument("--engines", default="slmkit-llamacpp,llama-server,slmkit-torch")
    ap.add_argument("--mixed-rounds", type=int, default=3, help="rounds of the mixed load (0: skip it)")
    ap.add_argument("--prefix-requests", type=int, default=6,
                    help="requests sharing a 1,000-token system prompt, one after another (0: skip)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--tag", default="")
    ap.add_argument("--redo", action="store_true")
    return ap.parse_args()


def prepare(model: str) -> tuple[Path, Path]:
    """(Q4_0 GGUF, int4 g64 folder) of `model`, made once under runs/serve/<name>/."""
    work = ROOT / "runs" / "serve" / Path(model).name
    gguf, w4, q4 = work / "q4_0.gguf", work / "w4", work / "q4_0"
    slmkit = [sys.executable, "-m", "slmkit.cli.main"]
    if not gguf.exists():
        subprocess.run(slmkit + ["quantize", model, str(q4), "--method", "rtn", "--gguf-type", "q4_0",
                                 "--overwrite"], check=True)
        subprocess.run(slmkit + ["export", "gguf", str(q4), str(gguf), "--type", "q8_0"], check=True)
    if not (w4 / "config.json").exists():
        subprocess.run(slmkit + ["quantize", model, str(w4), "--method", "rtn", "--bits", "4", "--group-size", "64",
                                 "--overwrite"], check=True)
    return gguf, w4


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """One server process on 127.0.0.1, up once /health answers 200."""

    def __init__(self, cmd: list, log: Path, port: int):
        self.port, self.url = port, f"http://127.0.0.1:{port}"
        self.log = open(log, "w")
        self.proc = subprocess.Popen([str(c) for c in cmd], stdout=self.log, stderr=subprocess.STDOUT)
        import httpx

        deadline = time.time() + 300
        while True:
            if self.proc.poll() is not None:
                raise SystemExit(f"{cmd[0]} exited ({self.proc.returncode}); see {log}")
            if time.time() > deadline:
                self.stop()
                raise SystemExit(f"{cmd[0]} did not start in 300 s; see {log}")
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


def start(engine: str, args, load: int | str, work: Path) -> Server:
    """A server for `load`: a concurrency, or "mixed" / "prefix" (llama-server's slots then hold
    the 2,000-token prompt)."""
    port = free_port()
    streams = load if isinstance(load, int) else 0
    slot = PROMPT + OUTPUT + 128 if streams else LONG + OUTPUT + 176
    slmkit = [sys.executable, "-m", "slmkit.cli.main", "serve", "--port", port, "--max-seqs", 16,
              "--max-queue", 256]
    if engine == "slmkit-llamacpp":
        cmd = slmkit + [f"m={args.gguf}", "--engine", "llamacpp"]
    elif engine == "slmkit-torch":
        cmd = slmkit + [f"m={args.hf}", "--engine", "torch"]
    else:
        n = max(streams, 5)
        cmd = [TOOLS / "llama-server", "-m", args.gguf, "-t", args.threads, "-np", n, "-c", n * slot,
               "--port", port, "--host", "127.0.0.1", "--no-webui"]
    return Server(cmd, work / f"{engine}-{load}.log", port)


def guidellm(url: str, args, streams: int, out: Path) -> dict:
    """GuideLLM at `streams` concurrent streams -> its figures for the one benchmark."""
    n = args.requests or max(16, 4 * streams)
    cmd = [GUIDELLM, "run",
           "--backend", f"kind=openai_http,target={url},model=m,request_format=/v1/completions",
           "--profile", f"kind=concurrent,streams={streams}",
           "--constraint", f"kind=max_requests,count={n}",
           "--data", f"kind=synthetic_text,prompt_tokens={PROMPT},output_tokens={OUTPUT}",
           "--tokenizer", f"kind=huggingface_auto,model={args.tokenizer}",
           "--output", f"kind=json,path={out}", "--disable-console-interactive"]
    r = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=3600)
    if r.returncode != 0 or not out.exists():
        raise SystemExit(f"guidellm failed ({r.returncode}):\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}")
    return summarize(json.loads(out.read_text()))


def summarize(report: dict) -> dict:
    """The figures of GuideLLM's one benchmark in `report`: tok/s, req/s, TTFT and ITL (ms)."""
    bench = report["benchmarks"][0]
    m = bench["metrics"]

    def pick(name: str, stat: str) -> float:
        return m[name]["successful"][stat] if "successful" in m[name] else m[name][stat]

    def pct(name: str, p: str) -> float:
        dist = m[name]["successful"] if "successful" in m[name] else m[name]
        return dist["percentiles"][p]

    totals = bench.get("request_totals") or m.get("request_totals") or {}
    return {"output_tok_s": pick("output_tokens_per_second", "mean"),
            "requests_s": pick("requests_per_second", "mean"),
            "ttft_ms_p50": pct("time_to_first_token_ms", "p50"), "ttft_ms_p99": pct("time_to_first_token_ms", "p99"),
            "itl_ms_p50": pct("inter_token_latency_ms", "p50"), "itl_ms_p99": pct("inter_token_latency_ms", "p99"),
            "errored": (totals.get("errored") if isinstance(totals, dict) else None)}


async def _stream(client, url: str, prompt: list[int], max_tokens: int) -> float:
    """Send one streamed completion -> seconds to its first token."""
    t0 = time.perf_counter()
    first = None
    body = {"model": "m", "prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "stream": True,
            "ignore_eos": True}
    async with client.stream("POST", url + "/v1/completions", json=body, timeout=600) as r:
        r.raise_for_status()
        async for line in r.aiter_lines():
            if line.startswith("data:") and first is None and '"text"' in line:
                first = time.perf_counter() - t0
    return first if first is not None else float("nan")


async def _mixed_round(url: str, vocab: int, rng) -> list[float]:
    import httpx

    long = [int(rng.integers(100, vocab)) for _ in range(LONG)]
    async with httpx.AsyncClient() as client:
        big = asyncio.create_task(_stream(client, url, long, OUTPUT))
        await asyncio.sleep(0.05)
        shorts = []
        for _ in range(4):
            short = [int(rng.integers(100, vocab)) for _ in range(64)]
            shorts.append(asyncio.create_task(_stream(client, url, short, 32)))
            await asyncio.sleep(0.25)
        ttfts = await asyncio.gather(*shorts)
        await big
    return ttfts


def mixed(url: str, rounds: int, vocab: int) -> dict:
    """One 2,000-token prompt, then 4 short streams (64-token prompts) 0.25 s apart, per round ->
    the short streams' TTFT p50/p99 (ms)."""
    import numpy as np

    rng = np.random.default_rng(0)
    ttft = [t * 1000 for _ in range(rounds) for t in asyncio.run(_mixed_round(url, vocab, rng))]
    q = statistics.quantiles(ttft, n=100, method="inclusive") if len(ttft) > 1 else ttft * 99
    return {"short_ttft_ms_p50": statistics.median(ttft), "short_ttft_ms_p99": q[98], "short_streams": len(ttft)}


async def _prefix_rounds(url: str, vocab: int, rng, requests: int) -> list[float]:
    import httpx

    system = [int(rng.integers(100, vocab)) for _ in range(SYSTEM)]
    out = []
    for _ in range(requests):   # a connection each: llama-server's HTTP library closes one after 5 requests
        async with httpx.AsyncClient() as client:
            out.append(await _stream(client, url, system + [int(rng.integers(100, vocab)) for _ in range(24)], 8))
    return out


def prefix(url: str, requests: int, vocab: int) -> dict:
    """Requests one after another, each a 1,000-token system prompt + 24 tokens of its own ->
    TTFT of the first (nothing cached) and the median of the later ones (ms), and their ratio."""
    import numpy as np

    ttft = [t * 1000 for t in asyncio.run(_prefix_rounds(url, vocab, np.random.default_rng(1), requests))]
    later = statistics.median(ttft[1:])
    return {"first_ttft_ms": ttft[0], "later_ttft_ms": later, "ttft_cut": ttft[0] / later}


def table(rows: dict) -> str:
    lines = ["| engine | load | output tok/s | req/s | TTFT p50 / p99 ms | ITL p50 / p99 ms |",
             "|---|---|---:|---:|---:|---:|"]
    for key, r in rows.items():
        engine, load = key.split("@")
        if "ttft_cut" in r:
            lines.append(f"| {engine} | repeated 1,000-token system prompt | | | first {r['first_ttft_ms']:.0f}, "
                         f"later {r['later_ttft_ms']:.0f} ({r['ttft_cut']:.1f}x less) | |")
        elif "short_ttft_ms_p50" in r:
            lines.append(f"| {engine} | mixed (short streams) | | | {r['short_ttft_ms_p50']:.0f} / "
                         f"{r['short_ttft_ms_p99']:.0f} | |")
        else:
            lines.append(f"| {engine} | c={load} | {r['output_tok_s']:.1f} | {r['requests_s']:.2f} | "
                         f"{r['ttft_ms_p50']:.0f} / {r['ttft_ms_p99']:.0f} | "
                         f"{r['itl_ms_p50']:.1f} / {r['itl_ms_p99']:.1f} |")
    return "\n".join(lines)


def main() -> int:
    args = parse_args()
    if args.model:
        made = prepare(args.model)
        args.gguf, args.hf = args.gguf or made[0], args.hf or made[1]
        args.tokenizer = args.tokenizer or args.model
    if not args.gguf or not args.tokenizer:
        raise SystemExit("give --model, or --gguf and --tokenizer")
    if not GUIDELLM.exists():
        raise SystemExit(f"{GUIDELLM} missing: bash benchmarks/peers/setup.sh guidellm")
    if not (TOOLS / "llama-server").exists():
        raise SystemExit(f"{TOOLS / 'llama-server'} missing: bash benchmarks/peers/setup.sh llamacpp")
    engines = [e for e in args.engines.split(",") if e and (e != "slmkit-torch" or args.hf)]
    topic = f"serve{args.tag}"
    prev = RESULTS / f"{topic}.json"
    rows = json.loads(prev.read_text())["rows"] if prev.exists() and not args.redo else {}
    from transformers import AutoTokenizer

    vocab = len(AutoTokenizer.from_pretrained(args.tokenizer))
    work = Path(tempfile.mkdtemp(prefix="serve-bench-"))

    def save():
        write_result(topic, {"gguf": str(args.gguf), "hf": args.hf, "tokenizer": args.tokenizer,
                             "prompt_tokens": PROMPT, "output_tokens": OUTPUT, "threads": args.threads,
                             "rows": rows})

    loads = [int(c) for c in args.concurrency.split(",")] + (["mixed"] if args.mixed_rounds else []) + \
        (["prefix"] if args.prefix_requests else [])
    for engine in engines:
        server = None
        for c in loads:
            key = f"{engine}@{c}"
            if key in rows:
                continue
            if server is None or engine == "llama-server":   # llama-server: -np is the concurrency
                if server is not None:
                    server.stop()
                server = start(engine, args, c, work)
            print(f"[serve] {key} ...", flush=True)
            if c == "mixed":
                rows[key] = mixed(server.url, args.mixed_rounds, vocab)
            elif c == "prefix":
                rows[key] = prefix(server.url, args.prefix_requests, vocab)
            else:
                rows[key] = guidellm(server.url, args, c, work / f"{key}.json")
            save()
            print(table({key: rows[key]}).splitlines()[-1], flush=True)
        if server is not None:
            server.stop()
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
