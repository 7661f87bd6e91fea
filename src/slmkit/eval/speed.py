"""Speed: prefill tok/s, decode tok/s (greedy, KV cache), time to first token, per-token latency.

Each phase runs in the dtype chosen for it (`auto`: see slmkit.models.dtype); when that differs
from the model's own dtype the phase runs on a converted copy, so the caller's model is untouched.
Every figure is the median over `repeats` runs after `warmup` runs. Timings are only comparable as
ratios taken in one run on one machine.
"""

from __future__ import annotations

import copy
import statistics
import time
from dataclasses import dataclass, field

from slmkit.data.chunk import token_stream
from slmkit.data.sources import embedded_text
from slmkit.errors import SlmkitError
from slmkit.eval.memory import PeakRSS, disk_bytes, param_count
from slmkit.models.dtype import resolve_dtype
from slmkit.models.introspect import check_length
from slmkit.models.kvcache import cache_kwargs, output_cache
from slmkit.progress import progress_bar


@dataclass
class SpeedConfig:
    """Prompt length, tokens decoded, warm-up and repeats, and the dtype of each phase."""

    prompt_tokens: int = field(default=128, metadata={"help": "prompt length for prefill and decode"})
    new_tokens: int = field(default=64, metadata={"help": "tokens decoded per run"})
    warmup: int = field(default=1, metadata={"help": "untimed runs first"})
    repeats: int = field(default=3, metadata={"help": "timed runs; medians are reported"})
    prefill_dtype: str = field(default="auto", metadata={"help": "dtype for prefill (auto: by CPU)"})
    decode_dtype: str = field(default="auto", metadata={"help": "dtype for decoding (auto: by CPU)"})

    def __post_init__(self):
        if self.prompt_tokens < 1 or self.new_tokens < 2 or self.repeats < 1 or self.warmup < 0:
            raise SlmkitError("speed needs prompt_tokens >= 1, new_tokens >= 2, repeats >= 1, warmup >= 0")


def _percentile(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q * (len(s) - 1))))]


def _in_dtype(model, dtype):
    return model if next(model.parameters()).dtype == dtype else copy.deepcopy(model).to(dtype)


def _prefill(model, ids) -> float:
    import torch

    with torch.inference_mode():
        t = time.perf_counter()
        model(input_ids=ids, use_cache=False)
        return time.perf_counter() - t


def _decode(model, ids, new_tokens: int) -> tuple[float, list[float]]:
    """(time to first token, per-token latencies of the following tokens)."""
    import torch

    with torch.inference_mode():
        t = time.perf_counter()
        out = model(input_ids=ids, use_cache=True)
        nxt = out.logits[:, -1].argmax(-1, keepdim=True)
        ttft = time.perf_counter() - t
        past, lat = output_cache(out), []
        for _ in range(new_tokens - 1):
            t = time.perf_counter()
            out = model(input_ids=nxt, use_cache=True, **cache_kwargs(model, past))
            past, nxt = output_cache(out), out.logits[:, -1].argmax(-1, keepdim=True)
            lat.append(time.perf_counter() - t)
    return ttft, lat


def speed(model, tokenizer, cfg: SpeedConfig | None = None) -> dict:
    """Prefill and decode tok/s, time to first token, per-token latency percentiles, peak RSS and size
    (see the module docstring)."""
    cfg = cfg or SpeedConfig()
    check_length(model, cfg.prompt_tokens + cfg.new_tokens, "prompt + new tokens")
    stream = token_stream(tokenizer, embedded_text("eval"))
    if stream.numel() < cfg.prompt_tokens:
        raise SlmkitError(f"prompt_tokens {cfg.prompt_tokens} exceeds the embedded text's tokens")
    ids = stream[: cfg.prompt_tokens][None]
    pre_dtype = resolve_dtype(cfg.prefill_dtype, "prefill")
    dec_dtype = resolve_dtype(cfg.decode_dtype, "decode", model)
    runs = cfg.warmup + cfg.repeats
    with PeakRSS() as mem, progress_bar("speed", 2 * runs, unit="runs") as advance:
        m = _in_dtype(model, pre_dtype)
        prefill = []
        for i in range(runs):
            dt = _prefill(m, ids)
            if i >= cfg.warmup:
                prefill.append(dt)
            advance(1)
        m = _in_dtype(model, dec_dtype)
        ttfts, decode_s, lats = [], [], []
        for i in range(runs):
            ttft, lat = _decode(m, ids, cfg.new_tokens)
            if i >= cfg.warmup:
                ttfts.append(ttft)
                decode_s.append(sum(lat))
                lats += lat
            advance(1)
        del m
    return {
        "prefill_tok_s": cfg.prompt_tokens / statistics.median(prefill),
        "decode_tok_s": (cfg.new_tokens - 1) / statistics.median(decode_s),
        "ttft_s": statistics.median(ttfts),
        "latency_p50_ms": 1000 * _percentile(lats, 0.50),
        "latency_p95_ms": 1000 * _percentile(lats, 0.95),
        "peak_rss_mb": mem.peak_bytes / 2**20,
        "params": param_count(model),
        "disk_mb": (disk_bytes(model) or 0) / 2**20 or None,
        "prefill_dtype": str(pre_dtype).removeprefix("torch."),
        "decode_dtype": str(dec_dtype).removeprefix("torch."),
        "prompt_tokens": cfg.prompt_tokens, "new_tokens": cfg.new_tokens, "repeats": cfg.repeats,
    }


def alternating(models: dict, cfg: SpeedConfig | None = None, rounds: int = 3,
                stat: str = "median") -> dict:
    """Prefill and decode tok/s of several models measured in alternation in this one process
    (a, b, c, a, b, c, ...), reduced per model by `stat` ("median" or "max" over `rounds`).

    `models` maps a name to (model, tokenizer). Timing one model after another lets the machine's
    state (turbo, other load, page cache) drift between them; alternating spreads that drift over
    all of them, which makes the ratios between them like-for-like. Each call of `speed` runs its
    own warm-up first."""
    if stat not in ("median", "max"):
        raise SlmkitError(f"stat must be 'median' or 'max', got {stat!r}")
    if rounds < 1 or not models:
        raise SlmkitError("alternating speed needs at least one model and rounds >= 1")
    cfg = cfg or SpeedConfig(repeats=1)
    runs: dict[str, list[dict]] = {k: [] for k in models}
    for _ in range(rounds):
        for name, (model, tok) in models.items():
            runs[name].append(speed(model, tok, cfg))
    reduce = statistics.median if stat == "median" else max
    return {name: {"prefill_tok_s": reduce(r["prefill_tok_s"] for r in rs),
                   "decode_tok_s": reduce(r["decode_tok_s"] for r in rs),
                   "rounds": rounds, "stat": stat, "runs": rs}
            for name, rs in runs.items()}
