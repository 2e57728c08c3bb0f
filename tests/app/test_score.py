"""POST /perplexity, /next-word and /tokenize: conventions; agreement with an independent scorer."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from model.normalize import tokenize
from model.weights import LoadedWeights
from tests.naive import naive_logprobs, naive_next


def post(client: TestClient, path: str, body: dict) -> dict:
    r = client.post(path, json=body)
    assert r.status_code == 200, r.text
    out: dict = r.json()
    return out


def check_consistent(result: dict) -> None:
    """log_prob, num_tokens, perplexity and log10_prob agree with each other."""
    n, lp = result["num_tokens"], result["log_prob"]
    assert result["perplexity"] == pytest.approx(math.exp(-lp / n), rel=1e-12)
    assert result["log10_prob"] == pytest.approx(lp / math.log(10), rel=1e-12)
    if result.get("tokens") is not None:
        assert len(result["tokens"]) == n
        assert sum(t["logprob"] for t in result["tokens"]) == pytest.approx(lp, abs=1e-6)
        assert result["num_oov"] == sum(t["oov"] for t in result["tokens"])


# --- the book model against the independent scorer -------------------------------------------


@pytest.fixture(scope="module")
def ptb_test_lines(ptb_dir: Path) -> list[str]:
    lines = (ptb_dir / "ptb.test.txt").read_text(encoding="utf-8").splitlines()
    return [ln for ln in lines if ln.strip()][:24]


def test_book_perplexity_agrees_with_the_independent_scorer_on_ptb(
    book_client: TestClient, book_loaded: LoadedWeights, ptb_test_lines: list[str]
) -> None:
    vocab = book_loaded.vocab
    body = post(book_client, "/perplexity", {"texts": ptb_test_lines, "return_tokens": True})
    assert len(body["results"]) == len(ptb_test_lines) >= 20
    total_lp, total_n = 0.0, 0
    for line, res in zip(ptb_test_lines, body["results"], strict=True):
        ids = vocab.encode(line.split())  # PTB text is a fixed point of the normaliser
        assert [t["id"] for t in res["tokens"]] == [*ids, vocab.eos_id]
        want = naive_logprobs(
            book_loaded.params, book_loaded.config, [vocab.eos_id, *ids, vocab.eos_id]
        )
        assert res["log_prob"] == pytest.approx(want.sum(), abs=1e-4)
        np.testing.assert_allclose([t["logprob"] for t in res["tokens"]], want, atol=1e-4)
        assert res["num_tokens"] == len(ids) + 1
        check_consistent(res)
        total_lp += res["log_prob"]
        total_n += res["num_tokens"]
    agg = body["aggregate"]
    assert agg["num_tokens"] == total_n
    assert agg["log_prob"] == pytest.approx(total_lp, abs=1e-9)
    assert agg["perplexity"] == pytest.approx(math.exp(-total_lp / total_n), rel=1e-12)
    # the book model is a real language model: PTB perplexity in the usual range
    assert 50 < agg["perplexity"] < 400


def test_book_perplexity_agrees_on_normalised_user_text(
    book_client: TestClient, book_loaded: LoadedWeights, shared_data_dir: Path
) -> None:
    cases = json.loads((shared_data_dir / "normalizer_cases.json").read_text())["cases"][:12]
    vocab = book_loaded.vocab
    texts = [c["input"] for c in cases]
    body = post(book_client, "/perplexity", {"texts": texts, "eos": True})
    for case, res in zip(cases, body["results"], strict=True):
        if not case["tokens"]:
            continue
        tok = post(book_client, "/tokenize", {"text": case["input"]})
        assert tok["token_strs"] == case["tokens"]
        ids = [vocab.eos_id, *vocab.encode(case["tokens"]), vocab.eos_id]
        want = naive_logprobs(book_loaded.params, book_loaded.config, ids)
        assert res["log_prob"] == pytest.approx(want.sum(), abs=1e-4)
        assert res["num_oov"] == case["tokens"].count("<unk>")
        check_consistent(res)


def test_book_next_word_agrees_with_the_independent_scorer(
    book_client: TestClient, book_loaded: LoadedWeights
) -> None:
    vocab = book_loaded.vocab
    body = post(
        book_client,
        "/next-word",
        {"context": "the new york stock", "top_k": 5, "targets": ["exchange", "market"]},
    )
    ids = [vocab.eos_id, *vocab.encode(["the", "new", "york", "stock"])]
    dist = naive_next(book_loaded.params, book_loaded.config, ids)
    order = np.argsort(-dist)
    assert [p["id"] for p in body["predictions"]] == order[:5].tolist()
    assert body["predictions"][0]["token"] == "exchange"
    for t in body["targets"]:
        i = vocab.word_to_id[t["token"]]
        assert t["logprob"] == pytest.approx(dist[i], abs=1e-4)
        assert t["rank"] == int(np.flatnonzero(order == i)[0]) + 1
    p = np.exp(dist)
    assert body["entropy_bits"] == pytest.approx(-(p * dist).sum() / math.log(2), abs=1e-3)


# --- conventions on the tiny model --------------------------------------------------------------


def test_single_text_and_batch_give_the_same_result(client: TestClient) -> None:
    one = post(client, "/perplexity", {"text": "the stock market fell"})
    batch = post(client, "/perplexity", {"texts": ["a dog ran", "the stock market fell", "N"]})
    assert one["results"][0]["log_prob"] == pytest.approx(batch["results"][1]["log_prob"], abs=1e-4)
    assert one["aggregate"]["num_tokens"] == one["results"][0]["num_tokens"] == 5
    assert one["results"][0]["text"] == "the stock market fell"
    assert one["results"][0]["tokens"] is None  # return_tokens is off
    for res in batch["results"]:
        check_consistent(res)


def test_eos_false_drops_the_closing_eos(client: TestClient, tiny_loaded: LoadedWeights) -> None:
    with_eos = post(client, "/perplexity", {"text": "the market", "return_tokens": True})
    without = post(
        client, "/perplexity", {"text": "the market", "eos": False, "return_tokens": True}
    )
    a, b = with_eos["results"][0], without["results"][0]
    assert a["num_tokens"] == 3 and b["num_tokens"] == 2
    assert [t["token"] for t in a["tokens"]] == ["the", "market", "<eos>"]
    assert a["tokens"][:2] == b["tokens"]
    ids = [tiny_loaded.vocab.eos_id, *tokenize("the market", tiny_loaded.vocab).ids]
    want = naive_logprobs(tiny_loaded.params, tiny_loaded.config, ids)
    assert b["log_prob"] == pytest.approx(want.sum(), abs=1e-4)


def test_a_text_without_tokens_is_answered_as_kenlm_answers_it(
    client: TestClient, tiny_loaded: LoadedWeights
) -> None:
    eos = tiny_loaded.vocab.eos_id
    p_eos = naive_logprobs(tiny_loaded.params, tiny_loaded.config, [eos, eos])
    body = post(client, "/perplexity",
                {"texts": ["the market", "", "!!! ... ,", "\n\n"], "return_tokens": True})
    for res in body["results"][1:]:  # only the closing <eos> is predicted
        assert res["num_tokens"] == 1 and res["num_oov"] == 0
        assert res["log_prob"] == pytest.approx(p_eos.sum(), abs=1e-4)
        assert [t["token"] for t in res["tokens"]] == ["<eos>"]
        check_consistent(res)
    assert body["aggregate"]["num_tokens"] == 3 + 3 * 1
    off = post(client, "/perplexity", {"texts": ["", " "], "eos": False, "return_tokens": True})
    for res in off["results"]:  # nothing predicted at all
        assert res["num_tokens"] == 0 and res["log_prob"] == 0.0 and res["tokens"] == []
        assert res["perplexity"] is None and res["perplexity_excl_oov"] is None
    assert off["aggregate"] == {"perplexity": None, "log_prob": 0.0, "num_tokens": 0}
    top = post(client, "/perplexity", {"text": "", "eos": False, "return_tokens": True,
                                       "top_k": 3})
    assert top["results"][0]["tokens"] == []


def test_oov_words_score_as_unk_and_can_be_excluded(client: TestClient) -> None:
    body = post(client, "/perplexity", {"text": "the qqxyzzy market", "return_tokens": True})
    res = body["results"][0]
    assert res["num_oov"] == 1
    assert [t["oov"] for t in res["tokens"]] == [False, True, False, False]
    kept = [t["logprob"] for t in res["tokens"] if not t["oov"]]
    assert res["perplexity_excl_oov"] == pytest.approx(math.exp(-sum(kept) / len(kept)))
    only_oov = post(client, "/perplexity", {"text": "qqxyzzy", "eos": False})
    assert only_oov["results"][0]["perplexity_excl_oov"] is None


def test_oov_reject_lists_the_words(client: TestClient) -> None:
    r = client.post(
        "/perplexity", json={"texts": ["the market", "a qqxyzzy and zzqqv"], "oov": "reject"}
    )
    assert r.status_code == 409  # well formed; the served vocabulary lacks the words
    err = r.json()
    assert err["error_type"] == "oov" and err["param"] == "texts[1]"
    assert "qqxyzzy" in err["error"] and "zzqqv" in err["error"]
    assert err["details"] == [{"param": "texts[1]", "index": 1, "oov": ["qqxyzzy", "zzqqv"]}]
    ok = post(client, "/perplexity", {"texts": ["the market"], "oov": "reject"})
    assert ok["results"][0]["num_oov"] == 0


def test_results_do_not_depend_on_the_batch(client: TestClient) -> None:
    texts = ["the stock market fell", "a", "the big house on the new york stock market rose"]
    batch = post(client, "/perplexity", {"texts": texts})["results"]
    for text, res in zip(texts, batch, strict=True):
        alone = post(client, "/perplexity", {"text": text})["results"][0]
        assert alone["num_tokens"] == res["num_tokens"]
        assert alone["log_prob"] == pytest.approx(res["log_prob"], abs=1e-4)


def test_next_word_targets_and_ranks(client: TestClient, tiny_loaded: LoadedWeights) -> None:
    vocab = tiny_loaded.vocab
    body = post(
        client,
        "/next-word",
        {"context": "The Stock", "top_k": 4, "targets": ["Market", "qqxyzzy", "<eos>"]},
    )
    assert body["context_tokens"] == ["the", "stock"]
    assert body["oov"] == []
    preds = body["predictions"]
    assert len(preds) == 4
    assert [p["prob"] for p in preds] == sorted((p["prob"] for p in preds), reverse=True)
    for p in preds:
        assert p["prob"] == pytest.approx(math.exp(p["logprob"]))
        assert vocab.id_to_word[p["id"]] == p["token"]
    market, oov, eos = body["targets"]
    assert market["token"] == "market" and market["in_vocab"]
    dist = naive_next(
        tiny_loaded.params, tiny_loaded.config, [vocab.eos_id, *vocab.encode(["the", "stock"])]
    )
    assert market["logprob"] == pytest.approx(dist[vocab.word_to_id["market"]], abs=1e-4)
    assert market["rank"] == int((dist > dist[vocab.word_to_id["market"]]).sum()) + 1
    assert oov == {
        "token": "qqxyzzy",
        "num_tokens": 1,
        "in_vocab": False,
        "prob": None,
        "logprob": None,
        "rank": None,
    }
    assert eos["in_vocab"] and eos["token"] == "<eos>"
    assert preds[0]["logprob"] >= market["logprob"]
    assert 0 < body["entropy_bits"] <= math.log2(len(vocab)) + 1e-6


def test_next_word_targets_of_several_tokens_and_of_none(
    client: TestClient, tiny_loaded: LoadedWeights
) -> None:
    """A sequence's probability is the chain of its tokens' after the context, as /perplexity
    scores the context followed by it; the empty sequence is certain."""
    body = post(client, "/next-word", {"context": "the stock", "targets": [
        "market fell", "don't", "", "big qqxyzzy"]})
    seq, clitic, empty, oov = body["targets"]
    assert (seq["token"], seq["num_tokens"], seq["rank"]) == ("market fell", 2, None)
    whole = post(client, "/perplexity", {"text": "the stock market fell", "eos": False,
                                         "return_tokens": True})["results"][0]["tokens"]
    assert seq["logprob"] == pytest.approx(whole[2]["logprob"] + whole[3]["logprob"], abs=1e-4)
    assert seq["prob"] == pytest.approx(math.exp(seq["logprob"]))
    assert clitic["token"] == "do n't" and clitic["num_tokens"] == 2
    assert empty == {"token": "", "num_tokens": 0, "in_vocab": True, "prob": 1.0,
                     "logprob": 0.0, "rank": None}
    assert oov["in_vocab"] is False and oov["prob"] is None and oov["num_tokens"] == 2
    # a one-token target keeps its rank; alone or among others the numbers agree
    one = post(client, "/next-word", {"context": "the stock", "targets": ["market"]})
    assert one["targets"][0]["rank"] >= 1


def test_next_word_with_empty_context_and_oov_context(client: TestClient) -> None:
    empty = post(client, "/next-word", {"context": ""})
    assert empty["context_tokens"] == [] and len(empty["predictions"]) == 10
    assert empty["targets"] == []
    oov = post(client, "/next-word", {"context": "the qqxyzzy", "top_k": 1})
    assert oov["oov"] == ["qqxyzzy"] and oov["context_tokens"] == ["the", "<unk>"]


def test_tokenize(client: TestClient, tiny_loaded: LoadedWeights) -> None:
    vocab = tiny_loaded.vocab
    body = post(client, "/tokenize", {"text": "The market can't qqxyzzy.\nNew"})
    words = ["the", "market", "ca", "n't", "qqxyzzy", "<eos>", "new"]
    assert body["words"] == words
    assert body["token_strs"] == [w if w in vocab else "<unk>" for w in words]
    assert body["tokens"] == vocab.encode(words)
    assert body["oov"] == [w not in vocab for w in words]
    assert body["oov_words"] == [w for w in words if w not in vocab]
    assert "qqxyzzy" in body["oov_words"]
    assert body["count"] == len(words)
    assert post(client, "/tokenize", {"text": ""})["count"] == 0


def test_top_k_gives_each_tokens_rank_and_the_alternatives(client: TestClient) -> None:
    text = "the stock market fell"
    plain = client.post("/perplexity", json={"text": text, "return_tokens": True}).json()
    r = client.post("/perplexity", json={"text": text, "return_tokens": True, "top_k": 4})
    assert r.status_code == 200, r.text
    res, ref = r.json()["results"][0], plain["results"][0]
    assert abs(res["log_prob"] - ref["log_prob"]) < 1e-4
    words = [t["token"] for t in ref["tokens"]]
    for j, t in enumerate(res["tokens"]):
        # the alternatives at position j are /next-word's after the tokens before it
        nw = client.post("/next-word", json={"context": " ".join(words[:j]), "top_k": 4}).json()
        assert [a["id"] for a in t["top"]] == [p["id"] for p in nw["predictions"]]
        for a, p in zip(t["top"], nw["predictions"], strict=True):
            assert abs(a["logprob"] - p["logprob"]) < 1e-4
        # rank 1 + the tokens more likely than the target
        assert t["rank"] >= 1 and (t["rank"] == 1) == (t["id"] == t["top"][0]["id"])
        assert abs(t["logprob"] - ref["tokens"][j]["logprob"]) < 1e-4
    assert "rank" not in ref["tokens"][0]  # only asked for


def test_top_k_limits(client: TestClient) -> None:
    r = client.post("/perplexity", json={"text": "a b", "top_k": 3})
    assert r.status_code == 422 and r.json()["param"] == "top_k"
    r = client.post("/perplexity", json={"text": "a b", "return_tokens": True, "top_k": 101})
    assert r.status_code == 422 and "limit of 100" in r.json()["error"]
