"""`slmkit serve MODEL [MODEL ...]`: an OpenAI-compatible server on 127.0.0.1:8000.

  slmkit serve default                                   # the embedded model, as "default"
  slmkit serve orig=default small=runs/shrink/model      # two models by name
  curl http://127.0.0.1:8000/v1/chat/completions -H 'Content-Type: application/json' \\
       -d '{"model": "default", "messages": [{"role": "user", "content": "Hi"}]}'

A chat page is at http://127.0.0.1:8000/, Prometheus metrics at /metrics. SIGTERM (Ctrl-C)
finishes the running requests, then exits.
"""

from __future__ import annotations

import argparse
import os

from slmkit.errors import SlmkitError


def add_parser(sub, argv=()):
    p = sub.add_parser("serve", help="serve models over an OpenAI-compatible HTTP API",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("models", nargs="+", metavar="MODEL",
                   help="hub id, folder, .gguf or 'default'; NAME=MODEL serves it as NAME")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--api-key", default=os.environ.get("SLMKIT_API_KEY"),
                   help="require 'Authorization: Bearer KEY' on /v1 (default: $SLMKIT_API_KEY, else none)")
    p.add_argument("--kv-memory", default=None,
                   help="KV cache memory for all models, e.g. 2GB (default: a quarter of the free memory, "
                        "at most 2GB); sets how many sequences run at once")
    p.add_argument("--max-seqs", type=int, default=64, help="sequences decoded together at most, per model")
    p.add_argument("--max-queue", type=int, default=64,
                   help="requests waiting per model before new ones get 429 (default 64)")
    p.add_argument("--max-body", default="1MB", help="largest request body (default 1MB)")
    p.add_argument("--prefill-chunk", type=int, default=512,
                   help="prompt tokens prefilled per engine step at most; a longer prompt goes in chunks "
                        "between decode steps, so it never stalls the running streams for long (default 512; "
                        "0: whole prompts)")
    p.add_argument("--max-model-len", type=int, default=None,
                   help="longest prompt + output a request may have, in tokens (default: the model's context; "
                        "on llama.cpp at most 4096, where each running sequence holds this much KV cache)")
    p.add_argument("--draft", default=None, metavar="MODEL",
                   help="a smaller model with the same tokenizer: a request running alone decodes by "
                        "speculative rounds it drafts (PyTorch engine; greedy or temperature-only sampling)")
    p.add_argument("--dtype", default="auto", help="decode dtype of the PyTorch engine (auto picks per CPU)")
    p.add_argument("--engine", default="auto", choices=["auto", "torch", "llamacpp"],
                   help="auto: .gguf files on llama.cpp where llama-cpp-python is installed, everything "
                        "else on slmkit's PyTorch engine")
    return p


def run(ns) -> int:
    import torch

    from slmkit.serve import build_app, load_served, parse_bytes
    from slmkit.serve.app import DRAIN_SECONDS

    if not 0 < ns.port < 65536:
        raise SlmkitError(f"--port must be in 1..65535, not {ns.port}")
    if ns.prefill_chunk < 0:
        raise SlmkitError(f"--prefill-chunk must be >= 0, not {ns.prefill_chunk}")
    for flag in ("max_seqs", "max_queue", "max_model_len"):
        if getattr(ns, flag) is not None and getattr(ns, flag) < 1:
            raise SlmkitError(f"--{flag.replace('_', '-')} must be >= 1, not {getattr(ns, flag)}")
    kv = parse_bytes(ns.kv_memory) if ns.kv_memory else None
    body = parse_bytes(ns.max_body)
    try:
        import uvicorn
    except ImportError:
        raise SlmkitError("serving needs the serve extra: pip install 'slmkit[serve]'") from None
    served = load_served(ns.models, dtype=ns.dtype, kv_memory=kv, max_seqs=ns.max_seqs, max_queue=ns.max_queue,
                         engine=ns.engine, prefill_chunk=ns.prefill_chunk or None, max_model_len=ns.max_model_len,
                         draft=ns.draft)
    for name, s in served.items():
        print(f"serving {name!r}: up to {s.worker.max_seqs} sequences of up to {s.context:,} tokens, KV budget "
              f"{s.worker.kv_budget:,} tokens",
              flush=True)
    app = build_app(served, api_key=ns.api_key, max_body=body)
    config = uvicorn.Config(app, host=ns.host, port=ns.port, log_level="warning",
                            timeout_graceful_shutdown=DRAIN_SECONDS + 10)
    local = [s.worker for s in served.values() if isinstance(s.model, torch.nn.Module)]
    if not local:                  # llama.cpp only: its own threads; uvicorn keeps the main thread
        uvicorn.Server(config).run()
        return 0
    return _serve_on_main_thread(uvicorn.Server(config), local[0])


def _serve_on_main_thread(server, worker) -> int:
    """uvicorn on a second thread and `worker`'s PyTorch engine on this one (torch ops run about
    twice as fast on the main thread); SIGTERM / Ctrl-C drain the requests, then both end."""
    import signal
    import threading

    worker.inline = True

    def http():
        try:
            server.run()
        finally:
            worker.stop(0)         # uvicorn ended (or never started): end the engine's loop too

    thread = threading.Thread(target=http, name="slmkit-serve-http")
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: setattr(server, "should_exit", True))
    thread.start()
    worker.run_here()
    thread.join()
    if not server.started:
        raise SlmkitError(f"the HTTP server did not start on {server.config.host}:{server.config.port} "
                          "(is the port in use? see the lines above)")
    return 0
