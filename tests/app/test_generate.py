"""POST /generate, /generate_stream and / : TGI's shapes, sampling, stopping, streaming."""

from __future__ import annotations

import json
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import anyio
import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient

from app.config import Settings
from app.main import create_app
from model.normalize import tokenize
from model.weights import LoadedWeights
from tests.naive import naive_logprobs, naive_next

MakeClient = Callable[..., AbstractContextManager[TestClient]]


def gen(client: TestClient, inputs: str, route: str = "/generate", **params: Any) -> dict:
    r = client.post(route, json={"inputs": inputs, "parameters": params})
    assert r.status_code == 200, r.text
    body = r.json()
    return body[0] if isinstance(body, list) else body


def stream_events(client: TestClient, body: dict, route: str = "/generate_stream") -> list[dict]:
    with client.stream("POST", route, json=body) as r:
        assert r.status_code == 200, r.read()
        assert r.headers["content-type"].startswith("text/event-stream")
        return [json.loads(line[5:]) for line in r.iter_lines() if line.startswith("data:")]


def test_response_shape_with_details(client: TestClient) -> None:
    body = gen(client, "the stock market", max_new_tokens=6, details=True, seed=3, do_sample=True)
    d = body["details"]
    assert set(body) == {"generated_text", "details"}
    assert d["finish_reason"] in ("length", "eos_token", "stop_sequence")
    assert d["generated_tokens"] == len(d["tokens"]) <= 6
    assert d["seed"] == 3
    assert d["prefill"][0]["text"] == "<eos>"
    assert d["input_length"] == len(d["prefill"])
    assert all(t["logprob"] is None for t in d["prefill"])  # decoder_input_details is off
    for t in d["tokens"]:
        assert set(t) == {"id", "text", "logprob", "special"}
        assert t["logprob"] <= 0
    assert d["top_tokens"] is None


def test_details_off_gives_text_only(client: TestClient) -> None:
    body = gen(client, "the", max_new_tokens=3)
    assert body["details"] is None
    assert isinstance(body["generated_text"], str)


def test_text_is_the_words_joined_by_spaces(client: TestClient) -> None:
    d = gen(client, "the market", max_new_tokens=15, details=True, stop_at_eos=False)
    tokens = d["details"]["tokens"]
    assert "".join(t["text"] for t in tokens).rstrip("\n") == d["generated_text"]
    words = [client.app.state.service.engine.vocab.id_to_word[t["id"]] for t in tokens]  # type: ignore[attr-defined]
    lines = d["generated_text"].split("\n")
    assert " ".join(w if w != "<eos>" else "\n" for w in words).replace(" \n ", "\n").rstrip(
        "\n "
    ) == "\n".join(lines)


def test_same_seed_same_tokens_five_seeds_differ(client: TestClient) -> None:
    def run(seed: int) -> list[int]:
        d = gen(
            client,
            "the company",
            max_new_tokens=12,
            do_sample=True,
            seed=seed,
            details=True,
            stop_at_eos=False,
        )
        return [t["id"] for t in d["details"]["tokens"]]

    assert run(11) == run(11)
    outputs = {tuple(run(seed)) for seed in range(5)}
    assert len(outputs) >= 2


def test_a_seed_is_drawn_and_reported_and_reproduces(client: TestClient) -> None:
    d = gen(client, "a", max_new_tokens=8, temperature=0.7, details=True, stop_at_eos=False)
    seed = d["details"]["seed"]
    assert isinstance(seed, int)
    again = gen(
        client, "a", max_new_tokens=8, temperature=0.7, details=True, seed=seed, stop_at_eos=False
    )
    assert again["generated_text"] == d["generated_text"]


def test_sampling_rule_is_tgis(client: TestClient) -> None:
    greedy = gen(client, "the", max_new_tokens=10, details=True, stop_at_eos=False)
    assert greedy["details"]["seed"] is None
    same = gen(
        client,
        "the",
        max_new_tokens=10,
        details=True,
        temperature=1.0,
        top_p=1.0,
        typical_p=1.0,
        stop_at_eos=False,
    )
    assert same["generated_text"] == greedy["generated_text"]  # defaults do not turn sampling on
    for warper in (
        {"temperature": 0.5},
        {"top_k": 5},
        {"top_p": 0.9},
        {"typical_p": 0.9},
        {"do_sample": True},
    ):
        d = gen(client, "the", max_new_tokens=3, details=True, **warper)
        assert isinstance(d["details"]["seed"], int), warper


def test_greedy_is_the_argmax_path_of_the_independent_scorer(
    client: TestClient, tiny_loaded: LoadedWeights
) -> None:
    d = gen(client, "the stock market", max_new_tokens=10, details=True, stop_at_eos=False)
    vocab = tiny_loaded.vocab
    ids = [vocab.eos_id, *tokenize("the stock market", vocab).ids]
    for t in d["details"]["tokens"]:
        dist = naive_next(tiny_loaded.params, tiny_loaded.config, ids)
        dist[vocab.unk_id] = -np.inf  # ban_unk
        assert t["id"] == int(np.argmax(dist))
        assert t["logprob"] == pytest.approx(
            naive_next(tiny_loaded.params, tiny_loaded.config, ids)[t["id"]], abs=1e-4
        )
        ids.append(t["id"])


def test_decoder_input_details_gives_prefill_logprobs(
    client: TestClient, tiny_loaded: LoadedWeights
) -> None:
    d = gen(client, "the big house", max_new_tokens=2, details=True, decoder_input_details=True)
    prefill = d["details"]["prefill"]
    ids = [t["id"] for t in prefill]
    assert prefill[0] == {"id": tiny_loaded.vocab.eos_id, "text": "<eos>", "logprob": None}
    want = naive_logprobs(tiny_loaded.params, tiny_loaded.config, ids)
    np.testing.assert_allclose([t["logprob"] for t in prefill[1:]], want, atol=1e-4)


def test_decoder_input_details_streamed_on_the_last_event(client: TestClient) -> None:
    params = {"max_new_tokens": 3, "decoder_input_details": True, "stop_at_eos": False}
    whole = gen(client, "the big house", details=True, **params)["details"]["prefill"]
    events = stream_events(client, {"inputs": "the big house", "parameters": params})
    assert events[-1]["details"]["prefill"] == whole
    assert all(e["details"] is None for e in events[:-1])
    plain = stream_events(client, {"inputs": "the", "parameters": {"max_new_tokens": 1}})
    assert "prefill" not in plain[-1]["details"]  # TGI's event shape unless asked


def test_a_stop_sequence_that_cannot_match_is_ignored(client: TestClient) -> None:
    free = gen(client, "the", max_new_tokens=4, stop_at_eos=False)["generated_text"]
    for stop in (["!!!", "   "], ["a b c d e f"]):  # no tokens; longer than max_new_tokens
        d = gen(client, "the", max_new_tokens=4, stop_at_eos=False, stop=stop, details=True)
        assert d["generated_text"] == free and d["details"]["finish_reason"] == "length"


def test_top_n_tokens(client: TestClient) -> None:
    d = gen(client, "the", max_new_tokens=4, details=True, top_n_tokens=3, stop_at_eos=False)
    tops = d["details"]["top_tokens"]
    assert len(tops) == 4
    for top, tok in zip(tops, d["details"]["tokens"], strict=True):
        assert len(top) == 3
        assert [t["logprob"] for t in top] == sorted((t["logprob"] for t in top), reverse=True)
        assert tok["logprob"] <= top[0]["logprob"] + 1e-6


def test_return_full_text_prepends_the_prompt(client: TestClient) -> None:
    plain = gen(client, "The Stock", max_new_tokens=4)
    full = gen(client, "The Stock", max_new_tokens=4, return_full_text=True)
    assert full["generated_text"] == "The Stock " + plain["generated_text"]


def test_oov_prompt_words_are_listed(client: TestClient) -> None:
    d = gen(client, "the zzyzxq market", max_new_tokens=2, details=True)
    assert d["details"]["oov"] == ["zzyzxq"]
    assert "<unk>" in [t["text"] for t in d["details"]["prefill"]]


def test_empty_prompt_starts_from_eos(client: TestClient) -> None:
    d = gen(client, "", max_new_tokens=3, details=True, decoder_input_details=True)
    assert [t["text"] for t in d["details"]["prefill"]] == ["<eos>"]


def test_truncate_keeps_the_last_prompt_tokens(client: TestClient) -> None:
    d = gen(client, "the big stock market", max_new_tokens=3, details=True, truncate=2)
    assert [t["text"] for t in d["details"]["prefill"]] == ["<eos>", "stock", "market"]
    short = gen(client, "stock market", max_new_tokens=3)
    assert d["generated_text"] == short["generated_text"]


def test_repetition_penalty_changes_greedy_output(client: TestClient) -> None:
    a = gen(client, "the", max_new_tokens=30, details=True, stop_at_eos=False)
    b = gen(
        client, "the", max_new_tokens=30, details=True, stop_at_eos=False, repetition_penalty=5.0
    )
    ids_b = [t["id"] for t in b["details"]["tokens"]]
    assert a["generated_text"] != b["generated_text"]
    assert len(set(ids_b)) > len({t["id"] for t in a["details"]["tokens"]}) or len(
        set(ids_b)
    ) == len(ids_b)


@pytest.fixture(scope="module")
def special_client(special_weights: Path) -> Any:
    with TestClient(create_app(Settings(weights=special_weights))) as c:
        yield c


def test_ban_unk_never_yields_unk(special_client: TestClient) -> None:
    unk = special_client.app.state.service.engine.vocab.unk_id  # type: ignore[attr-defined]

    def ids(ban: bool, seed: int) -> list[int]:
        d = gen(
            special_client,
            "the",
            max_new_tokens=100,
            do_sample=True,
            seed=seed,
            details=True,
            stop_at_eos=False,
            ban_unk=ban,
        )
        return [t["id"] for t in d["details"]["tokens"]]

    assert any(unk in ids(False, s) for s in range(3))  # <unk> is likely without the ban
    for s in range(3):
        assert unk not in ids(True, s)
    greedy = gen(special_client, "the", max_new_tokens=20, details=True, stop_at_eos=False)
    assert unk not in [t["id"] for t in greedy["details"]["tokens"]]


def test_eos_ends_generation(special_client: TestClient) -> None:
    d = gen(special_client, "the", max_new_tokens=512, do_sample=True, seed=1, details=True)
    tokens = d["details"]["tokens"]
    assert d["details"]["finish_reason"] == "eos_token"
    assert tokens[-1]["special"] and tokens[-1]["text"] == "\n"
    assert d["details"]["generated_tokens"] == len(tokens)  # <eos> counted
    assert "\n" not in d["generated_text"]  # the closing <eos> is left out
    assert not any(t["special"] for t in tokens[:-1])


def test_without_stop_at_eos_eos_is_a_newline(special_client: TestClient) -> None:
    d = gen(
        special_client,
        "the",
        max_new_tokens=300,
        do_sample=True,
        seed=2,
        details=True,
        stop_at_eos=False,
    )
    tokens = d["details"]["tokens"]
    assert d["details"]["finish_reason"] == "length"
    assert len(tokens) == 300
    inner = [t for t in tokens[:-1] if t["special"]]
    assert inner, "expected an <eos> inside 300 tokens"
    assert d["generated_text"].count("\n") == len(inner)
    assert "\n " not in d["generated_text"] and " \n" not in d["generated_text"]


def test_stop_sequence_ends_generation_and_is_included(client: TestClient) -> None:
    vocab = client.app.state.service.engine.vocab  # type: ignore[attr-defined]
    base = gen(client, "the market", max_new_tokens=20, details=True, stop_at_eos=False)
    ids = [t["id"] for t in base["details"]["tokens"]]
    # a two-word window of the output that normalises back to itself
    for start in range(2, len(ids) - 1):
        text = " ".join(vocab.decode(ids[start : start + 2]))
        if (
            tokenize(text, vocab).ids == ids[start : start + 2]
            and vocab.eos_id not in ids[start : start + 2]
        ):
            break
    else:
        pytest.skip("no round-tripping window in the greedy output")
    d = gen(
        client,
        "the market",
        max_new_tokens=20,
        details=True,
        stop_at_eos=False,
        stop=["zzzq never", text],
    )
    first = next(i for i in range(1, len(ids)) if ids[i - 1 : i + 1] == ids[start : start + 2])
    assert [t["id"] for t in d["details"]["tokens"]] == ids[: first + 1]
    assert d["details"]["finish_reason"] == "stop_sequence"
    assert d["generated_text"].endswith(text)


def test_length_finish_reason(client: TestClient) -> None:
    d = gen(client, "the", max_new_tokens=5, details=True, stop_at_eos=False)
    assert d["details"]["finish_reason"] == "length"
    assert d["details"]["generated_tokens"] == 5


def test_default_max_new_tokens_is_a_setting(make_client: MakeClient) -> None:
    with make_client(default_max_new_tokens=3) as c:
        d = gen(c, "the", details=True, stop_at_eos=False)
    assert d["details"]["generated_tokens"] == 3


def test_compat_route_returns_a_list_of_one(client: TestClient) -> None:
    r = client.post(
        "/",
        json={"inputs": "the", "parameters": {"max_new_tokens": 4, "seed": 1, "do_sample": True}},
    )
    assert r.status_code == 200
    body = r.json()
    assert isinstance(body, list) and len(body) == 1
    assert (
        body[0]["generated_text"]
        == gen(client, "the", max_new_tokens=4, seed=1, do_sample=True)["generated_text"]
    )


@pytest.mark.parametrize(
    ("route", "stream_flag"), [("/generate_stream", None), ("/generate", True), ("/", True)]
)
def test_stream_events_match_the_plain_answer(
    client: TestClient, route: str, stream_flag: bool | None
) -> None:
    params = {
        "max_new_tokens": 8,
        "seed": 5,
        "do_sample": True,
        "stop_at_eos": False,
        "details": True,
        "top_n_tokens": 2,
    }
    body: dict[str, Any] = {"inputs": "the stock", "parameters": params}
    if stream_flag is not None:
        body["stream"] = stream_flag
    events = stream_events(client, body, route)
    plain = gen(client, "the stock", **params)
    assert [e["index"] for e in events] == list(range(1, 9))
    assert [e["token"] for e in events] == plain["details"]["tokens"]
    assert [e["top_tokens"] for e in events] == plain["details"]["top_tokens"]
    assert all(e["generated_text"] is None and e["details"] is None for e in events[:-1])
    last = events[-1]
    assert last["generated_text"] == plain["generated_text"]
    assert last["details"]["finish_reason"] == "length"
    assert last["details"]["generated_tokens"] == 8
    assert last["details"]["seed"] == 5


def test_stream_without_details_still_ends_with_details(client: TestClient) -> None:
    events = stream_events(client, {"inputs": "a", "parameters": {"max_new_tokens": 3}})
    assert events[-1]["details"]["generated_tokens"] == len(events)
    assert events[0]["top_tokens"] is None


def test_client_disconnect_stops_generation(tiny_weights: Path) -> None:
    """A client that stops reading and goes away ends the generation (checked in the engine)."""
    app = create_app(Settings(weights=tiny_weights))
    body = json.dumps(
        {"inputs": "the", "parameters": {"max_new_tokens": 512, "stop_at_eos": False}}
    ).encode()
    sent: list[dict] = []
    first_chunk = anyio.Event()
    disconnected = anyio.Event()

    async def receive() -> dict:
        if not sent and not first_chunk.is_set() and not hasattr(receive, "done"):
            receive.done = True  # type: ignore[attr-defined]
            return {"type": "http.request", "body": body, "more_body": False}
        await first_chunk.wait()
        disconnected.set()
        return {"type": "http.disconnect"}

    async def send(message: dict) -> None:
        sent.append(message)
        if message["type"] == "http.response.body" and message.get("body"):
            first_chunk.set()
            # A stalled client: the next write never completes until the disconnect.
            await disconnected.wait()
            await anyio.sleep_forever()

    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
        "scheme": "http", "path": "/generate_stream", "raw_path": b"/generate_stream",
        "root_path": "", "query_string": b"", "client": ("127.0.0.1", 1),
        "server": ("test", 80),
        "headers": [(b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode())],
    }  # fmt: skip

    async def main() -> dict:
        async with app.router.lifespan_context(app):
            with anyio.fail_after(30):
                await app(scope, receive, send)
            engine = app.state.service.engine
            return {"stats": engine.stats()}

    result = anyio.run(main)
    assert sent[0]["status"] == 200
    # At most a couple of tokens past the one the client received, never all 512.
    assert 1 <= result["stats"]["tokens_generated"] <= 4
    assert result["stats"]["in_flight"] == 0


# --- text-generation-inference clients -----------------------------------------------------------


def test_huggingface_inference_client(live_server: str) -> None:
    """huggingface_hub's InferenceClient.text_generation (which posts to /) works unchanged."""
    hub = pytest.importorskip("huggingface_hub")
    from huggingface_hub.errors import TextGenerationError

    client = hub.InferenceClient(model=live_server, timeout=30)
    kw: dict[str, Any] = {"max_new_tokens": 6, "seed": 3, "do_sample": True}
    with httpx.Client(base_url=live_server, timeout=30) as http:
        ours = http.post(
            "/generate", json={"inputs": "the stock", "parameters": {**kw, "details": True}}
        ).json()

    text = client.text_generation("the stock", **kw)
    assert text == ours["generated_text"]

    out = client.text_generation("the stock", details=True, decoder_input_details=True, **kw)
    assert out.generated_text == ours["generated_text"]
    assert out.details is not None
    assert out.details.finish_reason == ours["details"]["finish_reason"]
    assert out.details.generated_tokens == ours["details"]["generated_tokens"]
    assert out.details.seed == 3
    assert [t.id for t in out.details.tokens] == [t["id"] for t in ours["details"]["tokens"]]
    assert out.details.prefill[0].text == "<eos>" and out.details.prefill[1].logprob < 0

    pieces = list(client.text_generation("the stock", stream=True, **kw))
    assert "".join(pieces).rstrip("\n") == ours["generated_text"]

    events = list(client.text_generation("the stock", stream=True, details=True, **kw))
    assert [e.token.id for e in events] == [t["id"] for t in ours["details"]["tokens"]]
    assert events[-1].generated_text == ours["generated_text"]
    assert events[-1].details is not None and events[-1].details.seed == 3

    with pytest.raises(TextGenerationError, match="temperature"):
        client.text_generation("the stock", temperature=-1.0)
