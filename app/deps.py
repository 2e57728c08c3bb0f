"""Per-app service state and the dependencies routes use to reach it (no module globals)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Literal

import anyio.to_thread
from fastapi import Depends, Request

from app.config import Settings
from app.engine import Engine
from app.errors import ApiError, validation_error
from app.metrics import Metrics
from model.normalize import Tokenized, Tokenizer

Phase = Literal["loading", "ready", "draining"]


@dataclass
class ServiceState:
    """What one app instance serves: settings, metrics, and the engine once loaded."""

    settings: Settings
    metrics: Metrics
    engine: Engine | None = None
    phase: Phase = "loading"

    def set_phase(self, phase: Phase) -> None:
        """Move to phase and mirror readiness in the metrics."""
        self.phase = phase
        self.metrics.ready.set(1 if phase == "ready" else 0)


# The dependencies are async on purpose: FastAPI runs a plain `def` dependency in its thread
# pool, a thread hop per dependency per request (bench/README.md, "Decisions and measurements").


async def get_state(request: Request) -> ServiceState:
    """The app's ServiceState."""
    state: ServiceState = request.app.state.service
    return state


async def get_settings(request: Request) -> Settings:
    """The app's Settings."""
    settings: Settings = request.app.state.service.settings
    return settings


async def get_metrics(request: Request) -> Metrics:
    """The app's Metrics."""
    metrics: Metrics = request.app.state.service.metrics
    return metrics


async def get_engine(request: Request) -> Engine:
    """The loaded engine, or 503 while the model is loading."""
    engine: Engine | None = request.app.state.service.engine
    if engine is None:
        raise ApiError(503, "unavailable", "the model is still loading; retry shortly")
    return engine


# The route parameters' types: FastAPI's Annotated dependencies, as its full-stack template.
StateDep = Annotated[ServiceState, Depends(get_state)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
MetricsDep = Annotated[Metrics, Depends(get_metrics)]
EngineDep = Annotated[Engine, Depends(get_engine)]


def check_chars(text: str, param: str, settings: Settings) -> None:
    """422 when a text is longer than max_text_chars."""
    if len(text) > settings.max_text_chars:
        raise validation_error(
            f"{param} has {len(text)} characters, more than the limit of {settings.max_text_chars}",
            param,
        )


def served_model(engine: Engine) -> str:
    """The served model's id (vLLM's "model"): its weights directory's name."""
    return engine.weights.path.name


def check_model(model: str | None, engine: Engine) -> None:
    """404 when a request names another model than the served one (null: the served one)."""
    if model not in (None, served_model(engine)):
        raise ApiError(404, "not_found", f"the model {model!r} does not exist; this server "
                       f"serves {served_model(engine)!r} (GET /v1/models)", "model")


async def tokenize_all(texts: list[str], tokenizer: Tokenizer) -> list[Tokenized]:
    """Normalise and look up texts off the event loop (a 1 MiB body takes a while)."""
    if sum(len(t) for t in texts) < 2_000:
        return [tokenizer(t) for t in texts]
    return await anyio.to_thread.run_sync(lambda: [tokenizer(t) for t in texts])
