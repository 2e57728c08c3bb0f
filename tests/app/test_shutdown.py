"""Graceful shutdown of a real rnnlm-serve: SIGTERM drains, in-flight requests finish, exit 0."""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from model.rnnlm import ModelConfig, init_params
from model.vocab import Vocab
from model.weights import save_weights
from tests.app.conftest import LiveServer

WORDS = [f"w{i}" for i in range(6000)]
GEN_TOKENS = 5000


@pytest.fixture(scope="module")
def slow_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random model with a 6000-word vocabulary, so requests take a while."""
    vocab = Vocab(["<eos>", "<unk>", *WORDS])
    cfg = ModelConfig(len(vocab), 32, 32, 2, True, 0.0)
    params = init_params(cfg, np.random.default_rng(0))
    out = tmp_path_factory.mktemp("weights") / "slow"
    return save_weights(out, cfg, params, vocab, dtype="float32")


def _in_flight(url: str) -> int:
    return int(httpx.get(url + "/info", timeout=30).json()["engine"]["in_flight"])


def _stream(url: str, body: dict[str, Any]) -> tuple[int, list[dict[str, Any]]]:
    """POST /generate_stream and read every event."""
    with httpx.stream("POST", url + "/generate_stream", json=body, timeout=120) as r:
        events = [json.loads(ln[5:]) for ln in r.iter_lines() if ln.startswith("data:")]
        return r.status_code, events


def test_sigterm_drains_in_flight_requests_then_exits_0(
    slow_weights: Path, live_server_factory: Callable[..., AbstractContextManager[LiveServer]]
) -> None:
    rng = np.random.default_rng(1)
    texts = [" ".join(rng.choice(WORDS, 60)) for _ in range(128)]
    gen = {"max_new_tokens": GEN_TOKENS, "stop_at_eos": False, "details": True}
    env = {
        "RNNLM_DRAIN_SECONDS": "1.5",
        "RNNLM_SHUTDOWN_TIMEOUT_S": "120",
        "RNNLM_MAX_NEW_TOKENS": str(GEN_TOKENS),
        "RNNLM_REQUEST_TIMEOUT_S": "300",
    }
    with live_server_factory(slow_weights, env=env) as server, ThreadPoolExecutor(8) as pool:
        url = server.url
        post = httpx.Client(base_url=url, timeout=120)
        futures = [
            pool.submit(post.post, "/generate", json={"inputs": f"w{i} w7", "parameters": gen})
            for i in range(3)
        ]
        futures += [pool.submit(post.post, "/perplexity", json={"texts": texts}) for _ in range(2)]
        stream = pool.submit(_stream, url, {"inputs": "w5", "parameters": gen})
        deadline = time.monotonic() + 60
        while _in_flight(url) < 6 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert _in_flight(url) == 6, "the requests did not start"

        server.process.send_signal(signal.SIGTERM)
        # not ready at once, and new work is refused while the in-flight requests go on
        while httpx.get(url + "/health", timeout=30).status_code == 200:
            time.sleep(0.02)
        health = httpx.get(url + "/health", timeout=30)
        assert health.status_code == 503 and "draining" in health.json()["error"]
        refused = [
            httpx.post(url + path, json=body, timeout=30)
            for path, body in (
                ("/perplexity", {"text": "w1 w2"}),
                ("/generate", {"inputs": "w1"}),
                ("/next-word", {"context": "w1"}),
            )
        ]
        still_running = _in_flight(url)

        results = [f.result(timeout=180) for f in futures]
        status, events = stream.result(timeout=180)
        post.close()
        code = server.process.wait(timeout=120)
        logs = server.logs()

    for r in refused:
        assert r.status_code == 503, r.text
        assert r.json()["error_type"] == "unavailable" and r.headers["retry-after"] == "1"
    assert still_running > 0  # the refusals came while requests were in flight
    for r in results[:3]:
        assert r.status_code == 200, r.text
        assert r.json()["details"]["generated_tokens"] == GEN_TOKENS
    for r in results[3:]:
        assert r.status_code == 200, r.text
        assert [x["num_tokens"] for x in r.json()["results"]] == [61] * len(texts)
    assert status == 200 and len(events) == GEN_TOKENS
    assert events[-1]["details"]["finish_reason"] == "length"
    assert code == 0, logs[-3000:]
    assert "draining" in logs and "Application shutdown complete" in logs
    assert "Traceback" not in logs
