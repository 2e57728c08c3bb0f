"""Python clients of the service (httpx): ``Client`` (sync) and ``AsyncClient`` (async).

Each method sends one request and returns the decoded JSON answer; a 4xx or 5xx answer (or
an error event in a stream) raises ``RnnlmError`` with the envelope's fields::

    with Client("http://127.0.0.1:8000") as c:
        c.generate("the stock market", max_new_tokens=10, seed=1, details=True)
        for event in c.generate_stream("the stock market", max_new_tokens=10):
            print(event["token"]["text"], end="")
        c.perplexity(["the stock market fell", "prices rose"])
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator, Sequence
from types import TracebackType
from typing import Any, Literal

import httpx

__all__ = ["AsyncClient", "Client", "RnnlmError"]

DEFAULT_URL = "http://127.0.0.1:8000"


class RnnlmError(Exception):
    """An error answer: HTTP status and the envelope's error_type, message, param and details."""

    def __init__(
        self,
        status: int,
        error_type: str,
        message: str,
        details: list[Any] | None = None,
        param: str | None = None,
    ) -> None:
        super().__init__(f"{status} {error_type}: {message}")
        self.status = status
        self.error_type = error_type
        self.message = message
        self.details = details or []
        self.param = param


def _error(response: httpx.Response) -> RnnlmError:
    """RnnlmError from an error response, with or without the envelope."""
    try:
        body = json.loads(response.content)
    except ValueError:
        body = None
    if isinstance(body, dict) and "error" in body:
        return RnnlmError(
            response.status_code,
            str(body.get("error_type") or "unknown"),
            str(body["error"]),
            body.get("details") or [],
            body.get("param"),
        )
    return RnnlmError(
        response.status_code, "unknown", response.text[:500] or response.reason_phrase
    )


def _event(line: str, status: int) -> dict[str, Any] | None:
    """The JSON of one server-sent-event data line (None for other lines); raises error events."""
    if not line.startswith("data:"):
        return None
    payload: dict[str, Any] = json.loads(line[5:])
    if payload.get("error") is not None:
        raise RnnlmError(
            status,
            str(payload.get("error_type") or "unknown"),
            str(payload["error"]),
            payload.get("details") or [],
            payload.get("param"),
        )
    return payload


def _generate_body(inputs: str, parameters: dict[str, Any], stream: bool) -> dict[str, Any]:
    """A TGI request body."""
    return {"inputs": inputs, "parameters": parameters, "stream": stream}


def _perplexity_body(
    texts: str | Sequence[str], eos: bool, return_tokens: bool, oov: str
) -> dict[str, Any]:
    """{"text"} for a str, {"texts"} for a sequence."""
    key: dict[str, Any] = {"text": texts} if isinstance(texts, str) else {"texts": list(texts)}
    return {**key, "eos": eos, "return_tokens": return_tokens, "oov": oov}


def _next_word_body(context: str, top_k: int, targets: Sequence[str] | None) -> dict[str, Any]:
    """A /next-word body."""
    body: dict[str, Any] = {"context": context, "top_k": top_k}
    if targets is not None:
        body["targets"] = list(targets)
    return body


class Client:
    """Synchronous client. ``http`` may be any httpx.Client (e.g. FastAPI's TestClient)."""

    def __init__(
        self,
        base_url: str = DEFAULT_URL,
        timeout: float = 60.0,
        http: httpx.Client | None = None,
    ) -> None:
        self._own = http is None
        self.http = http or httpx.Client(base_url=base_url, timeout=timeout)

    def close(self) -> None:
        """Close the connection pool (unless it was passed in)."""
        if self._own:
            self.http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _request(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        """Send; decode JSON; raise RnnlmError on 4xx/5xx."""
        response = self.http.request(method, path, json=body)
        if response.status_code >= 400:
            raise _error(response)
        return response.json()

    def generate(self, inputs: str, **parameters: Any) -> dict[str, Any]:
        """POST /generate with TGI's parameters (max_new_tokens=, seed=, details=, ...)."""
        result: dict[str, Any] = self._request(
            "POST", "/generate", _generate_body(inputs, parameters, False)
        )
        return result

    def generate_stream(self, inputs: str, **parameters: Any) -> Iterator[dict[str, Any]]:
        """POST /generate_stream: yield one event per token (the last has details)."""
        body = _generate_body(inputs, parameters, True)
        with self.http.stream("POST", "/generate_stream", json=body) as response:
            if response.status_code >= 400:
                response.read()
                raise _error(response)
            for line in response.iter_lines():
                event = _event(line, response.status_code)
                if event is not None:
                    yield event

    def perplexity(
        self,
        texts: str | Sequence[str],
        *,
        eos: bool = True,
        return_tokens: bool = False,
        oov: Literal["unk", "reject"] = "unk",
    ) -> dict[str, Any]:
        """POST /perplexity for one text (a str) or a batch (a sequence of str)."""
        result: dict[str, Any] = self._request(
            "POST", "/perplexity", _perplexity_body(texts, eos, return_tokens, oov)
        )
        return result

    def next_word(
        self, context: str, top_k: int = 10, targets: Sequence[str] | None = None
    ) -> dict[str, Any]:
        """POST /next-word."""
        result: dict[str, Any] = self._request(
            "POST", "/next-word", _next_word_body(context, top_k, targets)
        )
        return result

    def tokenize(self, text: str, add_special_tokens: bool = False) -> dict[str, Any]:
        """POST /tokenize: ids in "tokens", their strings in "token_strs"."""
        result: dict[str, Any] = self._request(
            "POST", "/tokenize", {"prompt": text, "add_special_tokens": add_special_tokens}
        )
        return result

    def detokenize(self, ids: list[int]) -> str:
        """POST /detokenize: the ids as text."""
        result: dict[str, Any] = self._request("POST", "/detokenize", {"tokens": ids})
        return str(result["prompt"])

    def health(self) -> dict[str, Any]:
        """GET /health (readiness); raises RnnlmError 503 while loading or draining."""
        result: dict[str, Any] = self._request("GET", "/health")
        return result

    def info(self) -> dict[str, Any]:
        """GET /info."""
        result: dict[str, Any] = self._request("GET", "/info")
        return result


class AsyncClient:
    """Asynchronous client. ``http`` may be any httpx.AsyncClient (e.g. on an ASGITransport)."""

    def __init__(
        self,
        base_url: str = DEFAULT_URL,
        timeout: float = 60.0,
        http: httpx.AsyncClient | None = None,
    ) -> None:
        self._own = http is None
        self.http = http or httpx.AsyncClient(base_url=base_url, timeout=timeout)

    async def aclose(self) -> None:
        """Close the connection pool (unless it was passed in)."""
        if self._own:
            await self.http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def _request(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        """Send; decode JSON; raise RnnlmError on 4xx/5xx."""
        response = await self.http.request(method, path, json=body)
        if response.status_code >= 400:
            raise _error(response)
        return response.json()

    async def generate(self, inputs: str, **parameters: Any) -> dict[str, Any]:
        """POST /generate with TGI's parameters."""
        result: dict[str, Any] = await self._request(
            "POST", "/generate", _generate_body(inputs, parameters, False)
        )
        return result

    async def generate_stream(
        self, inputs: str, **parameters: Any
    ) -> AsyncIterator[dict[str, Any]]:
        """POST /generate_stream: yield one event per token (the last has details)."""
        body = _generate_body(inputs, parameters, True)
        async with self.http.stream("POST", "/generate_stream", json=body) as response:
            if response.status_code >= 400:
                await response.aread()
                raise _error(response)
            async for line in response.aiter_lines():
                event = _event(line, response.status_code)
                if event is not None:
                    yield event

    async def perplexity(
        self,
        texts: str | Sequence[str],
        *,
        eos: bool = True,
        return_tokens: bool = False,
        oov: Literal["unk", "reject"] = "unk",
    ) -> dict[str, Any]:
        """POST /perplexity for one text (a str) or a batch (a sequence of str)."""
        result: dict[str, Any] = await self._request(
            "POST", "/perplexity", _perplexity_body(texts, eos, return_tokens, oov)
        )
        return result

    async def next_word(
        self, context: str, top_k: int = 10, targets: Sequence[str] | None = None
    ) -> dict[str, Any]:
        """POST /next-word."""
        result: dict[str, Any] = await self._request(
            "POST", "/next-word", _next_word_body(context, top_k, targets)
        )
        return result

    async def tokenize(self, text: str, add_special_tokens: bool = False) -> dict[str, Any]:
        """POST /tokenize: ids in "tokens", their strings in "token_strs"."""
        result: dict[str, Any] = await self._request(
            "POST", "/tokenize", {"prompt": text, "add_special_tokens": add_special_tokens}
        )
        return result

    async def detokenize(self, ids: list[int]) -> str:
        """POST /detokenize: the ids as text."""
        result: dict[str, Any] = await self._request("POST", "/detokenize", {"tokens": ids})
        return str(result["prompt"])

    async def health(self) -> dict[str, Any]:
        """GET /health (readiness)."""
        result: dict[str, Any] = await self._request("GET", "/health")
        return result

    async def info(self) -> dict[str, Any]:
        """GET /info."""
        result: dict[str, Any] = await self._request("GET", "/info")
        return result
