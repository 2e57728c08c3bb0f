"""/v1/completions, /v1/models and the tokenizer endpoints: in process, and with the openai
package against a live server."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from fastapi.testclient import TestClient


def test_echo_scores_a_text_as_perplexity_does(client: TestClient) -> None:
    text = "the stock market fell sharply"
    r = client.post("/v1/completions", json={"prompt": text, "max_tokens": 0, "echo": True,
                                             "logprobs": 0})
    assert r.status_code == 200, r.text
    body = r.json()
    (choice,) = body["choices"]
    lp = choice["logprobs"]
    assert lp["tokens"][0] == "<eos>" and lp["token_logprobs"][0] is None
    assert choice["text"] == text and choice["finish_reason"] == "length"
    want = client.post("/perplexity", json={"text": text, "eos": False}).json()
    assert sum(lp["token_logprobs"][1:]) == pytest.approx(want["results"][0]["log_prob"],
                                                          abs=1e-4)
    assert body["usage"] == {"prompt_tokens": len(lp["tokens"]), "completion_tokens": 0,
                             "total_tokens": len(lp["tokens"])}
    assert lp["text_offset"][1] == 0 and lp["text_offset"][2] == text.index("stock")


def test_top_logprobs_hold_the_alternatives_and_the_token(client: TestClient) -> None:
    r = client.post("/v1/completions", json={"prompt": ["the market", "prices rose"],
                                             "max_tokens": 1, "echo": True, "logprobs": 3,
                                             "temperature": 0})
    assert r.status_code == 200, r.text
    for choice in r.json()["choices"]:
        lp = choice["logprobs"]
        assert lp["top_logprobs"][0] is None
        for tok, x, top in zip(lp["tokens"][1:], lp["token_logprobs"][1:],
                               lp["top_logprobs"][1:], strict=True):
            assert tok in top and top[tok] == pytest.approx(x, abs=1e-5)
            assert 3 <= len(top) <= 4
        # greedy: the generated token is the most likely one
        last = lp["top_logprobs"][-1]
        assert max(last, key=last.get) == lp["tokens"][-1]


def test_echo_of_a_batch_equals_each_alone(client: TestClient) -> None:
    texts = ["the market", "prices rose sharply in new york", "a"]
    both = client.post("/v1/completions", json={"prompt": texts, "max_tokens": 0, "echo": True,
                                                "logprobs": 1}).json()["choices"]
    for text, choice in zip(texts, both, strict=True):
        alone = client.post("/v1/completions", json={"prompt": text, "max_tokens": 0,
                                                     "echo": True, "logprobs": 1}).json()
        a = alone["choices"][0]["logprobs"]["token_logprobs"][1:]
        assert choice["logprobs"]["token_logprobs"][1:] == pytest.approx(a, abs=1e-4)


def test_token_id_prompts_are_read_as_given(client: TestClient) -> None:
    ids = client.post("/tokenize", json={"prompt": "the market"}).json()["tokens"]
    by_ids = client.post("/v1/completions", json={"prompt": ids, "max_tokens": 0, "echo": True,
                                                  "logprobs": 0}).json()
    by_text = client.post("/v1/completions", json={"prompt": "the market", "max_tokens": 0,
                                                   "echo": True, "logprobs": 0}).json()
    assert by_ids["choices"][0]["logprobs"]["token_logprobs"] == \
        by_text["choices"][0]["logprobs"]["token_logprobs"]
    two = client.post("/v1/completions", json={"prompt": [ids, ids[:2]], "max_tokens": 0,
                                               "echo": True}).json()
    assert len(two["choices"]) == 2


def test_greedy_generation_equals_generate(client: TestClient) -> None:
    r = client.post("/v1/completions", json={"prompt": "the market", "max_tokens": 6,
                                             "temperature": 0, "logprobs": 0}).json()
    g = client.post("/generate", json={"inputs": "the market", "parameters": {
        "max_new_tokens": 6, "details": True}}).json()
    choice = r["choices"][0]
    want = [t["logprob"] for t in g["details"]["tokens"]]
    assert choice["logprobs"]["token_logprobs"] == pytest.approx(want, abs=1e-5)
    assert choice["text"].lstrip(" ") == g["generated_text"].rstrip("\n")
    assert r["usage"]["completion_tokens"] == len(want)
    assert choice["finish_reason"] == ("stop" if g["details"]["finish_reason"] == "eos_token"
                                       else "length")


def test_n_choices_are_ordered_by_prompt_and_seeded(client: TestClient) -> None:
    body = {"prompt": ["the", "a"], "max_tokens": 5, "n": 3, "seed": 7, "temperature": 1.0}
    r1 = client.post("/v1/completions", json=body).json()
    r2 = client.post("/v1/completions", json=body).json()
    assert [c["index"] for c in r1["choices"]] == list(range(6))
    assert [c["text"] for c in r1["choices"]] == [c["text"] for c in r2["choices"]]


def test_a_stop_sequence_ends_the_choice_and_is_not_returned(client: TestClient) -> None:
    free = client.post("/v1/completions", json={"prompt": "the", "max_tokens": 8,
                                                "temperature": 0}).json()["choices"][0]["text"]
    words = free.split()
    if len(words) < 3:
        pytest.skip("the tiny model ends too soon for a stop sequence")
    stop = words[2]
    r = client.post("/v1/completions", json={"prompt": "the", "max_tokens": 8, "temperature": 0,
                                             "stop": [stop], "logprobs": 0}).json()
    choice = r["choices"][0]
    assert choice["finish_reason"] == "stop" and choice["stop_reason"] == stop
    kept = words[: words.index(stop)]  # none when the first word repeats (the toy model)
    assert choice["text"] == "".join(" " + w for w in kept)
    assert len(choice["logprobs"]["tokens"]) == len(kept)


def test_streaming_sends_the_same_text_then_done(client: TestClient) -> None:
    body = {"prompt": "the market", "max_tokens": 6, "temperature": 0, "echo": True}
    whole = client.post("/v1/completions", json=body).json()["choices"][0]["text"]
    with client.stream("POST", "/v1/completions", json={
            **body, "stream": True, "stream_options": {"include_usage": True}}) as r:
        assert r.status_code == 200
        datas = [line[6:] for line in r.iter_lines() if line.startswith("data: ")]
    assert datas[-1] == "[DONE]"
    chunks = [json.loads(d) for d in datas[:-1]]
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] >= 1
    assert "".join(c["choices"][0]["text"] for c in chunks[:-1]) == whole


def _streamed(client: TestClient, body: dict) -> tuple[str, list[dict]]:
    """The text a stream's chunks add up to, and its choice entries."""
    with client.stream("POST", "/v1/completions", json={**body, "stream": True}) as r:
        assert r.status_code == 200
        datas = [line[6:] for line in r.iter_lines() if line.startswith("data: ")]
    assert datas[-1] == "[DONE]"
    choices = [c for d in datas[:-1] for c in json.loads(d)["choices"]]
    return "".join(c["text"] for c in choices), choices


def test_a_streamed_stop_sequence_is_left_out_as_in_the_whole_answer(client: TestClient
                                                                     ) -> None:
    body = {"prompt": "the", "max_tokens": 10, "temperature": 0, "logprobs": 0}
    words = client.post("/v1/completions", json=body).json()["choices"][0]["text"].split()
    if len(words) < 5:
        pytest.skip("the tiny model ends too soon for a stop sequence")
    for stop in (
        f"{words[2]} {words[3]}",  # two tokens: the first waits for the second
        f"{words[1]} qqzx",  # starts like the output, then differs: the held token goes out
        words[1:4],  # several sequences
    ):
        req = {**body, "stop": stop}
        whole = client.post("/v1/completions", json=req).json()["choices"][0]
        text, choices = _streamed(client, req)
        assert text == whole["text"]
        assert choices[-1]["finish_reason"] == whole["finish_reason"]
        assert choices[-1].get("stop_reason") == whole.get("stop_reason")
        tokens = [t for c in choices if c["logprobs"] for t in c["logprobs"]["tokens"]]
        assert tokens == whole["logprobs"]["tokens"]


@pytest.mark.parametrize(("body", "param"), [
    ({"prompt": "a", "best_of": 2}, "best_of"),
    ({"prompt": "a", "logit_bias": {"99999999": 1.0}}, "logit_bias"),
    ({"prompt": "a", "logit_bias": {"five": 1.0}}, "logit_bias"),
    ({"prompt": "a", "logit_bias": {"5": 101}}, "logit_bias"),
    ({"prompt": "a", "presence_penalty": 0.5}, "presence_penalty"),
    ({"prompt": "a", "logprobs": 6}, "logprobs"),
    ({"prompt": "a", "max_tokens": 10**6}, "max_tokens"),
    ({"prompt": [10**7]}, "prompt"),
    ({"prompt": "a", "suffix": "b"}, "suffix"),
    ({"prompt": "a", "bogus": 1}, "bogus"),
])
def test_errors_use_openais_envelope(client: TestClient, body: dict, param: str) -> None:
    r = client.post("/v1/completions", json=body)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert err["type"] == "invalid_request_error" and param in (err["param"] or "")


def test_a_request_over_the_token_budget_is_a_429_as_openai_answers(make_client: Any) -> None:
    with make_client(max_request_tokens=50) as c:
        r = c.post("/v1/completions", json={"prompt": ["a", "b"], "n": 5, "max_tokens": 5})
        assert r.status_code == 429 and "Retry-After" not in r.headers  # retrying cannot help
        err = r.json()["error"]
        assert err["code"] == "rate_limit_exceeded" and err["type"] == "tokens"
        assert "max_model_len" in err["message"]
        ok = c.post("/v1/completions", json={"prompt": ["a", "b"], "n": 4, "max_tokens": 5})
        assert ok.status_code == 200, ok.text


def test_whole_numbers_are_integers_as_json_schema_reads_them(client: TestClient) -> None:
    r = client.post("/v1/completions", json={"prompt": [5.0, 7.0], "max_tokens": 2.0, "n": 1.0,
                                             "temperature": 0})
    assert r.status_code == 200, r.text
    assert client.post("/v1/completions", json={"prompt": "a", "max_tokens": 2.5}
                       ).status_code == 400


def test_values_that_change_nothing_are_accepted(client: TestClient) -> None:
    r = client.post("/v1/completions", json={
        "prompt": "a", "max_tokens": 2, "best_of": 1, "presence_penalty": 0,
        "frequency_penalty": 0, "logit_bias": {}, "suffix": None, "user": "u", "n": 1,
        "top_p": 1, "stop": None, "logprobs": None, "stream": False})
    assert r.status_code == 200, r.text


def test_logit_bias_steers_the_choice_and_leaves_logprobs_the_models(
        client: TestClient) -> None:
    body = {"prompt": "the", "max_tokens": 4, "temperature": 0, "logprobs": 0}
    free = client.post("/v1/completions", json=body).json()["choices"][0]
    first = client.post("/tokenize", json={"text": free["logprobs"]["tokens"][0]}).json()
    banned = first["tokens"][0]
    forced = client.post("/tokenize", json={"text": "market"}).json()["tokens"][0]
    r = client.post("/v1/completions", json={**body, "logit_bias": {
        str(banned): -100, str(forced): 100}}).json()["choices"][0]
    assert r["logprobs"]["tokens"] == ["market"] * 4
    scored = client.post("/perplexity", json={"text": "the market market market market",
                                              "eos": False, "return_tokens": True}).json()
    want = [t["logprob"] for t in scored["results"][0]["tokens"][1:]]
    assert r["logprobs"]["token_logprobs"] == pytest.approx(want, abs=1e-5)


def test_models_list_and_an_unknown_model(client: TestClient) -> None:
    r = client.get("/v1/models").json()
    assert r["object"] == "list" and len(r["data"]) == 1
    name = r["data"][0]["id"]
    assert client.post("/v1/completions", json={"prompt": "a", "max_tokens": 1,
                                                "model": name}).status_code == 200
    bad = client.post("/v1/completions", json={"prompt": "a", "model": "gpt-4"})
    assert bad.status_code == 404 and bad.json()["error"]["param"] == "model"


def test_tokenize_detokenize_and_info(client: TestClient) -> None:
    info = client.get("/tokenizer_info").json()
    assert info["eos_token"] == "<eos>" and info["bos_token"] is None
    r = client.post("/tokenize", json={"prompt": "The market <eos> fell"}).json()
    assert r["tokens"][0] == info["eos_token_id"] and r["count"] == len(r["tokens"])
    assert r["token_strs"] == ["<eos>", "the", "market", "<eos>", "fell"]
    assert r["tokens"][3] == info["eos_token_id"]  # the literal <eos> is the eos id
    plain = client.post("/tokenize", json={"prompt": "The market",
                                           "add_special_tokens": False}).json()
    assert plain["tokens"] == r["tokens"][1:3]
    assert client.post("/tokenize", json={"text": "The market"}).json()["tokens"] == \
        plain["tokens"]
    back = client.post("/detokenize", json={"tokens": r["tokens"]}).json()["prompt"]
    assert back == "the market\nfell"
    again = client.post("/tokenize", json={"prompt": back}).json()["tokens"]
    assert again == r["tokens"]
    assert client.post("/tokenize", json={"prompt": "a", "text": "b"}).status_code == 422
    assert client.post("/detokenize", json={"tokens": [10**6]}).status_code == 422


# --- the openai package against a real server ------------------------------------------------


def test_the_openai_client_against_a_live_server(live_server: str) -> None:
    openai = pytest.importorskip("openai", reason="the openai package is in the test extra")
    import httpx

    c = openai.OpenAI(base_url=f"{live_server}/v1", api_key="none", max_retries=0)
    (model,) = c.models.list().data
    text = "the stock market fell"
    out = c.completions.create(model=model.id, prompt=text, max_tokens=0, echo=True, logprobs=1)
    lps = out.choices[0].logprobs.token_logprobs
    want = httpx.post(f"{live_server}/perplexity", json={"text": text, "eos": False}).json()
    assert math.isclose(sum(lps[1:]), want["results"][0]["log_prob"], abs_tol=1e-4)
    many = c.completions.create(model=model.id, prompt=["the", "a"], max_tokens=3, n=2, seed=1)
    assert [ch.index for ch in many.choices] == [0, 1, 2, 3]
    pieces = [ch.choices[0].text for ch in c.completions.create(
        model=model.id, prompt="the", max_tokens=4, temperature=0, stream=True) if ch.choices]
    whole = c.completions.create(model=model.id, prompt="the", max_tokens=4, temperature=0)
    assert "".join(pieces) == whole.choices[0].text
    with pytest.raises(openai.BadRequestError) as e:
        c.completions.create(model=model.id, prompt="the", max_tokens=2, best_of=3)
    assert "best_of" in str(e.value)
    with pytest.raises(openai.NotFoundError):
        c.completions.create(model="gpt-4", prompt="the", max_tokens=1)

