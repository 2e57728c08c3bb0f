"""Prometheus metrics on a per-app registry (tests build many apps; the global one would clash)."""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from starlette.types import ASGIApp, Message, Receive, Scope, Send

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_FAST_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
)  # fmt: skip
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class EngineMetrics:
    """The batching engine's queue, batches, timing and prefix-state cache."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        r = registry if registry is not None else CollectorRegistry(auto_describe=True)
        self.registry = r
        self.queue_size = Gauge(
            "rnnlm_engine_queue_size",
            "Requests admitted and waiting for their first forward (scoring texts or "
            "generations waiting for a batch slot).",
            registry=r,
        )
        self.running = Gauge(
            "rnnlm_engine_running",
            "Generation and next-word streams holding a batch slot.",
            registry=r,
        )
        self.in_flight = Gauge(
            "rnnlm_engine_in_flight", "Requests inside the engine (queued or running).", registry=r
        )
        self.queue_time = Histogram(
            "rnnlm_engine_queue_seconds",
            "Time from admission to a request's first forward, by kind.",
            ["kind"],
            buckets=_FAST_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "rnnlm_engine_batch_size",
            "Streams per batched forward: kind=score (texts and prompts fed together) or "
            "kind=decode (one step of every running generation).",
            ["kind"],
            buckets=_BATCH_BUCKETS,
            registry=r,
        )
        self.forward_time = Histogram(
            "rnnlm_engine_forward_seconds",
            "Compute time of one engine step (a scoring forward and/or a decode step).",
            buckets=_FAST_BUCKETS,
            registry=r,
        )
        self.time_per_token = Histogram(
            "rnnlm_engine_time_per_token_seconds",
            "Mean time between a generation's tokens (observed when it ends).",
            buckets=_FAST_BUCKETS,
            registry=r,
        )
        self.time_to_first_token = Histogram(
            "rnnlm_engine_time_to_first_token_seconds",
            "Time from admission to a generation's first token (queue and prompt included).",
            buckets=_FAST_BUCKETS,
            registry=r,
        )
        self.tokens_fed = Counter(
            "rnnlm_engine_tokens_fed",
            "Token positions run through the LSTM, by kind (score: texts and prompts; "
            "decode: generation steps).",
            ["kind"],
            registry=r,
        )
        self.cache_hits = Counter(
            "rnnlm_engine_cache_hits",
            "Texts and prompts that started from a cached prefix state.",
            registry=r,
        )
        self.cache_misses = Counter(
            "rnnlm_engine_cache_misses",
            "Texts and prompts with no cached prefix (run from the start).",
            registry=r,
        )
        self.cache_tokens_saved = Counter(
            "rnnlm_engine_cache_tokens_saved",
            "Token positions not run because a cached prefix state covered them.",
            registry=r,
        )
        self.cache_bytes = Gauge(
            "rnnlm_engine_cache_bytes", "Memory held by the prefix-state cache.", registry=r
        )
        self.cache_entries = Gauge(
            "rnnlm_engine_cache_entries", "Prefix states in the cache.", registry=r
        )
        self.rejected = Counter(
            "rnnlm_engine_rejected",
            "Requests refused by the engine, by reason (overloaded: 429, draining: 503, "
            "timeout: 504).",
            ["reason"],
            registry=r,
        )


class Metrics:
    """The service's counters, gauges and histograms."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "rnnlm_requests",
            "HTTP requests by route, method and status.",
            ["route", "method", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "rnnlm_request_duration_seconds",
            "Time to the end of the response, by route.",
            ["route", "method", "status"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.in_flight = Gauge(
            "rnnlm_requests_in_flight", "HTTP requests being served.", registry=r
        )
        self.tokens_scored = Counter(
            "rnnlm_tokens_scored", "Tokens scored by /perplexity (num_tokens).", registry=r
        )
        self.tokens_generated = Counter(
            "rnnlm_tokens_generated", "Tokens generated (<eos> included).", registry=r
        )
        self.prompt_tokens = Counter(
            "rnnlm_prompt_tokens", "Tokens read as prompts and contexts.", registry=r
        )
        self.oov_tokens = Counter(
            "rnnlm_oov_tokens",
            "Words of requests outside the vocabulary (read as <unk>).",
            ["route"],
            registry=r,
        )
        self.ready = Gauge(
            "rnnlm_ready", "1 when the model is loaded and not draining.", registry=r
        )
        self.engine = EngineMetrics(r)

    def render(self) -> bytes:
        """The text exposition format."""
        return generate_latest(self.registry)


class MetricsMiddleware:
    """Pure ASGI: count requests and time them to the end of the response, by route template."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500
        start = time.perf_counter()

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        self.metrics.in_flight.inc()
        try:
            await self.app(scope, receive, send_status)
        finally:
            self.metrics.in_flight.dec()
            # The router stores the matched route in the scope; a template keeps labels bounded.
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            labels = (route, scope.get("method", ""), str(status))
            self.metrics.requests.labels(*labels).inc()
            self.metrics.latency.labels(*labels).observe(time.perf_counter() - start)
