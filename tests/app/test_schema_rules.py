"""app/schema_rules.py: the served document's limits follow the Settings and the weights."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from app.config import Settings
from app.main import create_app
from app.schema_rules import decimal_below, vocab_size_of
from model.weights import LoadedWeights


@pytest.mark.parametrize("n", [1, 2, 9, 10, 11, 57, 100, 101, 999, 1000, 10_000, 33_278])
def test_decimal_below_matches_exactly_the_ids(n: int) -> None:
    r = re.compile(decimal_below(n))
    assert [i for i in range(n + 1_000) if r.match(str(i))] == list(range(n))
    assert not any(r.match(x) for x in ("", "01", "-1", "+1", "1.0", " 1"))


def _props(doc: dict[str, Any], name: str) -> dict[str, Any]:
    return doc["components"]["schemas"][name]["properties"]


def test_the_served_schema_states_the_running_settings(
    make_client: Any, tiny_loaded: LoadedWeights
) -> None:
    with make_client(max_texts=7, max_text_chars=99, max_new_tokens=33, max_top_k=4,
                     max_stop_sequences=2, max_request_tokens=500) as c:
        doc = c.get("/openapi.json").json()
    p = _props(doc, "PerplexityRequest")
    texts = next(b for b in p["texts"]["anyOf"] if b.get("type") == "array")
    assert texts["maxItems"] == 7 and texts["items"]["maxLength"] == 99
    assert p["top_k"]["maximum"] == 4
    g = _props(doc, "GenerateParameters")
    assert next(b for b in g["max_new_tokens"]["anyOf"] if b["type"] == "integer")[
        "maximum"] == 33
    stop = next(b for b in g["stop"]["anyOf"] if b["type"] == "array")
    assert stop["maxItems"] == 2
    V = tiny_loaded.config.vocab_size
    assert _props(doc, "DetokenizeRequest")["tokens"]["items"]["maximum"] == V - 1
    assert doc["components"]["schemas"]["CompletionRequest"]["x-max-tokens"] == 500
    bias = next(b for b in _props(doc, "CompletionRequest")["logit_bias"]["anyOf"]
                if b["type"] == "object")
    assert bias["propertyNames"]["pattern"] == decimal_below(V)


def test_the_committed_document_has_the_default_models_vocabulary(tmp_path: Path) -> None:
    doc = create_app(Settings()).openapi()
    V = vocab_size_of(Settings().weights)
    assert V == 10_000  # weights/ptb-650's config.json, read without loading the weights
    assert _props(doc, "DetokenizeRequest")["tokens"]["items"]["maximum"] == V - 1
    # weights that cannot be read leave the range open rather than guessing it
    bare = create_app(Settings(weights=tmp_path)).openapi()
    assert "maximum" not in _props(bare, "DetokenizeRequest")["tokens"]["items"]
