"""model.scorer: the bulk scorer against an independent per-token loop, batching, long texts."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from model import scorer as scorer_mod
from model.normalize import tokenize
from model.scorer import InputLineError, ScoreOptions, Scorer, parse_line
from tests.naive import naive_logprobs

SMALL = Path(__file__).resolve().parents[2] / "weights" / "ptb-small"


@pytest.fixture(scope="module")
def small() -> Scorer:
    return Scorer.load(SMALL)


def naive(s: Scorer, text: str, eos: bool = True) -> np.ndarray:
    e = s.vocab.eos_id
    ids = [e, *tokenize(text, s.vocab, s.weights.normalizer).ids, *([e] if eos else [])]
    if len(ids) < 2:
        return np.empty(0)
    return naive_logprobs(s.weights.params, s.weights.config, ids)


TEXTS = ["the stock market fell sharply", "", "prices rose\nand then fell", "N N N",
         "a qqxyzzy word", "!!! ,,", "the company said it expects to report a loss of $ N "
         "million for the third quarter"]


@pytest.mark.parametrize("eos", [True, False])
def test_score_agrees_with_the_independent_loop(small: Scorer, eos: bool) -> None:
    got = small.score(TEXTS, eos=eos, return_tokens=True)
    for text, r in zip(TEXTS, got, strict=True):
        want = naive(small, text, eos)
        assert r["num_tokens"] == want.size
        assert r["log_prob"] == pytest.approx(want.sum(), abs=1e-4)
        assert [t["logprob"] for t in r["tokens"]] == pytest.approx(want, abs=1e-4)
        if want.size:
            assert r["perplexity"] == pytest.approx(math.exp(-want.sum() / want.size), rel=1e-4)
        else:
            assert r["perplexity"] is None and r["log_prob"] == 0.0
        assert r["log10_prob"] == pytest.approx(r["log_prob"] / math.log(10))
        assert r["num_oov"] == sum(t["oov"] for t in r["tokens"])


def test_segments_do_not_change_the_numbers(
    small: Scorer, monkeypatch: pytest.MonkeyPatch
) -> None:
    long_text = " ".join(TEXTS * 30)
    texts = [*TEXTS, long_text]
    base = small.score(texts)
    # Tiny segments: the long text scored alone in many carried segments.
    monkeypatch.setattr(scorer_mod, "SEGMENT_TOKENS", 17)
    again = small.score(texts)
    for a, b in zip(base, again, strict=True):
        assert a["num_tokens"] == b["num_tokens"]
        assert a["log_prob"] == pytest.approx(b["log_prob"], abs=1e-3)
    assert again[-1]["log_prob"] == pytest.approx(naive(small, long_text).sum(), abs=1e-3)


def test_parse_line_reads_text_and_json_lines() -> None:
    text = ScoreOptions()
    assert parse_line(b"a b\r\n", 3, text).text == "a b"
    assert parse_line(b"a b", 3, ScoreOptions(keep_text=True)).fields == {"text": "a b"}
    js = ScoreOptions(format="jsonl", field="body")
    p = parse_line(b'{"id": 7, "body": "x\\ny", "meta": {"k": [1]}}\n', 9, js)
    assert p.text == "x\ny" and p.fields == {"id": 7, "meta": {"k": [1]}} and p.line == 9
    kept = parse_line(b'{"id": 7, "body": "x"}', 9, ScoreOptions(format="jsonl", field="body",
                                                                 keep_text=True))
    assert kept.fields == {"id": 7, "body": "x"}


@pytest.mark.parametrize(("raw", "message"), [
    (b"\xff\xfe", "not UTF-8"),
    (b"{nope", "not JSON"),
    (b"[1, 2]", "not a JSON object"),
    (b'{"id": 1}', 'no field "text"'),
    (b'{"text": 3}', "not a string"),
    (b'{"text": "a", "perplexity": 1}', '"perplexity"'),
])
def test_parse_line_names_what_is_wrong(raw: bytes, message: str) -> None:
    opts = ScoreOptions(format="jsonl")
    with pytest.raises(InputLineError, match=f"line 12: .*{message}") as e:
        parse_line(raw, 12, opts)
    assert e.value.fatal == (message == '"perplexity"')


def test_score_lines_keeps_input_order_and_skips_bad_lines(small: Scorer) -> None:
    lines = [(i + 1, json.dumps({"n": i, "text": t}).encode()) for i, t in enumerate(TEXTS)]
    lines.insert(2, (99, b"oops"))
    chunk = small.score_lines(lines, ScoreOptions(format="jsonl", on_error="skip"),
                              keep_rows=True)
    assert [r["line"] for r in chunk.rows] == [n for n, _ in lines]
    assert chunk.rows[2] == {"line": 99, "error": "not JSON (Expecting value at column 1)"}
    assert [r.get("n") for r in chunk.rows] == [0, 1, None, 2, 3, 4, 5, 6]
    assert chunk.errors == 1 and chunk.texts == len(TEXTS) and chunk.stop is None
    assert chunk.text.splitlines() == [json.dumps(r, ensure_ascii=False) for r in chunk.rows]
    stop = small.score_lines(lines, ScoreOptions(format="jsonl"), keep_rows=True)
    assert [r["line"] for r in stop.rows] == [1, 2] and stop.stop is not None
    assert stop.stop.line == 99 and stop.last_line == 2
