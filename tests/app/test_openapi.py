"""The committed openapi.json is the app's schema (under the pinned dependency versions)."""

from __future__ import annotations

import json
from pathlib import Path

from app.openapi import openapi_document, render

COMMITTED = Path(__file__).resolve().parents[2] / "openapi.json"


def test_committed_openapi_matches_the_app() -> None:
    doc = openapi_document()
    committed = json.loads(COMMITTED.read_text(encoding="utf-8"))
    assert committed == doc, (
        "openapi.json drifted from the app: run `make openapi` (python -m app.openapi "
        "--out openapi.json) and commit it"
    )
    assert COMMITTED.read_text(encoding="utf-8") == render(doc)


def test_every_endpoint_is_documented() -> None:
    paths = openapi_document()["paths"]
    for p in ("/generate", "/generate_stream", "/", "/perplexity", "/next-word", "/tokenize",
              "/health", "/health/live", "/health/ready", "/info", "/metrics"):
        assert p in paths, p
        for op in paths[p].values():
            assert op.get("summary") or op.get("description"), p
