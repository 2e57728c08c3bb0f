"""A model trained on one's own text, served: every route reads text with the weights' own
(plain) normaliser, keeps case and punctuation, and scores as an independent float64
computation does; ``rnnlm evaluate --file --per-line`` agrees with /perplexity."""

from __future__ import annotations

import json
import unicodedata
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from app.config import Settings
from app.main import create_app
from model.cli import main
from model.functions import log_softmax
from model.rnnlm import BetterRnnlm
from model.weights import LoadedWeights, load_weights
from tests.own_corpus import write_corpus


@pytest.fixture(scope="module")
def own(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Weights trained by `rnnlm train` on the generated corpus, and its test file."""
    d = tmp_path_factory.mktemp("own")
    train, valid, test = write_corpus(d / "data")
    rc = main(["train", "--train-file", str(train), "--valid-file", str(valid), "--out",
               str(d / "w"), "--run-dir", str(d / "run"), "--wordvec-size", "16",
               "--hidden-size", "16", "--batch-size", "4", "--bptt", "10", "--epochs", "2",
               "--lr", "5", "--quiet", "--no-final-eval"])
    assert rc == 0
    return d / "w", test


@pytest.fixture(scope="module")
def loaded(own: tuple[Path, Path]) -> LoadedWeights:
    return load_weights(own[0])


@pytest.fixture(scope="module")
def client(own: tuple[Path, Path]) -> Iterator[TestClient]:
    with TestClient(create_app(Settings(weights=own[0]))) as c:
        yield c


def reference_logprob(w: LoadedWeights, text: str) -> tuple[list[str], float]:
    """The plain rule by hand and the training model's float64 forward, dropout off."""
    words = unicodedata.normalize("NFKC", text).split()
    ids = [w.vocab.word_to_id.get(t, w.vocab.unk_id) for t in words]
    seq = [w.vocab.eos_id, *ids, w.vocab.eos_id]
    model = BetterRnnlm(w.config, {k: v.astype(np.float64) for k, v in w.params.items()},
                        dtype=np.float64)
    logits = model.logits(np.array([seq[:-1]]))[0]  # (T, V)
    lp = log_softmax(logits, axis=1)[np.arange(len(seq) - 1), seq[1:]]
    return [w.vocab.id_to_word[i] for i in ids], float(lp.sum())


def test_perplexity_keeps_case_and_punctuation_and_matches_float64(
    client: TestClient, loaded: LoadedWeights
) -> None:
    text = "Mrs. Tanaka paid the bill. on 3/4! Σοφία 顧客 ENTERED €35.50"
    r = client.post("/perplexity", json={"text": text, "return_tokens": True}).json()
    words, want = reference_logprob(loaded, text)
    res = r["results"][0]
    assert [t["token"] for t in res["tokens"]] == [*words, "<eos>"]
    assert "Mrs." in words and "bill." in words and "Σοφία" in words  # nothing dropped
    assert res["num_tokens"] == len(words) + 1
    assert abs(res["log_prob"] - want) < 1e-4


def test_tokenize_uses_the_weights_normaliser(client: TestClient) -> None:
    r = client.post("/tokenize", json={"text": "The clerk PAID order #4417,\r\n\r\nok? <eos> x"})
    body = r.json()
    assert body["words"] == ["The", "clerk", "PAID", "order", "#4417,", "<eos>", "ok?",
                             "<eos>", "x"]
    assert "PAID" in body["oov_words"] and body["token_strs"][2] == "<unk>"


def test_info_shows_the_normaliser(client: TestClient) -> None:
    assert client.get("/info").json()["model"]["normalizer"] == {"name": "plain",
                                                                 "lowercase": False}


def test_generation_and_next_word_speak_the_models_vocabulary(
    client: TestClient, loaded: LoadedWeights
) -> None:
    g = client.post("/generate", json={"inputs": "Mrs. Tanaka", "parameters": {
        "max_new_tokens": 12, "stop_at_eos": False, "details": True}}).json()
    toks = [t["id"] for t in g["details"]["tokens"]]
    expected = "".join(t["text"] for t in g["details"]["tokens"])
    assert g["generated_text"] == expected.rstrip("\n")
    assert all(0 <= i < len(loaded.vocab) for i in toks)
    assert [p["text"] for p in g["details"]["prefill"]] == ["<eos>", "Mrs.", "Tanaka"]
    nw = client.post("/next-word", json={"context": "The clerk", "top_k": 3}).json()
    assert nw["context_tokens"] == ["The", "clerk"]
    assert all(p["token"] in loaded.vocab for p in nw["predictions"])
    # a stop sequence is matched on this normaliser's tokens, case kept
    first = g["details"]["tokens"][0]["text"].strip()
    s = client.post("/generate", json={"inputs": "Mrs. Tanaka", "parameters": {
        "max_new_tokens": 12, "stop_at_eos": False, "stop": [first], "details": True}}).json()
    assert s["details"]["finish_reason"] == "stop_sequence"


def test_evaluate_per_line_agrees_with_the_service(
    own: tuple[Path, Path], client: TestClient, capsys: pytest.CaptureFixture[str]
) -> None:
    weights, test = own
    lines = [x for x in test.read_text(encoding="utf-8").splitlines() if x.strip()][:40]
    sample = test.parent / "sample.txt"
    sample.write_text("\n\n".join(lines) + "\n", encoding="utf-8")
    assert main(["evaluate", str(weights), "--file", str(sample), "--per-line", "--json",
                 "--quiet"]) == 0
    r = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    agg = client.post("/perplexity", json={"texts": lines}).json()["aggregate"]
    assert r["tokens"] == agg["num_tokens"] and r["lines"] == len(lines)
    assert abs(r["log_prob"] - agg["log_prob"]) < 1e-3
    assert abs(r["perplexity"] - agg["perplexity"]) / agg["perplexity"] < 1e-5
    # one stream: the lines' tokens each followed by <eos>, every token after the first
    assert main(["evaluate", str(weights), "--file", str(sample), "--json", "--quiet"]) == 0
    one = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert one["tokens"] == agg["num_tokens"] - 1
