"""app.client: Client and AsyncClient, in process (the live server is in test_main.py)."""

from __future__ import annotations

from pathlib import Path

import anyio
import httpx
import pytest
from fastapi.testclient import TestClient

from app.client import AsyncClient, Client, RnnlmError
from app.config import Settings
from app.main import create_app
from tests.app.conftest import asgi_client


def test_sync_client_over_a_test_client(client: TestClient) -> None:
    c = Client(http=client)
    out = c.generate("the market", max_new_tokens=4, details=True, stop_at_eos=False)
    assert out["details"]["generated_tokens"] == 4
    events = list(c.generate_stream("the market", max_new_tokens=4, stop_at_eos=False))
    assert [e["index"] for e in events] == [1, 2, 3, 4]
    assert events[-1]["generated_text"] == out["generated_text"]  # greedy both times
    res = c.perplexity(["a", "the market"], return_tokens=True, eos=False)
    assert [r["num_tokens"] for r in res["results"]] == [1, 2]
    assert c.next_word("the", top_k=2, targets=["market"])["targets"][0]["in_vocab"]
    assert c.tokenize("The")["token_strs"] == ["the"]
    assert c.detokenize(c.tokenize("The market")["tokens"]) == "the market"
    assert c.health() == {"status": "ready"}
    assert c.info()["model"]["num_layers"] == 2
    c.close()  # does not close the TestClient it was given
    assert client.get("/health/live").status_code == 200


def test_errors_are_typed(client: TestClient) -> None:
    c = Client(http=client)
    c.perplexity(["the"], oov="reject")  # in the vocabulary: fine
    with pytest.raises(RnnlmError) as e:
        c.perplexity(["qqxyzzy"], oov="reject")
    err = e.value
    assert (err.status, err.error_type, err.param) == (409, "oov", "texts[0]")
    assert err.details[0]["oov"] == ["qqxyzzy"]
    assert "qqxyzzy" in str(err)
    with pytest.raises(RnnlmError) as e:
        c.next_word("a", top_k=1000)
    assert e.value.param == "top_k"


def test_error_without_the_envelope() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(502, text="bad gateway from a proxy")

    http = httpx.Client(transport=httpx.MockTransport(handler), base_url="http://x")
    with pytest.raises(RnnlmError) as e:
        Client(http=http).info()
    assert e.value.status == 502 and e.value.error_type == "unknown"
    assert "bad gateway" in e.value.message


def test_an_error_event_in_a_stream_raises() -> None:
    body = (
        b'data: {"index":1,"token":{"id":1,"text":"a","logprob":-1.0,"special":false},'
        b'"top_tokens":null,"generated_text":null,"details":null}\n\n'
        b'data: {"error":"internal server error","error_type":"internal"}\n\n'
    )

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=body, headers={"content-type": "text/event-stream"})

    http = httpx.Client(transport=httpx.MockTransport(handler), base_url="http://x")
    events = Client(http=http).generate_stream("a")
    assert next(events)["index"] == 1
    with pytest.raises(RnnlmError) as e:
        next(events)
    assert e.value.error_type == "internal"


def test_async_client_in_process(tiny_weights: Path) -> None:
    app = create_app(Settings(weights=tiny_weights))

    async def main() -> None:
        async with asgi_client(app) as http:
            c = AsyncClient(http=http)
            out = await c.generate("a", max_new_tokens=3, stop_at_eos=False)
            events = [e async for e in c.generate_stream("a", max_new_tokens=3, stop_at_eos=False)]
            assert events[-1]["generated_text"] == out["generated_text"]
            assert (await c.perplexity("a b"))["aggregate"]["num_tokens"] == 3
            with pytest.raises(RnnlmError) as e:
                await c.generate("a", best_of=3)
            assert e.value.param == "parameters.best_of"
            with pytest.raises(RnnlmError) as e:
                _ = [x async for x in c.generate_stream("a", max_new_tokens=10_000)]
            assert e.value.status == 422
            await c.aclose()
            assert not http.is_closed

    anyio.run(main)
