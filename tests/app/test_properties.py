"""Property tests (hypothesis) of the scorer, the sampler and the normaliser: model and HTTP.

tests/model/test_vocab.py already holds the normaliser's own properties (never raises,
idempotent) and tests/model/test_inference.py the top-k / top-p set of choose_next without
penalties; these add the rest: distributions that sum to 1 and perplexities that are finite and
>= 1 even with extreme weights, typical-p, the ban and penalty, max_new_tokens, and the same
promises kept by the HTTP routes for any unicode a client can send. ``RNNLM_FUZZ_EXAMPLES``
scales the example counts (50 is the normal suite; ``make fuzz`` raises it).
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.config import Settings
from app.main import create_app
from model.inference import (
    InferenceModel,
    SamplingParams,
    choose_next,
    generate,
    next_logprobs,
    score,
)
from model.normalize import tokenize
from model.rnnlm import ModelConfig, init_params
from model.weights import LoadedWeights

SCALE = int(os.environ.get("RNNLM_FUZZ_EXAMPLES", "50")) / 50


def examples(n: int) -> settings:
    """Hypothesis settings for n examples in the normal suite (scaled by RNNLM_FUZZ_EXAMPLES)."""
    return settings(
        max_examples=max(1, round(n * SCALE)),
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


# Any unicode a JSON client can send: lone surrogates included (JSON escapes them), with the
# characters that break naive code (NUL, controls, line and paragraph separators, BOM, RTL
# override, zero-width joiner, combining marks) drawn more often.
NASTY = "\x00\x07\x1b\x7f\x85\u2028\u2029\ufeff\u202e\u200d\u0301\ufffd\n\r\t \"\\'"
any_char = st.one_of(st.characters(exclude_categories=()), st.sampled_from(NASTY))
any_text = st.text(any_char, max_size=200)
_SURROGATE = re.compile("[\ud800-\udfff]")


def as_json(body: Any) -> bytes:
    """The body as strict ASCII JSON (lone surrogates escaped, as a JSON client sends them)."""
    return json.dumps(body, ensure_ascii=True, allow_nan=False).encode("ascii")


def as_received(text: str) -> str:
    """What the service reads: JSON joins escaped surrogate pairs; lone ones become U+FFFD."""
    return _SURROGATE.sub("\ufffd", json.loads(json.dumps(text)))


def post(client: TestClient, path: str, body: Any) -> Any:
    """POST a JSON body; the answer is never a 5xx."""
    r = client.post(path, content=as_json(body), headers={"content-type": "application/json"})
    assert r.status_code < 500, r.text
    return r


# --- the model -------------------------------------------------------------------------------

V = 50
EOS, UNK = 0, 1


def random_model(scale: float) -> InferenceModel:
    """A 2-layer tied model with random weights; scale 30 saturates the LSTM, logits in the 100s."""
    cfg = ModelConfig(V, 16, 16, 2, True, 0.5)
    rng = np.random.default_rng(7)
    params = init_params(cfg, rng)
    for name, a in params.items():
        params[name] = ((a + rng.standard_normal(a.shape) * 0.5) * scale).astype(np.float32)
    return InferenceModel.from_params(cfg, params)


MODELS = {"normal": random_model(1.0), "extreme": random_model(30.0)}
ids_seq = st.lists(st.integers(0, V - 1), min_size=1, max_size=40)


@pytest.mark.parametrize("kind", list(MODELS))
@examples(40)
@given(seqs=st.lists(ids_seq, min_size=1, max_size=4))
def test_next_word_distribution_sums_to_one(kind: str, seqs: list[list[int]]) -> None:
    logp, _ = next_logprobs(MODELS[kind], [[EOS, *s] for s in seqs])
    assert np.isfinite(logp).all() and (logp <= 0).all()
    assert np.allclose(np.exp(logp.astype(np.float64)).sum(axis=1), 1.0, atol=1e-5)


@pytest.mark.parametrize("kind", list(MODELS))
@examples(40)
@given(seqs=st.lists(ids_seq, min_size=1, max_size=4))
def test_perplexity_is_finite_and_at_least_one(kind: str, seqs: list[list[int]]) -> None:
    full = [[EOS, *s, EOS] for s in seqs]
    lps, _ = score(MODELS[kind], [f[:-1] for f in full], [f[1:] for f in full])
    for f, lp in zip(full, lps, strict=True):
        assert lp.shape == (len(f) - 1,)
        lp64 = lp.astype(np.float64)
        assert np.isfinite(lp64).all() and (lp64 <= 0).all()
        ppl = math.exp(-lp64.sum() / lp64.size)  # extreme logprobs reach -200, not -709
        assert math.isfinite(ppl) and ppl >= 1.0


logits_row = st.lists(st.floats(-30, 30), min_size=V, max_size=V).map(
    lambda xs: np.array(xs, dtype=np.float32)
)


@examples(80)
@given(
    logits=logits_row,
    typical_p=st.floats(0.01, 1.0),
    temperature=st.floats(0.1, 5.0),
    seed=st.integers(0, 2**32),
)
def test_typical_p_never_samples_outside_the_typical_set(
    logits: np.ndarray, typical_p: float, temperature: float, seed: int
) -> None:
    params = SamplingParams(temperature=temperature, typical_p=typical_p, ban_unk=False)
    tok = choose_next(logits, params, np.random.default_rng(seed))
    z = logits.astype(np.float64) / temperature
    q = np.exp(z - z.max())
    q /= q.sum()
    surprise = -np.log(np.maximum(q, 1e-300))
    entropy = float((q * surprise).sum())
    distance = np.abs(surprise - entropy)
    # the tokens more typical than the one drawn hold less than typical_p of the mass
    closer = q[distance < distance[tok] - 1e-9].sum()
    assert closer < typical_p + 1e-9


@examples(80)
@given(
    logits=logits_row,
    top_k=st.integers(1, V),
    penalty=st.floats(0.2, 5.0),
    history=st.lists(st.integers(0, V - 1), max_size=30),
    do_sample=st.booleans(),
    seed=st.integers(0, 2**32),
)
def test_ban_and_penalty_then_top_k(
    logits: np.ndarray,
    top_k: int,
    penalty: float,
    history: list[int],
    do_sample: bool,
    seed: int,
) -> None:
    """<unk> is never drawn when banned; the draw is among the k best penalised logits."""
    params = SamplingParams(do_sample=do_sample, top_k=top_k, repetition_penalty=penalty)
    tok = choose_next(logits, params, np.random.default_rng(seed), history, UNK)
    assert tok != UNK
    x = logits.astype(np.float64)
    seen = sorted(set(history))
    x[seen] = np.where(x[seen] > 0, x[seen] / penalty, x[seen] * penalty)
    x[UNK] = -np.inf
    kth = np.sort(x)[::-1][min(top_k, V) - 1]
    assert x[tok] >= kth - 1e-9
    if not do_sample:
        assert x[tok] == x.max()


def test_subnormal_temperature_is_greedy_not_an_error() -> None:
    logits = np.linspace(-3, 3, V).astype(np.float32)
    params = SamplingParams(temperature=5e-324, ban_unk=False)
    assert choose_next(logits, params, np.random.default_rng(0)) == V - 1
    penalty = SamplingParams(temperature=1.0, repetition_penalty=5e-324, ban_unk=False)
    assert 0 <= choose_next(logits, penalty, np.random.default_rng(0), history=[3, 4]) < V


@examples(60)
@given(
    prompt=ids_seq,
    max_new=st.integers(1, 40),
    stop_at_eos=st.booleans(),
    stops=st.lists(st.lists(st.integers(0, V - 1), min_size=1, max_size=3), max_size=3),
    temperature=st.floats(0.2, 3.0),
    seed=st.one_of(st.none(), st.integers(0, 2**32)),
)
def test_generation_never_exceeds_max_new_tokens(
    prompt: list[int],
    max_new: int,
    stop_at_eos: bool,
    stops: list[list[int]],
    temperature: float,
    seed: int | None,
) -> None:
    rng = None if seed is None else np.random.default_rng(seed)
    params = SamplingParams(do_sample=seed is not None, temperature=temperature)
    steps = list(
        generate(MODELS["normal"], [EOS, *prompt], max_new, params, rng, EOS, UNK, stop_at_eos,
                 stops)
    )  # fmt: skip
    assert 1 <= len(steps) <= max_new
    assert all(s.finish_reason is None for s in steps[:-1])
    ids = [s.id for s in steps]
    reason = steps[-1].finish_reason
    if reason == "length":
        assert len(steps) == max_new
    elif reason == "eos_token":
        assert stop_at_eos and ids[-1] == EOS
    else:
        assert reason == "stop_sequence"
        assert any(ids[-len(s) :] == s for s in stops)
    if stop_at_eos:
        assert EOS not in ids[:-1]
    assert UNK not in ids


# --- over HTTP -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def http(tiny_weights: Path, tiny_loaded: LoadedWeights) -> Iterator[TestClient]:
    """An app on tiny_weights whose /next-word may return the whole vocabulary."""
    app = create_app(Settings(weights=tiny_weights, max_top_k=len(tiny_loaded.vocab)))
    with TestClient(app) as c:
        yield c


@pytest.fixture(scope="module")
def tiny_model(tiny_loaded: LoadedWeights) -> InferenceModel:
    """The served model, for independent recomputation."""
    return InferenceModel.from_params(tiny_loaded.config, tiny_loaded.params)


@examples(100)
@given(text=any_text)
def test_tokenize_any_unicode(http: TestClient, tiny_loaded: LoadedWeights, text: str) -> None:
    r = post(http, "/tokenize", {"text": text})
    assert r.status_code == 200, r.text
    body = r.json()
    want = tokenize(as_received(text), tiny_loaded.vocab)
    assert body["words"] == want.words and body["tokens"] == want.ids
    assert body["token_strs"] == [tiny_loaded.vocab.id_to_word[i] for i in body["tokens"]]
    assert body["oov"] == [t == "<unk>" for t in body["token_strs"]]
    assert body["count"] == len(body["tokens"])


@examples(80)
@given(texts=st.lists(any_text, min_size=1, max_size=4), eos=st.booleans())
def test_perplexity_of_any_unicode(
    http: TestClient, tiny_loaded: LoadedWeights, texts: list[str], eos: bool
) -> None:
    r = post(http, "/perplexity", {"texts": texts, "eos": eos, "return_tokens": True})
    toks = [tokenize(as_received(t), tiny_loaded.vocab) for t in texts]
    assert r.status_code == 200, r.text
    body = r.json()
    for res, tok in zip(body["results"], toks, strict=True):
        assert res["num_tokens"] == len(tok.ids) + eos
        if res["num_tokens"] == 0:  # an empty text with eos off: nothing predicted
            assert res["perplexity"] is None and res["log_prob"] == 0.0
            continue
        assert math.isfinite(res["perplexity"]) and res["perplexity"] >= 1.0
        assert math.isfinite(res["log_prob"]) and res["log_prob"] <= 0.0
        assert math.isclose(res["perplexity"], math.exp(-res["log_prob"] / res["num_tokens"]))
        assert math.isclose(sum(t["logprob"] for t in res["tokens"]), res["log_prob"],
                            rel_tol=1e-9, abs_tol=1e-9)  # fmt: skip
        excl = res["perplexity_excl_oov"]
        assert (excl is None) == (res["num_oov"] == res["num_tokens"])
        assert excl is None or (math.isfinite(excl) and excl >= 1.0)
    agg = body["aggregate"]
    assert agg["num_tokens"] == sum(res["num_tokens"] for res in body["results"])
    if agg["num_tokens"] == 0:
        assert agg["perplexity"] is None
        return
    assert agg["perplexity"] >= 1.0
    assert math.isclose(agg["perplexity"], math.exp(-agg["log_prob"] / agg["num_tokens"]))


@examples(15)
@given(context=any_text)
def test_next_word_distribution_over_http_sums_to_one(
    http: TestClient, tiny_loaded: LoadedWeights, context: str
) -> None:
    V_ = len(tiny_loaded.vocab)
    r = post(http, "/next-word", {"context": context, "top_k": V_})
    assert r.status_code == 200, r.text
    body = r.json()
    probs = [p["prob"] for p in body["predictions"]]
    assert len(probs) == V_
    assert abs(math.fsum(probs) - 1.0) <= 1e-5
    assert probs == sorted(probs, reverse=True)
    assert 0.0 <= body["entropy_bits"] <= math.log2(V_) + 1e-6


sampling = st.fixed_dictionaries(
    {
        "max_new_tokens": st.integers(1, 25),
        "seed": st.integers(0, 2**64 - 1),
        "temperature": st.floats(0.05, 4.0),
        "stop_at_eos": st.booleans(),
    }
)


@examples(50)
@given(prompt=any_text, p=sampling, top_k=st.integers(1, 5))
def test_generate_top_k_stays_in_its_set(
    http: TestClient, tiny_model: InferenceModel, prompt: str, p: dict, top_k: int
) -> None:
    """Each drawn token is among that step's top_k (reported by top_n_tokens = top_k)."""
    params = {**p, "top_k": top_k, "top_n_tokens": top_k, "ban_unk": False, "details": True}
    r = post(http, "/generate", {"inputs": prompt, "parameters": params})
    assert r.status_code == 200, r.text
    d = r.json()["details"]
    assert 1 <= d["generated_tokens"] == len(d["tokens"]) <= p["max_new_tokens"]
    for token, top in zip(d["tokens"], d["top_tokens"], strict=True):
        assert len(top) == top_k
        assert token["id"] in {t["id"] for t in top}


@examples(40)
@given(prompt=any_text, p=sampling, top_p=st.floats(0.05, 0.99))
def test_generate_top_p_stays_in_the_nucleus(
    http: TestClient, tiny_model: InferenceModel, prompt: str, p: dict, top_p: float
) -> None:
    """Recomputed independently: the tokens likelier than each drawn one hold < top_p."""
    params = {**p, "top_p": top_p, "ban_unk": False, "details": True}
    r = post(http, "/generate", {"inputs": prompt, "parameters": params})
    assert r.status_code == 200, r.text
    d = r.json()["details"]
    context = [t["id"] for t in d["prefill"]]
    for token in d["tokens"]:
        logp, _ = next_logprobs(tiny_model, [context])
        lp = logp[0].astype(np.float64)
        assert abs(lp[token["id"]] - token["logprob"]) < 1e-4
        z = lp / max(p["temperature"], 1e-30)
        q = np.exp(z - z.max())
        q /= q.sum()
        assert q[q > q[token["id"]] * (1 + 1e-9)].sum() < top_p + 1e-6
        context.append(token["id"])


stop_words = st.lists(st.sampled_from(["the", "a", "of", "market", "and", "N"]), min_size=1,
                      max_size=2).map(" ".join)  # fmt: skip


@examples(50)
@given(
    prompt=any_text,
    p=sampling,
    do_sample=st.booleans(),
    stops=st.lists(stop_words, max_size=4),
    stream=st.booleans(),
)
def test_generation_over_http_never_exceeds_max_new_tokens(
    http: TestClient, prompt: str, p: dict, do_sample: bool, stops: list[str], stream: bool
) -> None:
    params = {**p, "do_sample": do_sample, "stop": stops, "details": True}
    body = {"inputs": prompt, "parameters": params}
    if not stream:
        r = post(http, "/generate", body)
        assert r.status_code == 200, r.text
        d = r.json()["details"]
        n, reason = d["generated_tokens"], d["finish_reason"]
        assert n == len(d["tokens"])
        specials = [t["special"] for t in d["tokens"]]
    else:
        r = post(http, "/generate_stream", body)
        assert r.status_code == 200, r.text
        events = [json.loads(line[5:]) for line in r.text.splitlines() if line.startswith("data:")]
        assert [e["index"] for e in events] == list(range(1, len(events) + 1))
        assert all(e["details"] is None for e in events[:-1])
        last = events[-1]["details"]
        n, reason = last["generated_tokens"], last["finish_reason"]
        assert n == len(events)
        specials = [e["token"]["special"] for e in events]
    assert 1 <= n <= p["max_new_tokens"]
    assert reason != "length" or n == p["max_new_tokens"]
    assert reason != "eos_token" or (p["stop_at_eos"] and specials[-1])
    assert reason != "stop_sequence" or stops
    if p["stop_at_eos"]:
        assert not any(specials[:-1])
