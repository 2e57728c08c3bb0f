"""Every limit and malformed body gets a clear 4xx in the one envelope; a 500 leaks nothing."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from fastapi.testclient import TestClient

from app.config import Settings
from app.errors import describe_validation_errors
from app.main import create_app
from tests.app.conftest import asgi_client

MakeClient = Callable[..., AbstractContextManager[TestClient]]
ENVELOPE = {"error", "error_type", "param", "details"}


def check_envelope(
    r: httpx.Response,
    status: int,
    error_type: str = "validation",
    param: str | None = None,
    says: str | None = None,
) -> dict:
    """The answer has the status, the envelope's keys and the expected type, param and words."""
    assert r.status_code == status, r.text
    body: dict = r.json()
    assert set(body) == ENVELOPE, body
    assert body["error_type"] == error_type, body
    assert isinstance(body["error"], str) and body["error"]
    if param is not None:
        assert body["param"] == param, body
    if says is not None:
        assert says.lower() in body["error"].lower(), body
    assert "Traceback" not in r.text
    return body


G = "/generate"
P = "/perplexity"
N = "/next-word"


def gp(**params: Any) -> dict:
    return {"inputs": "the market", "parameters": params}


# (route, json body, expected param, words the message must hold)
INVALID: list[tuple[str, Any, str | None, str]] = [
    # wrong types and missing or unknown fields
    (G, {"inputs": 5}, "inputs", "valid string"),
    (G, {"inputs": None}, "inputs", "valid string"),
    (G, {}, "inputs", "field required"),
    (G, {"inputs": "a", "foo": 1}, "foo", "unknown field"),
    (G, gp(bar=1), "parameters.bar", "unknown field"),
    (G, gp(max_new_tokens="ten"), "parameters.max_new_tokens", "integer"),
    (G, gp(max_new_tokens=1.5), "parameters.max_new_tokens", "integer"),
    (G, gp(do_sample="yes"), "parameters.do_sample", "boolean"),
    (G, {"inputs": "a", "parameters": [1]}, "parameters", ""),
    (G, {"inputs": "a", "stream": "no"}, "stream", "boolean"),
    (P, {"texts": "abc"}, "texts", "list"),
    (P, {"texts": ["a", 3]}, "texts[1]", "string"),
    (P, {"text": "a", "oov": "drop"}, "oov", "'unk' or 'reject'"),
    (N, {"context": "a", "top_k": "5"}, "top_k", "integer"),
    (N, {"context": "a", "targets": "market"}, "targets", "list"),
    ("/tokenize", {"text": ["a"]}, "text", "string"),
    ("/tokenize", {"text": "a", "x": 1}, "x", "unknown field"),
    # TGI parameter ranges
    (G, gp(max_new_tokens=0), "parameters.max_new_tokens", "greater than or equal to 1"),
    (G, gp(max_new_tokens=513), "parameters.max_new_tokens", "limit of 512"),
    (G, gp(temperature=0), "parameters.temperature", "greater than 0"),
    (G, gp(temperature=-1.0), "parameters.temperature", "greater than 0"),
    (G, gp(top_k=0), "parameters.top_k", "greater than or equal to 1"),
    (G, gp(top_p=0), "parameters.top_p", "greater than 0"),
    (G, gp(top_p=1.5), "parameters.top_p", "less than or equal to 1"),
    (G, gp(typical_p=0), "parameters.typical_p", "greater than 0"),
    (G, gp(repetition_penalty=0), "parameters.repetition_penalty", "greater than 0"),
    (G, gp(seed=-1), "parameters.seed", "greater than or equal to 0"),
    (G, gp(seed=2**64), "parameters.seed", "less than or equal"),
    (G, gp(top_n_tokens=6), "parameters.top_n_tokens", "limit of 5"),
    (G, gp(truncate=0), "parameters.truncate", "greater than or equal to 1"),
    (G, gp(stop=["a", "b", "c", "d", "e"]), "parameters.stop", "limit of 4"),
    (G, gp(stop="the"), "parameters.stop", "list"),
    # what this model cannot honour
    (G, gp(best_of=2), "parameters.best_of", "not supported"),
    (G, gp(watermark=True), "parameters.watermark", "not supported"),
    (G, gp(grammar={"type": "json", "value": {}}), "parameters.grammar", "not supported"),
    (G, gp(adapter_id="lora-1"), "parameters.adapter_id", "not supported"),
    (G, gp(frequency_penalty=0.5), "parameters.frequency_penalty", "not supported"),
    # empty and too much
    (P, {}, "text", '"texts"'),
    (P, {"text": "a", "texts": ["b"]}, "texts", "not both"),
    (P, {"texts": []}, "texts", "at least 1"),
    (P, {"texts": ["a"] * 257}, "texts", "limit of 256"),
    (P, {"text": "a " * 10_001}, "text", "limit of 20000"),
    (G, {"inputs": "a" * 20_001}, "inputs", "limit of 20000"),
    (N, {"context": "a" * 20_001}, "context", "limit of 20000"),
    ("/tokenize", {"text": "a" * 20_001}, "text", "limit of 20000"),
    (N, {"context": "a", "top_k": 0}, "top_k", "greater than or equal to 1"),
    (N, {"context": "a", "top_k": 101}, "top_k", "limit of 100"),
    (N, {"context": "a", "targets": ["a"] * 101}, "targets", "limit of 100"),
]


@pytest.mark.parametrize(
    ("route", "body", "param", "says"),
    INVALID,
    ids=[f"{r}-{i}" for i, (r, *_) in enumerate(INVALID)],
)
def test_invalid_requests_get_a_clear_422(
    client: TestClient, route: str, body: Any, param: str | None, says: str
) -> None:
    check_envelope(client.post(route, json=body), 422, "validation", param, says)


def test_accepted_tgi_defaults(client: TestClient) -> None:
    """Every TGI parameter at its null/false/default value is accepted."""
    params = {
        "adapter_id": None, "best_of": 1, "decoder_input_details": False, "details": False,
        "do_sample": False, "frequency_penalty": 0.0, "grammar": None, "max_new_tokens": 2,
        "repetition_penalty": 1.0, "return_full_text": False, "seed": None, "stop": [],
        "temperature": 1.0, "top_k": None, "top_n_tokens": 0, "top_p": 1.0, "truncate": None,
        "typical_p": 1.0, "watermark": False, "stop_at_eos": True, "ban_unk": True,
    }  # fmt: skip
    r = client.post("/generate", json={"inputs": "the", "parameters": params, "stream": False})
    assert r.status_code == 200, r.text
    r = client.post("/generate", json={"inputs": "the", "parameters": {**params, "adapter_id": ""}})
    assert r.status_code == 200, r.text


@pytest.mark.parametrize(
    ("content", "headers", "status", "says"),
    [
        (b'{"inputs": ', {"content-type": "application/json"}, 422, "not valid JSON"),
        (b"{'inputs': 'a'}", {"content-type": "application/json"}, 422, "not valid JSON"),
        (b'{"inputs": "\xff\xfe"}', {"content-type": "application/json"}, 400, "UTF-8"),
        (b"[1, 2]", {"content-type": "application/json"}, 422, "JSON object"),
        (b'"just a string"', {"content-type": "application/json"}, 422, "JSON object"),
        (b'{"inputs": "a"}', {"content-type": "text/plain"}, 422, "Content-Type"),
        (b"", {"content-type": "application/json"}, 422, "required"),
    ],
)
def test_malformed_bodies(
    client: TestClient, content: bytes, headers: dict, status: int, says: str
) -> None:
    for route in ("/generate", "/perplexity"):
        check_envelope(
            client.post(route, content=content, headers=headers), status, "validation", says=says
        )


def test_lone_surrogates_are_replaced_not_a_500(client: TestClient) -> None:
    raw = b'{"texts": ["the \\ud800 market"], "return_tokens": true}'
    r = client.post("/perplexity", content=raw, headers={"content-type": "application/json"})
    assert r.status_code == 200, r.text
    assert r.json()["results"][0]["text"] == "the \ufffd market"
    raw = b'{"inputs": "a \\udfff", "parameters": {"return_full_text": true, "max_new_tokens": 1}}'
    r = client.post("/generate", content=raw, headers={"content-type": "application/json"})
    assert r.status_code == 200, r.text


def test_very_long_words_are_oov_not_errors(client: TestClient) -> None:
    word = "x" * 19_000
    r = client.post("/perplexity", json={"text": f"the {word} market"})
    assert r.status_code == 200
    assert r.json()["results"][0]["num_oov"] == 1
    r = client.post(
        "/generate", json={"inputs": word, "parameters": {"max_new_tokens": 2, "details": True}}
    )
    assert r.status_code == 200 and r.json()["details"]["oov"] == [word]
    r = client.post("/next-word", json={"context": "a", "targets": [word]})
    assert r.status_code == 200 and r.json()["targets"][0]["in_vocab"] is False
    r = client.post("/perplexity", json={"text": "the qqq", "oov": "reject"})
    check_envelope(r, 409, "oov", param="text", says="qqq")


def test_request_token_limit(make_client: MakeClient) -> None:
    with make_client(max_request_tokens=10) as c:
        check_envelope(
            c.post("/perplexity", json={"texts": ["the market"] * 4}),
            422,
            param="texts",
            says="limit of 10",
        )
        check_envelope(c.post("/perplexity", json={"text": "a " * 10}), 422, param="text")
        ok = c.post("/perplexity", json={"texts": ["the market"] * 3})  # 3 x 3 tokens
        assert ok.status_code == 200
        check_envelope(
            c.post("/generate", json=gp(max_new_tokens=8)),
            422,
            param="inputs",
            says="max_new_tokens",
        )
        assert c.post("/generate", json=gp(max_new_tokens=7)).status_code == 200
        check_envelope(c.post("/next-word", json={"context": "a " * 10}), 422, param="context")


def test_limits_follow_the_settings(make_client: MakeClient) -> None:
    with make_client(
        max_texts=2,
        max_text_chars=10,
        max_new_tokens=5,
        max_stop_sequences=1,
        max_top_n_tokens=1,
        max_targets=1,
        max_top_k=3,
    ) as c:
        check_envelope(
            c.post("/perplexity", json={"texts": ["a", "b", "c"]}),
            422,
            param="texts",
            says="limit of 2",
        )
        check_envelope(c.post("/perplexity", json={"text": "a" * 11}), 422, param="text")
        check_envelope(
            c.post("/generate", json=gp(max_new_tokens=6)),
            422,
            param="parameters.max_new_tokens",
            says="limit of 5",
        )
        check_envelope(c.post("/generate", json=gp(stop=["a", "b"])), 422, param="parameters.stop")
        check_envelope(
            c.post("/generate", json=gp(top_n_tokens=2)), 422, param="parameters.top_n_tokens"
        )
        check_envelope(
            c.post("/next-word", json={"context": "a", "targets": ["a", "b"]}), 422, param="targets"
        )
        check_envelope(c.post("/next-word", json={"context": "a", "top_k": 4}), 422, param="top_k")
        info = c.get("/info").json()["limits"]
        assert info["max_texts"] == 2 and info["max_top_k"] == 3


def test_body_size_limit_by_content_length(make_client: MakeClient) -> None:
    with make_client(max_body_bytes=1000) as c:
        r = c.post("/perplexity", json={"text": "a " * 600})
        check_envelope(r, 413, "payload_too_large", says="1000 bytes")
        assert c.post("/perplexity", json={"text": "a " * 100}).status_code == 200


def test_default_body_limit_is_one_mebibyte(client: TestClient) -> None:
    r = client.post("/perplexity", json={"texts": ["the market " * 1000] * 100})
    check_envelope(r, 413, "payload_too_large", says="1048576 bytes")


def test_body_size_limit_while_streaming_in(tiny_weights: Path) -> None:
    """A chunked body without Content-Length is cut off once it passes the limit."""
    app = create_app(Settings(weights=tiny_weights, max_body_bytes=1000))
    chunks_read = 0

    async def body() -> Any:
        nonlocal chunks_read
        yield b'{"text": "'
        for _ in range(100):
            chunks_read += 1
            yield b"a " * 100
        yield b'"}'

    async def main() -> httpx.Response:
        async with asgi_client(app) as c:
            return await c.post(
                "/perplexity", content=body(), headers={"content-type": "application/json"}
            )

    r = anyio.run(main)
    check_envelope(r, 413, "payload_too_large")
    assert chunks_read < 20  # the rest of the body was never read


def test_not_found_and_method_not_allowed(client: TestClient) -> None:
    check_envelope(client.get("/nope"), 404, "not_found", says="/nope")
    check_envelope(client.post("/x/generate", json={}), 404, "not_found")
    # under /v1/ OpenAI's envelope, as its clients read it
    r = client.post("/v1/generate", json={})
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    r = client.get("/v1/completions")
    assert r.status_code == 405 and r.json()["error"]["type"] == "invalid_request_error"
    check_envelope(client.get("/generate"), 405, "method_not_allowed", says="GET")
    check_envelope(client.put("/perplexity", json={}), 405, "method_not_allowed")
    # "/" is two routes (GET, POST): the Allow header names every method of the path
    r = client.options("/")
    assert r.status_code == 405 and r.headers["allow"] == "GET, POST"
    assert client.delete("/perplexity").headers["allow"] == "POST"


def test_a_500_never_leaks_a_trace(tiny_weights: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    app = create_app(Settings(weights=tiny_weights))

    async def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("secret detail /etc/passwd")

    with TestClient(app, raise_server_exceptions=False) as c:
        monkeypatch.setattr(app.state.service.engine, "score", broken)
        r = c.post("/perplexity", json={"text": "the market"})
        body = check_envelope(r, 500, "internal")
        assert "secret" not in r.text and "RuntimeError" not in r.text
        assert body["error"] == "internal server error"
        monkeypatch.setattr(app.state.service.engine, "next_word", broken)
        check_envelope(c.post("/next-word", json={"context": "a"}), 500, "internal")


def test_timeout_is_a_504(make_client: MakeClient) -> None:
    with make_client(request_timeout_s=1e-6) as c:
        check_envelope(c.post("/generate", json=gp(max_new_tokens=50)), 504, "timeout")


def test_overloaded_is_a_429(client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    engine = client.app.state.service.engine  # type: ignore[attr-defined]
    monkeypatch.setattr(engine, "queue_size", 0)
    r = client.post("/perplexity", json={"text": "a"})
    check_envelope(r, 429, "overloaded")
    assert r.headers["retry-after"] == "1"
    check_envelope(client.post("/generate_stream", json=gp()), 429, "overloaded")


def test_validation_messages_name_several_fields() -> None:
    errors = [
        {
            "loc": ("body", "parameters", "stop", 2),
            "msg": "Input should be a valid string",
            "type": "string_type",
        },
        {"loc": ("body", "texts"), "msg": "x", "type": "missing"},
    ]
    message, param, details = describe_validation_errors(errors)
    assert param == "parameters.stop[2]"
    assert "parameters.stop[2]: Input should be a valid string" in message
    assert "texts: field required" in message
    assert [d["param"] for d in details] == ["parameters.stop[2]", "texts"]
