"""The HTTP face of `slmkit serve`: OpenAI's `/v1/completions`, `/v1/chat/completions` (streamed as
server-sent events, or whole) and `/v1/models`, with `/health`, `/metrics` and the chat page at `/`.

    app = build_app({"smollm2": Served(worker, model, tokenizer)}, api_key="sk-...")
    uvicorn.run(app, host="127.0.0.1", port=8000)

Every error is answered in OpenAI's shape with its status: a bad field 400, a prompt longer than
the context 400 (`context_length_exceeded`), a wrong or missing key 401, an unknown model 404, a
body over `max_body` bytes 413, a full queue 429 with Retry-After. A client that closes its
connection frees its sequences at once.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sse_starlette import EventSourceResponse

from slmkit.generate.stream import TextStream
from slmkit.models.introspect import context_length
from slmkit.serve.protocol import APIError, ChatRequest, CompletionRequest
from slmkit.serve.worker import Worker

PAGE = Path(__file__).with_name("page.html")
DRAIN_SECONDS = 590      # on SIGTERM, running streams get this long to finish (uvicorn waits 600 s)


@dataclass
class Served:
    """A model the server answers for: its worker, the model (config, generation config), its
    tokenizer, and the longest prompt + output a request may have (default: the model's context)."""
    worker: Worker
    model: object
    tokenizer: object
    max_len: int | None = None

    @property
    def context(self) -> int:
        return min(context_length(self.model) or 2048, self.max_len or 1 << 62)


class BodyLimit:
    """ASGI middleware: a request body over `limit` bytes is refused with 413 (by its
    Content-Length before reading, else while it arrives)."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope.get("headers", [])).get(b"content-length", b"0")
        if length.isdigit() and int(length) > self.limit:
            return await _too_large(self.limit)(scope, receive, send)
        seen = 0

        async def counted():
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit:
                raise APIError(413, f"the request body is over {self.limit} bytes", code="body_too_large")
            return message
        return await self.app(scope, counted, send)


def _too_large(limit: int) -> JSONResponse:
    e = APIError(413, f"the request body is over {limit} bytes", code="body_too_large")
    return JSONResponse(e.body(), status_code=413)


def build_app(served: dict[str, Served], *, api_key: str | None = None, max_body: int = 1 << 20) -> FastAPI:
    """The FastAPI app over `served` (name -> model); its workers start and stop with the app."""
    from contextlib import asynccontextmanager

    metrics = next(iter(served.values())).worker.metrics if served else None

    @asynccontextmanager
    async def lifespan(app):
        for s in served.values():
            s.worker.start()
        yield
        for s in served.values():   # uvicorn has drained the HTTP requests by now
            await asyncio.to_thread(s.worker.stop)

    app = FastAPI(title="slmkit", lifespan=lifespan)
    app.add_middleware(BodyLimit, limit=max_body)

    @app.exception_handler(APIError)
    async def api_error(request, e: APIError):
        return JSONResponse(e.body(), status_code=e.status, headers=e.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(request, e: RequestValidationError):
        first = e.errors()[0] if e.errors() else {}
        where = [str(p) for p in first.get("loc", ()) if p != "body"]
        msg = f"{'.'.join(where) or 'body'}: {first.get('msg', 'invalid request')}"
        return JSONResponse(APIError(400, msg, param=".".join(where) or None).body(), status_code=400)

    def check_key(request: Request) -> None:
        if api_key is not None and request.headers.get("authorization", "") != f"Bearer {api_key}":
            raise APIError(401, "a missing or wrong API key: send 'Authorization: Bearer KEY'",
                           code="invalid_api_key")

    def find(name: str) -> Served:
        if name not in served:
            raise APIError(404, f"the model {name!r} is not served here; served: {', '.join(served)}",
                           param="model", code="model_not_found")
        return served[name]

    @app.get("/health")
    async def health():
        return {"status": "ok", "models": list(served)}

    @app.get("/metrics")
    async def prometheus():
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/", response_class=HTMLResponse)
    async def page():
        return PAGE.read_text()

    @app.get("/v1/models")
    async def models(request: Request):
        check_key(request)
        return {"object": "list", "data": [{"id": n, "object": "model", "created": 0, "owned_by": "slmkit"}
                                           for n in served]}

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request):
        check_key(request)
        s = find(body.model)
        prompts = _completion_prompts(body.prompt, s)
        return await _answer(request, s, body, prompts, body.max_tokens, body.logprobs, chat=False)

    @app.post("/v1/chat/completions")
    async def chat(body: ChatRequest, request: Request):
        check_key(request)
        s = find(body.model)
        return await _answer(request, s, body, [_chat_prompt(body, s)], body.wanted_tokens(),
                             body.logprob_count(), chat=True)

    return app


def _completion_prompts(prompt, s: Served) -> list[list[int]]:
    items = prompt if isinstance(prompt, list) and prompt and not isinstance(prompt[0], int) else [prompt]
    vocab = len(s.tokenizer)
    out = []
    for p in items:
        ids = s.tokenizer(p, add_special_tokens=False)["input_ids"] if isinstance(p, str) else list(p)
        if not ids:
            raise APIError(400, "a prompt must have at least one token", param="prompt")
        if any(not 0 <= t < vocab for t in ids):
            raise APIError(400, f"prompt token ids must be in [0, {vocab})", param="prompt")
        out.append(ids)
    if not out:
        raise APIError(400, "prompt must not be empty", param="prompt")
    return out


def _chat_prompt(body: ChatRequest, s: Served) -> list[int]:
    tok = s.tokenizer
    if not getattr(tok, "chat_template", None):
        raise APIError(400, f"the model {body.model!r} has no chat template; use /v1/completions",
                       param="messages")
    messages = [{"role": m.role, "content": m.text()} for m in body.messages]
    try:
        text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    except Exception as e:  # a template that refuses this conversation (roles, order)
        raise APIError(400, f"the chat template refused these messages: {e}", param="messages") from e
    return tok(text, add_special_tokens=False)["input_ids"]


async def _answer(request: Request, s: Served, body, prompts: list[list[int]], max_tokens: int | None,
                  logprobs: int | None, *, chat: bool):
    longest = max(map(len, prompts))
    room = s.context - longest
    if room < 1 or (max_tokens is not None and max_tokens > room):
        raise APIError(400, f"the prompt is {longest} tokens and max_tokens {max_tokens}; the model's context "
                            f"is {s.context} tokens", param="messages" if chat else "prompt",
                       code="context_length_exceeded")
    wanted = max_tokens or room
    rows = [(p, body.sampling(s.model, wanted, logprobs, i)) for p in prompts for i in range(body.n)]
    ticket = s.worker.submit([p for p, _ in rows], [q for _, q in rows], asyncio.get_running_loop())
    kind, _, refusal = await ticket.events.get()     # queued, or refused (a full queue)
    if kind == "rejected":
        raise refusal
    streams = [TextStream(s.tokenizer, q.stop) for _, q in rows]
    reply = _Reply(s, body, chat, rid=("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24])
    if body.stream:
        return EventSourceResponse(_sse(s, ticket, streams, reply), ping=15, shutdown_grace_period=DRAIN_SECONDS)
    return await _whole(request, s, ticket, streams, reply)


class _Reply:
    """Builds the response objects of one request (OpenAI's shapes for chat and completions)."""

    def __init__(self, s: Served, body, chat: bool, rid: str):
        self.s, self.body, self.chat, self.id = s, body, chat, rid
        self.created = int(time.time())

    def envelope(self, choices: list, chunk: bool) -> dict:
        kind = ("chat.completion.chunk" if chunk else "chat.completion") if self.chat else "text_completion"
        return {"id": self.id, "object": kind, "created": self.created, "model": self.body.model,
                "choices": choices}

    def logprobs(self, tokens: list[int], lps: list[float] | None, tops) -> dict | None:
        if lps is None:
            return None
        tok = self.s.tokenizer
        text = [tok.decode([t]) for t in tokens]
        if self.chat:
            return {"content": [
                {"token": t, "logprob": lp, "bytes": list(t.encode()),
                 "top_logprobs": [{"token": tok.decode([i]), "logprob": v, "bytes": list(tok.decode([i]).encode())}
                                  for i, v in (top or [])]}
                for t, lp, top in zip(text, lps, tops or [None] * len(text))]}
        return {"tokens": text, "token_logprobs": lps,
                "top_logprobs": [{tok.decode([i]): v for i, v in top} for top in tops] if tops else None,
                "text_offset": [sum(map(len, text[:k])) for k in range(len(text))]}

    def choice(self, index: int, text: str, finish: str | None, logprobs: dict | None, chunk: bool,
               first: bool = False) -> dict:
        if not self.chat:
            return {"index": index, "text": text, "logprobs": logprobs, "finish_reason": finish}
        if chunk:
            delta = {"role": "assistant", "content": text} if first else ({"content": text} if text else {})
            return {"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish}
        return {"index": index, "message": {"role": "assistant", "content": text}, "logprobs": logprobs,
                "finish_reason": finish}


def _usage(ticket, done: dict) -> dict:
    prompt = sum(len(p) for p in ticket.prompts)
    completion = sum(len(c.token_ids) for c in done.values())
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


async def _whole(request: Request, s: Served, ticket, streams, reply: _Reply):
    done: dict = {}
    while len(done) < len(streams):
        try:
            kind, index, payload = await asyncio.wait_for(ticket.events.get(), timeout=0.5)
        except asyncio.TimeoutError:
            if await request.is_disconnected():
                s.worker.cancel(ticket)
                return Response(status_code=499)
            continue
        if kind == "error":
            raise APIError(500, payload, type="server_error")
        if kind == "done":
            done[index] = payload
    s.worker.metrics.requests.labels(s.worker.name, "200").inc()
    choices = [reply.choice(i, c.text or "", c.finish_reason,
                            reply.logprobs(c.token_ids, c.logprobs, c.top_logprobs), chunk=False)
               for i, c in sorted(done.items())]
    return {**reply.envelope(choices, chunk=False), "usage": _usage(ticket, done)}


async def _sse(s: Served, ticket, streams, reply: _Reply):
    """The request's server-sent events: one chunk per token that releases text (or carries a
    log-probability), a last chunk per choice with its finish reason, usage when asked, [DONE]."""
    done: dict = {}
    started: set[int] = set()
    try:
        while len(done) < len(streams):
            kind, index, payload = await ticket.events.get()
            if kind == "error":
                yield json.dumps({"error": {"message": payload, "type": "server_error", "param": None,
                                            "code": None}})
                return
            if kind == "token":
                text = streams[index].push(payload.token)
                lp = reply.logprobs([payload.token], [payload.logprob],
                                    [payload.top_logprobs] if payload.top_logprobs is not None else None) \
                    if payload.logprob is not None else None
                first = reply.chat and index not in started
                if text or lp or first:
                    started.add(index)
                    yield json.dumps(reply.envelope([reply.choice(index, text, None, lp, True, first)], True))
            else:
                done[index] = payload
                rest = streams[index].finish(payload.text)
                yield json.dumps(reply.envelope([reply.choice(index, rest, payload.finish_reason, None, True)],
                                                True))
        if reply.body.stream_options and reply.body.stream_options.include_usage:
            yield json.dumps({**reply.envelope([], True), "usage": _usage(ticket, done)})
        s.worker.metrics.requests.labels(s.worker.name, "200").inc()
        yield "[DONE]"
    finally:
        if len(done) < len(streams):   # the client went away (or the engine failed): free the sequences
            s.worker.cancel(ticket)
