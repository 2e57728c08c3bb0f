"""The FastAPI app (create_app) and the ``rnnlm-serve`` command (cli)."""

from __future__ import annotations

import argparse
import logging
import math
import sys
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from types import FrameType

import anyio.to_thread
from fastapi import FastAPI
from pydantic import ValidationError

from app.config import Settings
from app.deps import ServiceState
from app.engine import Engine, OverloadedError
from app.errors import BodyLimitMiddleware, install_error_handlers, overloaded_handler
from app.metrics import Metrics, MetricsMiddleware
from app.routes import generate, health, score
from app.routes.health import service_version
from model.checkpoint import LoadedWeights, WeightsError, load_weights

logger = logging.getLogger("app")

DESCRIPTION = """\
A word-level LSTM language model (the BetterRnnlm of *Deep Learning from Scratch 2*, trained on
Penn Treebank) behind a REST API. Text is normalised like PTB before lookup (lower case,
clitics split, numbers as `N`, unknown words as `<unk>`). Generation speaks
text-generation-inference's API (`/generate`, `/generate_stream`, `POST /`); scoring follows
KenLM's conventions (natural logs, the closing `<eos>` counted). Every error answers
`{"error", "error_type", "param", "details"}`.
"""


def create_app(settings: Settings | None = None, weights: LoadedWeights | None = None) -> FastAPI:
    """A new app; its lifespan loads the weights (unless given), warms up, then turns ready."""
    settings = settings or Settings()
    metrics = Metrics()
    state = ServiceState(settings=settings, metrics=metrics)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state.set_phase("loading")
        loaded = weights
        if loaded is None:
            try:
                loaded = await anyio.to_thread.run_sync(load_weights, settings.weights)
            except WeightsError as e:
                logger.error("cannot load weights: %s", e)
                raise
        engine = Engine(loaded, queue_size=settings.queue_size)
        await engine.warmup()
        state.engine = engine
        state.set_phase("ready")
        logger.info(
            "ready: %s (V=%d, %d layers of %d), sha256 %s",
            loaded.path,
            loaded.config.vocab_size,
            loaded.config.num_layers,
            loaded.config.hidden_size,
            loaded.sha256[:12],
        )
        try:
            yield
        finally:
            state.set_phase("draining")
            if not await engine.wait_idle(settings.drain_seconds):
                logger.warning(
                    "shutting down with %d requests still in progress after %.1f s",
                    engine.in_flight,
                    settings.drain_seconds,
                )

    app = FastAPI(
        title="rnnlm-service",
        version=service_version(),
        description=DESCRIPTION,
        lifespan=lifespan,
    )
    app.state.service = state
    install_error_handlers(app)
    app.add_exception_handler(OverloadedError, overloaded_handler)
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
    p.add_argument("--weights", help="weights directory (default weights/ptb-small, RNNLM_WEIGHTS)")
    p.add_argument(
        "--log-level",
        choices=["critical", "error", "warning", "info", "debug"],
        help="log level (default info, RNNLM_LOG_LEVEL)",
    )
    return p


def cli(argv: Sequence[str] | None = None) -> int:
    """The rnnlm-serve command: load the weights, then run uvicorn on create_app's app."""
    import uvicorn

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
        timeout_graceful_shutdown=math.ceil(settings.drain_seconds),
    )
    state: ServiceState = app.state.service

    class Server(uvicorn.Server):
        """uvicorn's server, turning not-ready as soon as a shutdown signal arrives."""

        def handle_exit(self, sig: int, frame: FrameType | None) -> None:
            state.set_phase("draining")
            super().handle_exit(sig, frame)

    Server(config).run()
    return 0
