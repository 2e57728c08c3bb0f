"""The engine's errors: each is mapped to one HTTP status by app.main."""

from __future__ import annotations


class OverloadedError(Exception):
    """More requests are admitted than the queue holds (answered 429)."""


class DrainingError(Exception):
    """The server is shutting down and takes no new work (answered 503)."""


class RequestTimeoutError(TimeoutError):
    """A request took longer than request_timeout_s, its queue time included (answered 504)."""


class EngineClosedError(RuntimeError):
    """The engine stopped while the request was queued or running."""

