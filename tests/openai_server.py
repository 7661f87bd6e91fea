"""A small real OpenAI-compatible HTTP server on 127.0.0.1 serving a LocalLM, for tests:
/v1/chat/completions, /v1/completions (generation, and echo + logprobs for prompt scoring).
Failure injection: `server.fail_next = n` answers the next n requests with HTTP 500;
`server.delay = s` sleeps s seconds before answering."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import torch


class _Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):  # quiet
        pass

    def _send(self, code: int, body: dict) -> None:
        raw = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)

    def do_POST(self):  # noqa: N802  (http.server's naming)
        srv = self.server
        req = json.loads(self.rfile.read(int(self.headers["Content-Length"])) or b"{}")
        srv.requests.append((self.path, req, self.headers.get("Authorization")))
        if srv.delay:
            time.sleep(srv.delay)
        if srv.fail_next > 0:
            srv.fail_next -= 1
            return self._send(500, {"error": {"message": "injected failure"}})
        lm = srv.lm
        if self.path == "/v1/chat/completions":
            text = lm.generate([req["messages"][-1]["content"]], req.get("max_tokens", 16),
                               req.get("temperature", 0.0))[0]
            return self._send(200, {"choices": [{"message": {"role": "assistant", "content": text}}]})
        if self.path == "/v1/completions":
            if req.get("echo") and req.get("max_tokens", 1) == 0:
                return self._send(200, {"choices": [{"text": req["prompt"], "logprobs": self._score(req["prompt"])}]})
            text = lm.generate([req["prompt"]], req.get("max_tokens", 16), req.get("temperature", 0.0))[0]
            return self._send(200, {"choices": [{"text": text}]})
        return self._send(404, {"error": {"message": f"no route {self.path}"}})

    def _score(self, prompt: str) -> dict:
        lm = self.server.lm
        enc = lm.tokenizer(prompt, add_special_tokens=False, return_offsets_mapping=True)
        ids, offsets = enc["input_ids"], [o[0] for o in enc["offset_mapping"]]
        logits = lm.session().extend(ids)
        logp = torch.log_softmax(logits[:-1], -1).gather(1, torch.tensor(ids[1:])[:, None])[:, 0]
        return {"tokens": [lm.tokenizer.decode([i]) for i in ids], "text_offset": offsets,
                "token_logprobs": [None] + logp.tolist()}


class OpenAIServer:
    """`with OpenAIServer(lm) as srv: srv.url` -> 'http://127.0.0.1:PORT/v1'."""

    def __init__(self, lm):
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.httpd.lm, self.httpd.fail_next, self.httpd.delay, self.httpd.requests = lm, 0, 0.0, []
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def __getattr__(self, name):
        return getattr(self.httpd, name)

    def __setattr__(self, name, value):
        if name in ("fail_next", "delay"):
            setattr(self.httpd, name, value)
        else:
            super().__setattr__(name, value)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)
