"""uvicorn with a drain: on SIGTERM the server stays up, not ready, while in-flight work ends."""

from __future__ import annotations

import logging
import math
import signal
import socket
import time
from collections.abc import Callable
from types import FrameType

import uvicorn
from fastapi import FastAPI
from sse_starlette.sse import AppStatus

from app.config import Settings
from app.deps import ServiceState
from app.main import begin_drain

logger = logging.getLogger(__name__)

# The request line and headers h11 may buffer before they are complete. h11's own default,
# 16 KiB, made a long URL a race: read in one piece it parsed (a 404), read in two it was
# refused mid-read with a 400 and a close over unread bytes, a reset that could lose even
# that answer. 64 KiB holds any request head this API needs (nginx in front refuses a
# request line over 8 KiB with its own 414).
MAX_REQUEST_HEAD_BYTES = 64 * 1024


def run(app: FastAPI, settings: Settings) -> None:
    """Serve app until SIGTERM (drained) or SIGINT; returns when the server has stopped."""
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        log_config=None,
        timeout_graceful_shutdown=math.ceil(settings.shutdown_timeout_s),
        h11_max_incomplete_event_size=MAX_REQUEST_HEAD_BYTES,
    )
    state: ServiceState = app.state.service
    # sse-starlette ends every event stream once uvicorn stops listening; the drain lets
    # in-flight streams finish instead (bounded by max_new_tokens and shutdown_timeout_s).
    if hasattr(AppStatus, "disable_automatic_graceful_drain"):
        AppStatus.disable_automatic_graceful_drain()
    DrainingServer(config, lambda: begin_drain(state), settings.drain_seconds).run()


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
