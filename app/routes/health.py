"""GET /health/live, /health/ready, /health, /info and /metrics."""

from __future__ import annotations

import os
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST

from app.deps import EngineDep, ServiceState, StateDep
from app.errors import ApiError
from app.schemas import ErrorResponse, HealthResponse, InfoResponse
from model.blas import blas_info

router = APIRouter(tags=["health"])

NOT_READY: dict[int | str, dict[str, Any]] = {
    503: {"model": ErrorResponse, "description": "Loading or draining (the message says which)."}
}


def service_version() -> str:
    """The installed package version."""
    try:
        return version("rnnlm-service")
    except PackageNotFoundError:  # running from a tree that was never installed
        return "0.0.0+unknown"


@router.get("/health/live", response_model=HealthResponse, summary="Liveness: the process runs")
async def live() -> HealthResponse:
    """Always 200 while the process serves HTTP."""
    return HealthResponse(status="alive")


def _ready(state: ServiceState) -> HealthResponse:
    """200 when ready, else 503 naming the phase."""
    if state.phase == "loading":
        raise ApiError(
            503, "unavailable", "not ready: the model is loading", details=[{"phase": "loading"}]
        )
    if state.phase == "draining":
        raise ApiError(
            503,
            "unavailable",
            "not ready: the server is shutting down (draining)",
            details=[{"phase": "draining"}],
        )
    return HealthResponse(status="ready")


@router.get(
    "/health/ready",
    response_model=HealthResponse,
    responses=NOT_READY,
    summary="Readiness: model loaded and warmed up, not draining",
)
async def ready(state: StateDep) -> HealthResponse:
    """200 when requests can be served; 503 with the reason otherwise."""
    return _ready(state)


@router.get(
    "/health", response_model=HealthResponse, responses=NOT_READY, summary="Same as /health/ready"
)
async def health(state: StateDep) -> HealthResponse:
    """Same as /health/ready."""
    return _ready(state)


@router.get("/info", response_model=InfoResponse, responses=NOT_READY, summary="Model and limits")
async def info(
    state: StateDep, engine: EngineDep
) -> InfoResponse:
    """Architecture, vocabulary size, weights checksum, training metrics, limits, version."""
    w = engine.weights
    cfg = w.config
    settings = state.settings
    meta = w.meta
    return InfoResponse(
        version=service_version(),
        model={
            "architecture": "lstm-lm",
            "description": "BetterRnnlm (Deep Learning from Scratch 2, 6.5): embedding, "
            f"{cfg.num_layers} LSTM layer(s), {'tied' if cfg.tied else 'untied'} softmax",
            **cfg.to_dict(),
            "eos": w.vocab.id_to_word[w.vocab.eos_id],
            "unk": w.vocab.id_to_word[w.vocab.unk_id],
            # how the service turns text into this model's tokens (config.json, format 2)
            "normalizer": w.normalizer.to_dict(),
        },
        weights={
            "name": w.path.name,
            "sha256": w.sha256,
            "dtype": meta.get("dtype"),
            "format": meta.get("format"),
            "format_version": meta.get("format_version"),
            "files_sha256": meta.get("sha256", {}),
        },
        training=dict(meta.get("training") or {}),
        metrics=dict(meta.get("metrics") or {}),
        limits=settings.limits(),
        engine={
            **engine.stats(),
            "state_cache_mb": settings.state_cache_mb,
            "request_timeout_s": settings.request_timeout_s,
            "drain_seconds": settings.drain_seconds,
            "blas_threads": settings.blas_threads,
            "OPENBLAS_NUM_THREADS": os.environ.get("OPENBLAS_NUM_THREADS"),
            "phase": state.phase,
        },
        blas=blas_info(),
    )


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE_LATEST: {}}, "description": "Prometheus text"}},
    summary="Prometheus metrics",
)
async def metrics(state: StateDep) -> Response:
    """Requests and latency by route and status; tokens; the engine's queue, batches, cache."""
    return Response(content=state.metrics.render(), media_type=CONTENT_TYPE_LATEST)
