"""One error envelope for every route (text-generation-inference's) and the handlers that make it.

Every error answer is ``{"error": message, "error_type": kind, "param": field or null,
"details": [...]}``. A 500 says only that something went wrong; the traceback goes to the
server log, never to the client.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import anyio
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.schemas import ErrorResponse

logger = logging.getLogger(__name__)

# error_type of an HTTP status that no ApiError chose itself.
_STATUS_TYPES: dict[int, str] = {
    400: "validation",
    404: "not_found",
    405: "method_not_allowed",
    408: "timeout",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "validation",
    429: "overloaded",
    500: "internal",
    503: "unavailable",
    504: "timeout",
}


# The error answers routes document in OpenAPI.
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse, "description": what}
    for code, what in (
        (400, "The body could not be parsed (not UTF-8, nested too deep, a huge integer)."),
        (413, "Body larger than max_body_bytes."),
        (422, "Invalid request (the message names the field)."),
        (429, "Too many requests in progress."),
        (503, "The model is still loading."),
        (504, "The request took longer than request_timeout_s."),
    )
}


class ApiError(Exception):
    """A request that cannot be answered, with the status and envelope fields to answer it."""

    def __init__(
        self,
        status: int,
        error_type: str,
        message: str,
        param: str | None = None,
        details: Sequence[Any] = (),
    ) -> None:
        super().__init__(message)
        self.status = status
        self.error_type = error_type
        self.message = message
        self.param = param
        self.details = list(details)


def validation_error(
    message: str, param: str | None = None, details: Sequence[Any] = ()
) -> ApiError:
    """A 422 for a request that is well-formed JSON but asks for something invalid."""
    return ApiError(422, "validation", message, param, details)


class PayloadTooLarge(StarletteHTTPException):
    """Raised while reading a body past the limit; an HTTPException so FastAPI passes it on."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body is larger than the limit of {limit} bytes")
        self.limit = limit


def envelope(
    message: str, error_type: str, param: str | None = None, details: Sequence[Any] = ()
) -> dict[str, Any]:
    """The error body every route answers with."""
    return {"error": message, "error_type": error_type, "param": param, "details": list(details)}


# OpenAI's error types, for the answers under /v1/ (its clients raise by status and type).
_OPENAI_TYPES: dict[str, str] = {
    "validation": "invalid_request_error",
    "payload_too_large": "invalid_request_error",
    "unsupported_media_type": "invalid_request_error",
    "not_found": "invalid_request_error",
    "method_not_allowed": "invalid_request_error",
    "overloaded": "rate_limit_error",
    "rate_limit_exceeded": "tokens",  # OpenAI's answer to a request over its token budget
    "unavailable": "service_unavailable",
    "timeout": "timeout",
    "internal": "internal_error",
}
OPENAI_PREFIX = "/v1/"


def openai_envelope(message: str, error_type: str, param: str | None = None) -> dict[str, Any]:
    """OpenAI's error body: {"error": {"message", "type", "param", "code"}}."""
    return {"error": {"message": message, "type": _OPENAI_TYPES.get(error_type, error_type),
                      "param": param, "code": error_type}}


def error_response(
    status: int,
    message: str,
    error_type: str | None = None,
    param: str | None = None,
    details: Sequence[Any] = (),
    headers: Mapping[str, str] | None = None,
    path: str = "",
) -> JSONResponse:
    """A JSONResponse holding the envelope; under /v1/ OpenAI's, with 400 for a 422 (as
    vLLM answers an invalid request)."""
    kind = error_type or _STATUS_TYPES.get(status, "client_error" if status < 500 else "internal")
    if path.startswith(OPENAI_PREFIX):
        return JSONResponse(openai_envelope(message, kind, param),
                            status_code=400 if status == 422 else status,
                            headers=dict(headers or {}))
    return JSONResponse(
        envelope(message, kind, param, details), status_code=status, headers=dict(headers or {})
    )


# A 1 MiB body can hold 200,000 invalid values or a 1 MB field name: the answer describes the
# first errors only and shortens names, so it never grows past the request (it did, 20-fold).
MAX_DETAILS = 20
MAX_NAME_CHARS = 100


def _loc_to_param(loc: Sequence[Any]) -> str:
    """('body', 'parameters', 'stop', 2) -> 'parameters.stop[2]'; long names shortened."""
    parts = list(loc)
    if parts and parts[0] in ("body", "query", "path", "header"):
        parts = parts[1:]
    out = ""
    for p in parts:
        if isinstance(p, int):
            out += f"[{p}]"
        else:
            name = str(p)
            if len(name) > MAX_NAME_CHARS:
                name = name[:MAX_NAME_CHARS] + "..."
            out += ("." if out else "") + name
    return out


def _plain(value: Any) -> Any:
    """A JSON-safe copy of an error context value (pydantic puts exceptions in ctx)."""
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    return str(value)


def describe_validation_errors(errors: Sequence[Mapping[str, Any]]) -> tuple[str, str | None, list]:
    """Message, param and details for pydantic's error list; the message names each field."""
    details: list[dict[str, Any]] = []
    phrases: list[str] = []
    first_param: str | None = None
    for err in errors[:MAX_DETAILS]:
        loc = tuple(err.get("loc", ()))
        kind = str(err.get("type", ""))
        param = _loc_to_param(loc)
        msg = str(err.get("msg", "invalid value"))
        if kind == "json_invalid":
            ctx = err.get("ctx") or {}
            position = loc[1] if len(loc) > 1 else "?"
            msg = f"the body is not valid JSON ({ctx.get('error', 'decode error')} at {position})"
            param = ""
        elif kind == "extra_forbidden":
            msg = "unknown field"
        elif kind == "missing":
            msg = "field required"
        elif kind in ("model_attributes_type", "dict_type") and not param:
            msg = "the body must be a JSON object (send it with Content-Type: application/json)"
        if first_param is None and param:
            first_param = param
        phrases.append(f"{param}: {msg}" if param else msg)
        detail: dict[str, Any] = {"param": param or None, "message": msg, "type": kind}
        ctx = err.get("ctx")
        if ctx and kind != "json_invalid":
            detail["ctx"] = {k: _plain(v) for k, v in ctx.items()}
        details.append(detail)
    message = "invalid request: " + "; ".join(phrases[:5])
    if len(errors) > 5:
        message += f"; and {len(errors) - 5} more"
    if len(errors) > MAX_DETAILS:
        details.append(
            {"param": None, "message": f"and {len(errors) - MAX_DETAILS} more", "type": "more"}
        )
    return message, first_param, details


async def _api_error(request: Request, exc: Exception) -> JSONResponse:
    """ApiError -> its envelope."""
    assert isinstance(exc, ApiError)
    # a retry helps when the server is busy, not when the request is too large for it
    busy = exc.status in (503, 429) and exc.error_type != "rate_limit_exceeded"
    headers = {"Retry-After": "1"} if busy else None
    return error_response(
        exc.status, exc.message, exc.error_type, exc.param, exc.details, headers=headers,
        path=request.url.path,
    )


async def _validation(request: Request, exc: Exception) -> JSONResponse:
    """Pydantic request validation -> 422 naming the fields and why."""
    assert isinstance(exc, RequestValidationError)
    message, param, details = describe_validation_errors(exc.errors())
    return error_response(422, message, "validation", param, details, path=request.url.path)


async def _http(request: Request, exc: Exception) -> JSONResponse:
    """HTTPException (404, 405, 413, FastAPI's 400 on an unparsable body) -> envelope."""
    assert isinstance(exc, StarletteHTTPException)
    status = exc.status_code
    message = str(exc.detail)
    path = request.url.path
    if len(path) > MAX_NAME_CHARS:  # a 100 kB path is not echoed whole
        path = path[:MAX_NAME_CHARS] + "..."
    if status == 404:
        message = f"no route {path}; see /docs for the API"
    elif status == 405:
        message = f"method {request.method} is not allowed on {path}"
        headers = {"Allow": ", ".join(_allowed_methods(request))}
        return error_response(status, message, headers=headers, path=request.url.path)
    elif status == 400 and message == "There was an error parsing the body":
        # FastAPI's json.loads failed on something other than syntax: bad UTF-8, nesting past
        # Python's recursion limit, or an integer of more than 4300 digits
        message = (
            "the body could not be parsed: it must be UTF-8 encoded JSON, nested less than "
            "1000 levels deep, with integers of at most 4300 digits"
        )
    return error_response(status, message, headers=getattr(exc, "headers", None),
                          path=request.url.path)


_METHODS = ("DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT")


def _allowed_methods(request: Request) -> list[str]:
    """Every method some route on the request's path answers: Starlette's 405 names only the
    first route's, and GET / and POST / are two routes."""
    return [m for m in _METHODS if any(
        route.matches({**request.scope, "method": m})[0] == Match.FULL
        for route in request.app.routes)]


async def overloaded_handler(request: Request, exc: Exception) -> JSONResponse:
    """The engine has no room for the request: 429 'overloaded', as TGI answers."""
    return error_response(
        429,
        f"the server is overloaded: {exc}; retry shortly",
        "overloaded",
        headers={"Retry-After": "1"},
        path=request.url.path,
    )


async def _internal(request: Request, exc: Exception) -> JSONResponse:
    """Anything unexpected -> 500 without a trace; the trace goes to the log."""
    logger.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return error_response(500, "internal server error", "internal", path=request.url.path)


def install_error_handlers(app: FastAPI) -> None:
    """Register the handlers that answer every error with the envelope."""
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(RequestValidationError, _validation)
    app.add_exception_handler(StarletteHTTPException, _http)
    app.add_exception_handler(Exception, _internal)


# Bounds on the body read and dropped before a 413 (see BodyLimitMiddleware._reject).
DRAIN_MAX_BYTES = 16 * 1024 * 1024
DRAIN_MAX_SECONDS = 2.0


async def _drain_body(receive: Receive) -> None:
    """Receive and drop body messages until the body ends, or past the drain bounds."""
    dropped = 0
    with anyio.move_on_after(DRAIN_MAX_SECONDS):
        while dropped <= DRAIN_MAX_BYTES:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away
            dropped += len(message.get("body", b""))
            if not message.get("more_body", False):
                return


class BodyLimitMiddleware:
    """Pure ASGI: refuse a body over ``limit`` bytes (413), by Content-Length or as it streams."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = -1
                if declared > self.limit:
                    await self._reject(scope, receive, send, declared)
                    return
        received = 0
        started = False

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    raise PayloadTooLarge(self.limit)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except PayloadTooLarge:
            # Raised outside FastAPI's handlers (a middleware read the body): answer here.
            if started:
                raise
            await self._reject(scope, receive, send, None)

    async def _reject(
        self, scope: Scope, receive: Receive, send: Send, declared: int | None
    ) -> None:
        """Read and drop the rest of the body (within bounds), then answer 413 and close."""
        # Closing a connection with unread data resets it, and a client still sending may
        # then lose the 413 (nginx reads on for the same reason: its lingering close). A
        # client that sent "Expect: 100-continue" has sent nothing yet: it gets the 413 now.
        expects = any(
            name == b"expect" and value.lower() == b"100-continue"
            for name, value in scope.get("headers", ())
        )
        if not expects and (declared is None or declared <= DRAIN_MAX_BYTES):
            await _drain_body(receive)
        response = error_response(
            413,
            f"request body is larger than the limit of {self.limit} bytes",
            "payload_too_large",
            headers={"Connection": "close"},
            path=scope.get("path", ""),
        )
        await response(scope, receive, send)
