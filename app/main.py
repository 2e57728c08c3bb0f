"""The FastAPI app (create_app) and the ``rnnlm-serve`` command (cli)."""

from __future__ import annotations

import argparse
import logging
import math
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from types import FrameType

import anyio.to_thread
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from sse_starlette.sse import AppStatus

from app.config import Settings
from app.deps import ServiceState
from app.engine import DrainingError, Engine, OverloadedError, RequestTimeoutError
from app.errors import (
    BodyLimitMiddleware,
    error_response,
    install_error_handlers,
    overloaded_handler,
)
from app.metrics import Metrics, MetricsMiddleware
from app.routes import generate, health, score
from app.routes.health import service_version
from model.blas import warn_if_slow_kernel
from model.weights import LoadedWeights, WeightsError, load_weights

logger = logging.getLogger("app")

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
    )


async def _timeout_handler(request: Request, exc: Exception) -> JSONResponse:
    """A request past request_timeout_s: 504 'timeout'."""
    return error_response(504, str(exc), "timeout")


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
    app.include_router(health.router)
    # The last added is outermost: metrics see every answer, the 413s included.
    app.add_middleware(BodyLimitMiddleware, limit=settings.max_body_bytes)
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    return app


def _parser() -> argparse.ArgumentParser:
    """rnnlm-serve's arguments; each overrides its RNNLM_* variable."""
    p = argparse.ArgumentParser(
        prog="rnnlm-serve",
        description="Serve the LSTM language model over HTTP. Every setting can also be set "
        "with an RNNLM_* environment variable (RNNLM_WEIGHTS, RNNLM_PORT, RNNLM_MAX_TEXTS, ...).",
    )
    p.add_argument("--host", help="address to bind (default 127.0.0.1, RNNLM_HOST)")
    p.add_argument("--port", type=int, help="port (default 8000, RNNLM_PORT)")
    p.add_argument("--weights", help="weights directory (default weights/ptb-650, RNNLM_WEIGHTS)")
    p.add_argument(
        "--log-level",
        choices=["critical", "error", "warning", "info", "debug"],
        help="log level (default info, RNNLM_LOG_LEVEL)",
    )
    return p


def cli(argv: Sequence[str] | None = None) -> int:
    """The rnnlm-serve command: load the weights, then run uvicorn on create_app's app."""
    parser = _parser()
    args = parser.parse_args(argv)
    overrides = {
        k: v
        for k, v in (
            ("host", args.host),
            ("port", args.port),
            ("weights", args.weights),
            ("log_level", args.log_level),
        )
        if v is not None
    }
    try:
        settings = Settings(**overrides)
    except ValidationError as e:
        parser.error(str(e))
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # Loading before uvicorn starts turns a bad weights file into one log line and exit 2
    # (a failing lifespan would print a traceback through uvicorn).
    try:
        weights = load_weights(settings.weights)
    except WeightsError as e:
        logger.error("cannot load weights: %s", e)
        return 2
    app = create_app(settings, weights)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        log_config=None,
        timeout_graceful_shutdown=math.ceil(settings.shutdown_timeout_s),
    )
    state: ServiceState = app.state.service
    # sse-starlette ends every event stream once uvicorn stops listening; the drain lets
    # in-flight streams finish instead (bounded by max_new_tokens and shutdown_timeout_s).
    if hasattr(AppStatus, "disable_automatic_graceful_drain"):
        AppStatus.disable_automatic_graceful_drain()
    DrainingServer(config, lambda: begin_drain(state), settings.drain_seconds).run()
    return 0


class DrainingServer(uvicorn.Server):
    """uvicorn's server with a drain: on SIGTERM it keeps listening for drain_seconds, not
    ready and answering new work 503 while in-flight requests go on, then stops listening,
    lets in-flight requests finish (timeout_graceful_shutdown) and returns, so the process
    exits 0. SIGINT (Ctrl-C), or a second signal, skips the rest of the drain; one more
    forces the exit."""

    def __init__(
        self, config: uvicorn.Config, on_drain: Callable[[], None], drain_seconds: float
    ) -> None:
        super().__init__(config)
        self.on_drain = on_drain
        self.drain_seconds = drain_seconds
        self._drain_asked = False
        self._drain_until: float | None = None

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        """The signal handler: only flags here (locks are unsafe in a handler); on_tick acts.

        uvicorn's own handler records the signal and re-raises it after shutdown (exit
        -15); this one does not, so a drained shutdown exits 0.
        """
        if self.should_exit:
            self.force_exit = True
        elif sig == signal.SIGTERM and not self._drain_asked and self.drain_seconds > 0:
            self._drain_asked = True
        else:
            self.should_exit = True

    async def on_tick(self, counter: int) -> bool:
        """uvicorn's 0.1 s tick: start the drain once asked, end it after drain_seconds."""
        if self._drain_asked and self._drain_until is None:
            self._drain_until = time.monotonic() + self.drain_seconds
            self.on_drain()
            logger.info("SIGTERM: draining for %.1f s before closing the listener",
                        self.drain_seconds)
        if self._drain_until is not None and time.monotonic() >= self._drain_until:
            self.should_exit = True
        return await super().on_tick(counter)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        """Turn not ready before closing (a SIGINT skips the drain, not the 503s)."""
        self.on_drain()
        await super().shutdown(sockets)
