"""One served model: its engine stepping on its own thread, and the admission of requests to it.

    worker = Worker("smollm2", engine, kv_budget_tokens=90_000, max_queue=64)
    worker.start()
    ticket = worker.submit([prompt_ids] * n, [sampling_0, ...], loop)   # or APIError 400
    kind, index, payload = await ticket.events.get()    # first ("queued", 0, None) or ("rejected",
                                                        # 0, APIError 429); then ("token", i, StepOutput),
                                                        # ("done", i, Completion), ("error", i, str)
    worker.cancel(ticket)                                # a client that went away

The engine (`slmkit.generate.Engine`, or any object with its add / step / remove / result /
has_work) is only touched from the worker's thread. Each step decodes one token for every
running sequence and prefills newly admitted ones, so requests join and leave between steps
(continuous batching). A request is admitted when the KV cache the running sequences could
reach, with it, stays within the budget (`footprint`: a left-padded batch holds rows x its
longest prompt + max_tokens; llama.cpp a fixed stream per sequence); until then it waits, and a full waiting queue answers 429 (decided on
the worker's thread, which alone knows what it can admit).
"""

from __future__ import annotations

import asyncio
import sys
import threading
import time
import traceback
from collections import deque
from dataclasses import dataclass, field
from typing import Callable

from slmkit.generate import Sampling
from slmkit.serve.metrics import Metrics
from slmkit.serve.protocol import APIError


def padded_footprint(sizes: list[int]) -> int:
    """KV tokens a left-padded batch of sequences of at most `sizes` tokens can reach."""
    return len(sizes) * max(sizes, default=0)


def stream_footprint(seq_ctx: int) -> Callable[[list[int]], int]:
    """KV tokens sequences hold when each owns a stream of `seq_ctx` tokens (llama.cpp)."""
    return lambda sizes: len(sizes) * seq_ctx


@dataclass
class Ticket:
    """One request: its sequences (one per choice) and the queue its events arrive on."""
    prompts: list[list[int]]
    samplings: list[Sampling]
    loop: asyncio.AbstractEventLoop
    events: asyncio.Queue = field(default_factory=asyncio.Queue)
    arrived: float = field(default_factory=time.perf_counter)
    seq_ids: list[int] = field(default_factory=list)
    open: int = 0                    # choices not finished yet
    first: float | None = None       # when the first token came
    last: dict[int, float] = field(default_factory=dict)

    @property
    def sizes(self) -> list[int]:
        return [len(p) + s.max_new_tokens for p, s in zip(self.prompts, self.samplings)]

    def send(self, *event) -> None:
        self.loop.call_soon_threadsafe(self.events.put_nowait, event)


class Worker:
    """A model's engine on a thread, with admission by KV budget (see the module docstring)."""

    def __init__(self, name: str, make_engine: Callable[[], object], *, kv_budget_tokens: int,
                 max_seqs: int = 64, max_queue: int = 64, metrics: Metrics | None = None,
                 footprint: Callable[[list[int]], int] = padded_footprint):
        self.name, self.make_engine = name, make_engine
        self.engine = make_engine()
        self.kv_budget, self.max_seqs, self.max_queue = kv_budget_tokens, max_seqs, max_queue
        self.metrics, self.footprint = metrics or Metrics(), footprint
        self._inbox: deque = deque()               # ("add", ticket) / ("cancel", ticket)
        self._wake = threading.Condition()
        self._waiting: deque[Ticket] = deque()     # admitted to the queue, not to the engine
        self._by_seq: dict[int, tuple[Ticket, int]] = {}
        self._running: list[Ticket] = []
        self._stopping = False
        self._thread = threading.Thread(target=self._loop, name=f"slmkit-serve-{name}", daemon=True)
        self._tok_window: deque[tuple[float, int]] = deque()
        self.inline = False        # True: the caller steps the engine (`run_here`), no thread of its own
        self._done = threading.Event()
        self._reused = 0                 # the engine's `reused` count already in the metrics
        self._drafted = (0, 0)           # and its speculator's proposed / accepted counts

    # ---- called from the event loop ---------------------------------------------------------
    def start(self) -> None:
        """Start stepping the engine on the worker's own thread (not when `inline`)."""
        if not self.inline:
            self._thread.start()

    def run_here(self) -> None:
        """Step the engine on the calling thread until `stop()`. A PyTorch engine decodes about
        twice as fast on the main thread, whose OpenMP workers stay hot between ops, as on a
        thread of its own; set `inline` before the app starts."""
        try:
            self._loop()
        finally:
            self._done.set()

    def stop(self, timeout: float | None = None) -> None:
        """Finish what is running and waiting, then end the loop (and its thread)."""
        with self._wake:
            self._stopping = True
            self._wake.notify()
        if self.inline:
            self._done.wait(timeout)
        elif self._thread.is_alive():
            self._thread.join(timeout)

    def submit(self, prompts: list[list[int]], samplings: list[Sampling],
               loop: asyncio.AbstractEventLoop) -> Ticket:
        ticket = Ticket(prompts, samplings, loop)
        need = self.footprint(ticket.sizes)
        if need > self.kv_budget or len(prompts) > self.max_seqs:
            raise APIError(400, f"this request needs {need} tokens of KV cache for {len(prompts)} "
                                f"sequences; the server holds {self.kv_budget} tokens and {self.max_seqs} "
                                "sequences at most (ask for fewer max_tokens or a smaller n, or start the "
                                "server with more --kv-memory)", param="max_tokens")
        with self._wake:
            self._inbox.append(("add", ticket))
            self._wake.notify()
        return ticket

    def cancel(self, ticket: Ticket) -> None:
        """Drop a request's sequences now (a closed connection); a finished one is left alone."""
        with self._wake:
            self._inbox.append(("cancel", ticket))
            self._wake.notify()

    # ---- the worker thread -------------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            with self._wake:
                while not (self._inbox or self._waiting or self.engine.has_work() or self._stopping):
                    self._wake.wait()
                inbox, self._inbox = list(self._inbox), deque()
                if self._stopping and not inbox and not self._waiting and not self.engine.has_work():
                    return
            for kind, ticket in inbox:
                if kind == "cancel":
                    self._cancel(ticket)
                    continue
                self._admit()                     # what fits starts first; the rest is the queue
                if len(self._waiting) >= self.max_queue:
                    ticket.send("rejected", 0, APIError(
                        429, f"the server's queue for {self.name!r} is full ({self.max_queue} requests waiting); "
                             "retry shortly", type="rate_limit_error", code="queue_full", headers={"Retry-After": "1"}))
                else:
                    self._waiting.append(ticket)
                    ticket.send("queued", 0, None)
            self._admit()
            if self.engine.has_work():
                self._step()

    def _admit(self) -> None:
        """Start waiting requests, in order, while the KV budget holds them."""
        while self._waiting:
            ticket = self._waiting[0]
            sizes = [s for t in self._running for s in t.sizes] + ticket.sizes
            if self._running and (self.footprint(sizes) > self.kv_budget or len(sizes) > self.max_seqs):
                break
            self._waiting.popleft()
            ticket.seq_ids = [self.engine.add(p, s) for p, s in zip(ticket.prompts, ticket.samplings)]
            ticket.open = len(ticket.seq_ids)
            for i, sid in enumerate(ticket.seq_ids):
                self._by_seq[sid] = (ticket, i)
            self._running.append(ticket)
            self.metrics.prompt_tokens.labels(self.name).inc(sum(map(len, ticket.prompts)))
        self._gauges()

    def _step(self) -> None:
        t0 = time.perf_counter()
        try:
            outs = self.engine.step()
        except Exception as e:  # the step failed: end every running request, keep serving
            traceback.print_exc(file=sys.stderr)
            message = f"the engine failed: {type(e).__name__}: {e}"
            for ticket in self._running:
                ticket.send("error", 0, message)
            self._running, self._by_seq = [], {}
            reset = getattr(self.engine.model, "reset", None)   # llama.cpp: clear the shared cache
            if callable(reset):
                reset()
            self.engine = self.make_engine()
            self._gauges()
            return
        now = time.perf_counter()
        for out in outs:
            ticket, index = self._by_seq[out.id]
            if ticket.first is None:
                ticket.first = now
                self.metrics.ttft.labels(self.name).observe(now - ticket.arrived)
            if index in ticket.last:
                self.metrics.tpot.labels(self.name).observe(now - ticket.last[index])
            ticket.last[index] = now
            ticket.send("token", index, out)
            if out.finish_reason is not None:
                ticket.send("done", index, self.engine.result(out.id))
                self._close(ticket, out.id)
        self.metrics.output_tokens.labels(self.name).inc(len(outs))
        spec = getattr(getattr(self.engine, "speculator", None), "stats", None)
        if spec is not None and spec.proposed > self._drafted[0]:
            self.metrics.draft_tokens.labels(self.name, "proposed").inc(spec.proposed - self._drafted[0])
            self.metrics.draft_tokens.labels(self.name, "accepted").inc(spec.accepted - self._drafted[1])
            self._drafted = (spec.proposed, spec.accepted)
        reused = getattr(self.engine, "reused", 0)               # prompt tokens from the prefix cache
        if reused > self._reused:
            self.metrics.cached_tokens.labels(self.name).inc(reused - self._reused)
            self._reused = reused
        self._rate(now, len(outs), now - t0)
        self._gauges()

    def _cancel(self, ticket: Ticket) -> None:
        if ticket in self._waiting:
            self._waiting.remove(ticket)
            return
        for sid in list(ticket.seq_ids):
            if sid in self._by_seq:
                self.engine.remove(sid)
                self._close(ticket, sid)

    def _close(self, ticket: Ticket, sid: int) -> None:
        self._by_seq.pop(sid, None)
        ticket.open -= 1
        if ticket.open == 0 and ticket in self._running:
            self._running.remove(ticket)

    def _rate(self, now: float, tokens: int, seconds: float) -> None:
        self._tok_window.append((now, tokens))
        while self._tok_window and now - self._tok_window[0][0] > 1.0:
            self._tok_window.popleft()
        span = max(now - self._tok_window[0][0], seconds, 1e-3)
        self.metrics.tok_s.labels(self.name).set(sum(n for _, n in self._tok_window) / span)

    def _gauges(self) -> None:
        m = self.metrics
        m.queue.labels(self.name).set(len(self._waiting))
        m.running.labels(self.name).set(len(self._by_seq))
        sizes = [s for t in self._running for s in t.sizes]
        m.kv.labels(self.name).set(self.footprint(sizes) / self.kv_budget if self.kv_budget else 0.0)
