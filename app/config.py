"""Settings: every knob and limit of the service, read from RNNLM_* environment variables."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

# The shipped model, found relative to the package so the service works from any cwd.
DEFAULT_WEIGHTS = Path(__file__).resolve().parents[1] / "weights" / "ptb-650-awd"

LogLevel = Literal["critical", "error", "warning", "info", "debug"]


class Settings(BaseSettings):
    """Configuration of one service instance (env prefix RNNLM_, e.g. RNNLM_WEIGHTS)."""

    model_config = SettingsConfigDict(env_prefix="RNNLM_", extra="ignore", frozen=True)

    # --- what to serve and where
    weights: Path = Field(default=DEFAULT_WEIGHTS, description="Weights directory to serve.")
    host: str = Field(default="127.0.0.1", description="Address to bind.")
    port: int = Field(
        default=8000, ge=0, le=65535, description="TCP port to bind (0: any free port)."
    )
    log_level: LogLevel = Field(default="info", description="Log level of the service and uvicorn.")

    # --- request limits (a request over one gets a 4xx that names it)
    max_texts: int = Field(default=256, ge=1, description="Texts per /perplexity request.")
    max_text_chars: int = Field(
        default=20_000, ge=1, description="Characters per text, prompt or context."
    )
    max_request_tokens: int = Field(
        default=16_384, ge=1, description="Tokens per request (scored, or prompt + max_new_tokens)."
    )
    max_body_bytes: int = Field(
        default=1 << 20, ge=1, description="Request body size; 413 above it."
    )
    max_new_tokens: int = Field(default=512, ge=1, description="Upper bound of max_new_tokens.")
    default_max_new_tokens: int = Field(
        default=20, ge=1, description="max_new_tokens when not given (capped at max_new_tokens)."
    )
    max_stop_sequences: int = Field(default=4, ge=0, description="Stop sequences per request.")
    max_top_n_tokens: int = Field(default=5, ge=0, description="Upper bound of top_n_tokens.")
    max_targets: int = Field(default=100, ge=0, description="Targets per /next-word request.")
    max_top_k: int = Field(default=100, ge=1, description="Upper bound of /next-word top_k.")

    # --- timing
    request_timeout_s: float = Field(
        default=60.0,
        gt=0,
        description="A non-streaming request running longer (queue time included) gets a 504.",
    )
    drain_seconds: float = Field(
        default=10.0,
        ge=0,
        description=(
            "After SIGTERM: how long the server keeps listening while not ready (/health and new "
            "work answer 503) and in-flight requests go on; then it stops listening."
        ),
    )
    shutdown_timeout_s: float = Field(
        default=10.0,
        ge=0,
        description="After the drain: how long in-flight requests may still run before they are "
        "cancelled and the process exits.",
    )

    # --- the engine: dynamic batching, continuous batching, prefix-state cache
    max_batch_size: int = Field(
        default=32,
        ge=1,
        description="Streams per batched forward: texts scored at once, and generations running "
        "at once (1: requests are served one after another).",
    )
    max_batch_wait_ms: float = Field(
        default=2.0,
        ge=0,
        description="How long an idle engine waits for a batch to fill: for as many requests "
        "as its last batch had (a client alone never waits).",
    )
    max_batch_tokens: int = Field(
        default=1024,
        ge=1,
        description="Token positions fed per scoring forward (streams x chunk length); longer "
        "texts are fed in chunks, so running generations keep stepping in between.",
    )
    queue_size: int = Field(
        default=256,
        ge=1,
        description="Requests admitted at once (queued or running); more get a 429 'overloaded'.",
    )
    state_cache_mb: float = Field(
        default=64.0, ge=0, description="Memory for cached prefix states (0 turns the cache off)."
    )
    blas_threads: int | None = Field(
        default=None,
        ge=1,
        description=(
            "BLAS threads; numpy reads OPENBLAS_NUM_THREADS before it is imported, so set "
            "that variable: this field is only reported in /info."
        ),
    )

    def limits(self) -> dict[str, int | float]:
        """The request limits, as /info reports them."""
        names = (
            "max_texts",
            "max_text_chars",
            "max_request_tokens",
            "max_body_bytes",
            "max_new_tokens",
            "default_max_new_tokens",
            "max_stop_sequences",
            "max_top_n_tokens",
            "max_targets",
            "max_top_k",
            "request_timeout_s",
        )
        return {n: getattr(self, n) for n in names}
