"""Shared pieces of the `slmkit serve` tests: a tiny chat model, a real uvicorn server on a free
127.0.0.1 port, the official `openai` client. The fixtures over them are in conftest.py."""

from __future__ import annotations

import copy
import socket
import threading
import time
from contextlib import contextmanager

import openai
import pytest

from slmkit.generate import Engine, Sampling, generate
from slmkit.models import tiny
from slmkit.serve import build_app
from slmkit.serve.metrics import Metrics
from slmkit.serve.worker import Worker

uvicorn = pytest.importorskip("uvicorn")

TEMPLATE = ("{% for m in messages %}<|{{ m.role }}|>{{ m.content }}\n{% endfor %}"
            "{% if add_generation_prompt %}<|assistant|>{% endif %}")


@contextmanager
def serving(served: dict, **kw):
    """A uvicorn server of build_app(served) on a free 127.0.0.1 port -> its base URL."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(build_app(served, **kw), log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not server.started and time.time() < deadline:
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(30)


def chat_model(tiny_tok):
    """A tiny random llama and a copy of the tiny tokenizer with a chat template."""
    tok = copy.deepcopy(tiny_tok)
    tok.chat_template = TEMPLATE
    return tiny.tiny_model("llama"), tok


def worker(model, tok, name="tiny", budget=100_000, **kw) -> Worker:
    return Worker(name, lambda: Engine(model, tok), kv_budget_tokens=budget, metrics=Metrics(), **kw)


def client(url, key="none", **kw) -> openai.OpenAI:
    return openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=0, timeout=60, **kw)


def reference(model, tok, prompt_ids, n=12) -> str:
    return generate(model, tok, [prompt_ids], Sampling(max_new_tokens=n))[0]
