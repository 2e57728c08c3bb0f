"""Prometheus metrics on a per-app registry (tests build many apps; the global one would clash)."""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from starlette.types import ASGIApp, Message, Receive, Scope, Send

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


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
