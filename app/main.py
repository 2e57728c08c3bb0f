"""The FastAPI app: create_app, its lifespan (load, warm up, ready, drain) and its routers."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio.to_thread
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from app.config import Settings
from app.deps import ServiceState
from app.engine import DrainingError, Engine, OverloadedError, RequestTimeoutError
from app.errors import (
    OPENAI_PREFIX,
    BodyLimitMiddleware,
    error_response,
    install_error_handlers,
    overloaded_handler,
)
from app.metrics import Metrics, MetricsMiddleware
from app.routes import completions, generate, health, playground, score, tokenizer
from app.routes.health import service_version
from app.schema_rules import apply_limits, vocab_size_of
from model.blas import warn_if_slow_kernel
from model.weights import LoadedWeights, WeightsError, load_weights

logger = logging.getLogger(__name__)

DESCRIPTION = """\
A word-level LSTM language model (the BetterRnnlm of *Deep Learning from Scratch 2*, trained on
Penn Treebank) behind a REST API. Text is normalised like PTB before lookup (lower case,
clitics split, numbers as `N`, unknown words as `<unk>`). Generation speaks
text-generation-inference's API (`/generate`, `/generate_stream`, `POST /`); scoring follows
KenLM's conventions (natural logs, the closing `<eos>` counted). Every error answers
`{"error", "error_type", "param", "details"}`.
"""


def begin_drain(state: ServiceState) -> None:
    """Turn not ready (/health 503) and have the engine refuse new work (503)."""
    if state.phase != "draining":
        logger.info("draining: not ready; new requests get 503, in-flight ones go on")
    state.set_phase("draining")
    if state.engine is not None:
        state.engine.drain()


async def _draining_handler(request: Request, exc: Exception) -> JSONResponse:
    """New work while shutting down: 503 'unavailable', retry (elsewhere) shortly."""
    return error_response(
        503,
        "the server is shutting down (draining) and takes no new requests; retry shortly",
        "unavailable",
        details=[{"phase": "draining"}],
        headers={"Retry-After": "1"},
        path=request.url.path,
    )


async def _timeout_handler(request: Request, exc: Exception) -> JSONResponse:
    """A request past request_timeout_s: 504 'timeout'."""
    return error_response(504, str(exc), "timeout", path=request.url.path)


def create_app(settings: Settings | None = None, weights: LoadedWeights | None = None) -> FastAPI:
    """A new app; its lifespan loads the weights (unless given), warms up, then turns ready."""
    settings = settings or Settings()
    metrics = Metrics()
    state = ServiceState(settings=settings, metrics=metrics)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state.set_phase("loading")
        warn_if_slow_kernel()
        loaded = weights
        if loaded is None:
            try:
                loaded = await anyio.to_thread.run_sync(load_weights, settings.weights)
            except WeightsError as e:
                logger.error("cannot load weights: %s", e)
                raise
        engine = Engine(
            loaded,
            queue_size=settings.queue_size,
            max_batch_size=settings.max_batch_size,
            max_batch_wait_ms=settings.max_batch_wait_ms,
            max_batch_tokens=settings.max_batch_tokens,
            state_cache_mb=settings.state_cache_mb,
            request_timeout_s=settings.request_timeout_s,
            metrics=metrics.engine,
        )
        await engine.warmup()
        state.engine = engine
        state.set_phase("ready")
        logger.info(
            "ready: %s (V=%d, %d layers of %d), sha256 %s; batches of up to %d streams",
            loaded.path,
            loaded.config.vocab_size,
            loaded.config.num_layers,
            loaded.config.hidden_size,
            loaded.sha256[:12],
            settings.max_batch_size,
        )
        try:
            yield
        finally:
            # Under rnnlm-serve the drain already ran (see DrainingServer) and uvicorn waited
            # for the in-flight requests; in-process (tests) this is the whole drain.
            begin_drain(state)
            if not await engine.wait_idle(settings.shutdown_timeout_s):
                logger.warning(
                    "shutting down with %d requests still in progress after %.1f s",
                    engine.in_flight,
                    settings.shutdown_timeout_s,
                )
            await engine.aclose()

    app = FastAPI(
        title="rnnlm-service",
        version=service_version(),
        description=DESCRIPTION,
        lifespan=lifespan,
    )
    app.state.service = state
    install_error_handlers(app)
    app.add_exception_handler(OverloadedError, overloaded_handler)
    app.add_exception_handler(DrainingError, _draining_handler)
    app.add_exception_handler(RequestTimeoutError, _timeout_handler)
    app.include_router(generate.router)
    app.include_router(score.router)
    app.include_router(tokenizer.router)
    app.include_router(completions.router)
    app.include_router(health.router)
    app.include_router(playground.router)
    # The last added is outermost: metrics see every answer, the 413s included.
    app.add_middleware(BodyLimitMiddleware, limit=settings.max_body_bytes)
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    _served_document(app, settings, weights)
    return app


def _served_document(app: FastAPI, settings: Settings, weights: LoadedWeights | None) -> None:
    """The document states what this server accepts: its Settings' limits and the token-id
    range of its weights (app.schema_rules); the /v1/ routes without FastAPI's default 422,
    since they answer an invalid request with 400 in OpenAI's envelope."""
    base = app.openapi
    vocab_size = (weights.config.vocab_size if weights is not None
                  else vocab_size_of(settings.weights))

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        doc = base()
        apply_limits(doc, settings, vocab_size)
        for path, ops in doc["paths"].items():
            if path.startswith(OPENAI_PREFIX):
                for op in ops.values():
                    op.get("responses", {}).pop("422", None)
        schemas = doc.get("components", {}).get("schemas", {})
        if "HTTPValidationError" not in json.dumps(doc["paths"]):
            schemas.pop("HTTPValidationError", None)
            if "#/components/schemas/ValidationError" not in json.dumps(schemas):
                schemas.pop("ValidationError", None)
        return doc

    app.openapi = openapi  # type: ignore[method-assign]
