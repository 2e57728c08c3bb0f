"""GET /health/live, /health/ready, /health, /info and /metrics; the lifespan's phases."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.config import Settings
from app.main import create_app
from model.weights import LoadedWeights, WeightsError
from tests.app.conftest import prom_samples


def test_ready_after_the_lifespan_and_draining_after(tiny_weights: Path) -> None:
    app = create_app(Settings(weights=tiny_weights))
    state = app.state.service
    assert state.phase == "loading" and state.engine is None
    with TestClient(app) as c:
        assert state.phase == "ready"
        for path in ("/health/ready", "/health"):
            r = c.get(path)
            assert r.status_code == 200 and r.json() == {"status": "ready"}
        assert c.get("/health/live").json() == {"status": "alive"}
        state.set_phase("draining")
        r = c.get("/health")
        assert r.status_code == 503
        assert r.json()["error_type"] == "unavailable" and "draining" in r.json()["error"]
        assert c.get("/health/live").status_code == 200
        state.set_phase("ready")
    assert state.phase == "draining"  # the lifespan's shutdown


def test_not_ready_while_loading(tiny_weights: Path) -> None:
    app = create_app(Settings(weights=tiny_weights))
    c = TestClient(app)  # no `with`: the lifespan has not run, the model is not loaded
    r = c.get("/health/ready")
    assert r.status_code == 503
    assert r.json()["details"] == [{"phase": "loading"}] and "loading" in r.json()["error"]
    assert c.get("/health/live").status_code == 200
    r = c.post("/perplexity", json={"text": "a"})
    assert r.status_code == 503 and r.json()["error_type"] == "unavailable"
    assert r.headers["retry-after"] == "1"
    assert "rnnlm_ready 0.0" in c.get("/metrics").text


def test_bad_weights_stop_the_lifespan(tmp_path: Path) -> None:
    app = create_app(Settings(weights=tmp_path / "missing"))
    with pytest.raises(WeightsError, match="missing"), TestClient(app):
        pass


def test_preloaded_weights_are_used(tiny_loaded: LoadedWeights) -> None:
    app = create_app(Settings(weights=Path("/nonexistent")), weights=tiny_loaded)
    with TestClient(app) as c:
        assert c.get("/health").status_code == 200


def test_info(client: TestClient, tiny_loaded: LoadedWeights) -> None:
    info = client.get("/info").json()
    assert info["model"]["vocab_size"] == len(tiny_loaded.vocab)
    assert info["model"]["num_layers"] == 2 and info["model"]["hidden_size"] == 16
    assert info["model"]["tied"] is True
    assert info["weights"]["sha256"] == tiny_loaded.sha256
    assert info["weights"]["name"] == "tiny"
    assert info["metrics"] == {"test_perplexity": 1e4}
    # the lifespan warmed the engine up before turning ready
    assert info["engine"]["warmup"]["batch_sizes"] == [1, 2]
    assert info["limits"] == {
        "max_texts": 256, "max_text_chars": 20000, "max_request_tokens": 16384,
        "max_body_bytes": 1 << 20, "max_new_tokens": 512, "default_max_new_tokens": 20,
        "max_stop_sequences": 4, "max_top_n_tokens": 5,
        "max_targets": 100, "max_top_k": 100, "request_timeout_s": 60.0,
    }  # fmt: skip
    assert isinstance(info["version"], str) and info["version"]
    assert info["engine"]["phase"] == "ready"
    assert info["engine"]["max_batch_size"] == 32


def test_metrics_count_requests_and_tokens(tiny_weights: Path) -> None:
    with TestClient(create_app(Settings(weights=tiny_weights))) as c:
        c.post("/perplexity", json={"texts": ["the market", "a qqxyzzy"]})
        c.post("/perplexity", json={"texts": []})
        c.post(
            "/generate",
            json={"inputs": "the zzqqv", "parameters": {"max_new_tokens": 4, "stop_at_eos": False}},
        )
        c.post(
            "/generate_stream",
            json={"inputs": "a", "parameters": {"max_new_tokens": 3, "stop_at_eos": False}},
        )
        c.get("/nope")
        r = c.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    m = prom_samples(r.text)

    def requests(route: str, method: str, status: str) -> float:
        key = (("method", method), ("route", route), ("status", status))
        return m.get(("rnnlm_requests_total", key), 0.0)

    assert requests("/perplexity", "POST", "200") == 1
    assert requests("/perplexity", "POST", "422") == 1
    assert requests("/generate", "POST", "200") == 1
    assert requests("/generate_stream", "POST", "200") == 1
    assert requests("unmatched", "GET", "404") == 1
    key = (("method", "POST"), ("route", "/perplexity"), ("status", "200"))
    assert m[("rnnlm_request_duration_seconds_count", key)] == 1
    assert m[("rnnlm_tokens_scored_total", ())] == 3 + 3
    assert m[("rnnlm_tokens_generated_total", ())] == 4 + 3
    assert m[("rnnlm_oov_tokens_total", (("route", "/perplexity"),))] == 1
    assert m[("rnnlm_oov_tokens_total", (("route", "/generate"),))] == 1
    assert m[("rnnlm_ready", ())] == 1


def test_each_app_has_its_own_registry(tiny_weights: Path) -> None:
    with (
        TestClient(create_app(Settings(weights=tiny_weights))) as a,
        TestClient(create_app(Settings(weights=tiny_weights))) as b,
    ):
        a.post("/tokenize", json={"text": "a"})
        key = (
            "rnnlm_requests_total",
            (("method", "POST"), ("route", "/tokenize"), ("status", "200")),
        )
        assert prom_samples(a.get("/metrics").text)[key] == 1
        assert key not in prom_samples(b.get("/metrics").text)


def test_openapi_documents_every_field(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    schemas = spec["components"]["schemas"]
    for name in (
        "GenerateRequest",
        "GenerateParameters",
        "PerplexityRequest",
        "StreamResponse",
        "NextWordRequest",
        "TokenizeRequest",
        "GenerateResponse",
        "ErrorResponse",
    ):
        assert name in schemas
    for name, schema in schemas.items():
        for field, prop in schema.get("properties", {}).items():
            assert prop.get("description"), f"{name}.{field} has no description"
            assert "examples" in prop, f"{name}.{field} has no example"
    for path in (
        "/generate",
        "/generate_stream",
        "/",
        "/perplexity",
        "/next-word",
        "/tokenize",
        "/health",
        "/health/live",
        "/health/ready",
        "/info",
        "/metrics",
    ):
        assert path in spec["paths"], path
    assert client.get("/docs").status_code == 200
