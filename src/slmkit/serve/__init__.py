"""`slmkit serve`: an OpenAI-compatible HTTP server (FastAPI + uvicorn) over slmkit's decode
engine, continuous batching across requests with admission by KV-cache budget.

    served = load_served(["default", "small=runs/x/model"], kv_memory=2 << 30)
    app = build_app(served, api_key=None)          # slmkit.serve.app
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from slmkit.errors import SlmkitError
from slmkit.serve.app import Served, build_app
from slmkit.serve.metrics import Metrics
from slmkit.serve.worker import Worker

__all__ = ["Served", "build_app", "kv_memory_default", "load_served", "model_name", "parse_bytes"]


def parse_bytes(text: str) -> int:
    """'2GB', '512MB', '1.5GiB' or a plain byte count -> bytes."""
    t = text.strip().upper().removesuffix("B").removesuffix("I")
    scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}.get(t[-1:], 1)
    try:
        value = float(t[:-1] if scale > 1 else t)
    except ValueError:
        raise SlmkitError(f"a memory size must look like 2GB, 512MB or 1073741824, not {text!r}") from None
    if value <= 0:
        raise SlmkitError(f"a memory size must be positive, not {text!r}")
    return int(value * scale)


def kv_memory_default() -> int:
    """A quarter of the memory available now (MemAvailable), at most 2 GiB (~90k tokens of a
    135M model's float16 cache); 1 GiB where the system does not say."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return min(int(line.split()[1]) * 1024 // 4, 2 << 30)
    except OSError:
        pass
    return 1 << 30


def model_name(spec: str) -> tuple[str, str]:
    """'NAME=SOURCE' or 'SOURCE' -> (name, source); a folder or file is named by its last part."""
    if "=" in spec and not os.path.exists(spec):
        name, source = spec.split("=", 1)
        if not name or not source:
            raise SlmkitError(f"a model is SOURCE or NAME=SOURCE, not {spec!r}")
        return name, source
    return (Path(spec).name if os.path.exists(spec) else spec), spec


def load_served(specs: list[str], *, dtype: str = "auto", kv_memory: int | None = None,
                max_seqs: int = 64, max_queue: int = 64, engine: str = "auto",
                prefill_chunk: int | None = 512, max_model_len: int | None = None,
                draft: str | None = None) -> dict[str, Served]:
    """Load every model (names checked unique before any loads) with a worker each; the KV memory
    is split evenly between them. `engine`: "llamacpp" runs .gguf files on llama.cpp (one context,
    a KV stream of `max_model_len` tokens per sequence, as many sequences as the memory holds),
    "torch" on slmkit's PyTorch engine (dequantized); "auto" picks llama.cpp for .gguf files where
    llama-cpp-python is installed. `prefill_chunk`: prompt tokens prefilled per engine step at most
    (a longer prompt goes in chunks between decode steps). `max_model_len`: the longest prompt +
    output a request may have (default: the model's context; on llama.cpp at most 4096). `draft`: a
    model with the same tokenizer that drafts for the one model served (PyTorch engine): a
    request running alone then decodes by speculative rounds."""
    import torch

    from slmkit.runtime import llamacpp

    if engine not in ("auto", "torch", "llamacpp"):
        raise SlmkitError(f"engine is auto, torch or llamacpp, not {engine!r}")
    named = [model_name(s) for s in specs]
    names = [n for n, _ in named]
    if not named:
        raise SlmkitError("serve needs at least one model")
    if len(set(names)) != len(names):
        raise SlmkitError(f"two models would be served as one name ({', '.join(names)}); "
                          "name them: NAME=SOURCE")
    if engine == "llamacpp":
        if llamacpp.missing():
            raise SlmkitError(llamacpp.missing().replace("llama.cpp rows skipped", "--engine llamacpp"))
        not_gguf = [src for _, src in named if not src.endswith(".gguf")]
        if not_gguf:
            raise SlmkitError(f"--engine llamacpp serves .gguf files; not: {', '.join(not_gguf)}")
    if draft is not None and len(named) != 1:
        raise SlmkitError(f"--draft drafts for one served model, not {len(named)}")
    memory = (kv_memory or kv_memory_default()) // len(named)
    metrics = Metrics()
    served = {}
    for name, source in named:
        on_llama = source.endswith(".gguf") and engine != "torch" and not llamacpp.missing()
        load_one = _llamacpp_served if on_llama else _torch_served
        if draft is not None and on_llama:
            raise SlmkitError(f"--draft runs on slmkit's PyTorch engine; {source} would run on llama.cpp "
                              "(serve it with --engine torch, or without --draft)")
        lim = Limits(max_seqs, max_queue, prefill_chunk, max_model_len, draft)
        served[name] = load_one(name, source, dtype, memory, lim, metrics)
    if all(not isinstance(s.model, torch.nn.Module) for s in served.values()):
        torch.set_num_threads(1)   # only sampling runs in torch; llama.cpp's threads need the cores
    return served


@dataclass
class Limits:
    max_seqs: int
    max_queue: int
    prefill_chunk: int | None
    max_model_len: int | None = None
    draft: str | None = None


def _torch_served(name, source, dtype, memory, lim: Limits, metrics) -> Served:
    from slmkit.generate import Engine
    from slmkit.generate.prefix import PrefixCache
    from slmkit.models import load
    from slmkit.models.introspect import kv_bytes_per_token

    model, tok = load(source, dtype, phase="decode")
    prefixes = PrefixCache(model, memory // 4)          # a quarter for recent prompts, the rest for running ones
    budget = (memory - prefixes.max_bytes) // (kv_bytes_per_token(model) or 1)
    speculator = _speculator(model, tok, lim.draft, dtype) if lim.draft else None
    worker = Worker(name, lambda: Engine(model, tok, max_batch=lim.max_seqs, prefill_chunk=lim.prefill_chunk,
                                         prefix_cache=prefixes, speculator=speculator),
                    kv_budget_tokens=budget, max_seqs=lim.max_seqs, max_queue=lim.max_queue, metrics=metrics)
    return Served(worker, model, tok, lim.max_model_len)


def _speculator(model, tok, source: str, dtype: str):
    """Speculative rounds drafted by the model at `source` (checked to share the tokenizer)."""
    from slmkit.collab.speculative import ModelDrafter, Speculator
    from slmkit.generate.lm import LocalLM, same_vocabulary
    from slmkit.models import load

    draft = LocalLM(*load(source, dtype, phase="decode"), name=source)
    if not same_vocabulary(draft, LocalLM(model, tok)):
        raise SlmkitError(f"--draft {source} uses another tokenizer than the served model; a draft must "
                          "share its vocabulary (e.g. a smaller model of the same family)")
    return Speculator(ModelDrafter(draft))


def _llamacpp_served(name, source, dtype, memory, lim: Limits, metrics) -> Served:
    """A GGUF file on llama.cpp: one context whose KV cache of `memory` bytes is split into a stream
    per sequence, the tokenizer (and chat template) from the file itself."""
    from transformers import AutoTokenizer

    from slmkit.generate import Engine
    from slmkit.runtime.llamacpp_batch import LlamaCppContext
    from slmkit.serve.worker import stream_footprint

    path = Path(source)
    if not path.is_file():
        raise SlmkitError(f"{source}: no such GGUF file")
    tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    ctx = LlamaCppContext(path, kv_bytes=memory, n_seq=lim.max_seqs, seq_ctx=lim.max_model_len)
    worker = Worker(name, lambda: Engine(ctx, tok, max_batch=ctx.n_seq, prefill_chunk=lim.prefill_chunk),
                    kv_budget_tokens=ctx.n_ctx, max_seqs=ctx.n_seq, max_queue=lim.max_queue, metrics=metrics,
                    footprint=stream_footprint(ctx.seq_ctx))
    return Served(worker, ctx, tok)
