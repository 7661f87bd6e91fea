"""The server's Prometheus metrics (prometheus-client), one set per server, labelled by model."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_LATENCY = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class Metrics:
    """TTFT, time per output token, queue depth, running sequences, KV cache use, token counts
    (prompt, of which cached, and generated) and output tokens per second; `registry` is what `/metrics` exposes."""

    def __init__(self):
        r = self.registry = CollectorRegistry()
        self.ttft = Histogram("slmkit_time_to_first_token_seconds", "request arrival to its first token",
                              ["model"], buckets=_LATENCY, registry=r)
        self.tpot = Histogram("slmkit_time_per_output_token_seconds", "time between a sequence's tokens",
                              ["model"], buckets=_LATENCY, registry=r)
        self.queue = Gauge("slmkit_queue_depth", "requests waiting for room in the KV cache", ["model"],
                           registry=r)
        self.running = Gauge("slmkit_running_sequences", "sequences being decoded", ["model"], registry=r)
        self.kv = Gauge("slmkit_kv_cache_usage_ratio", "KV cache reserved by running sequences / budget",
                        ["model"], registry=r)
        self.prompt_tokens = Counter("slmkit_prompt_tokens", "prompt tokens prefilled", ["model"], registry=r)
        self.cached_tokens = Counter("slmkit_prompt_tokens_cached", "prompt tokens taken from the prefix cache "
                                     "instead of computed", ["model"], registry=r)
        self.draft_tokens = Counter("slmkit_draft_tokens", "draft tokens proposed and accepted (--draft)",
                                    ["model", "outcome"], registry=r)
        self.output_tokens = Counter("slmkit_generation_tokens", "tokens generated", ["model"], registry=r)
        self.tok_s = Gauge("slmkit_generation_tokens_per_second",
                           "tokens generated per second (over the last second of steps)", ["model"], registry=r)
        self.requests = Counter("slmkit_requests", "requests answered, by HTTP status", ["model", "status"],
                                registry=r)
