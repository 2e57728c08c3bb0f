"""create_app as a whole: a real rnnlm-serve process, the command line, concurrency."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from app.client import AsyncClient, Client, RnnlmError
from app.config import Settings
from app.main import create_app
from tests.app.conftest import asgi_client, assert_close, serve_command


def test_live_server_with_the_client(live_server: str) -> None:
    with Client(live_server, timeout=30) as c:
        assert c.health() == {"status": "ready"}
        info = c.info()
        assert info["weights"]["name"] == "tiny"
        params: dict[str, Any] = {
            "max_new_tokens": 10,
            "seed": 4,
            "do_sample": True,
            "stop_at_eos": False,
            "details": True,
        }
        plain = c.generate("the stock market", **params)
        events = list(c.generate_stream("the stock market", **params))
        assert len(events) == 10
        assert [e["token"] for e in events] == plain["details"]["tokens"]
        assert events[-1]["generated_text"] == plain["generated_text"]
        assert "".join(e["token"]["text"] for e in events) == plain["generated_text"]
        ppl = c.perplexity(["the stock market fell", "prices rose"])
        assert len(ppl["results"]) == 2 and ppl["aggregate"]["num_tokens"] > 0
        assert c.perplexity("prices rose")["results"][0]["num_tokens"] == 3
        nw = c.next_word("the stock", top_k=3, targets=["market"])
        assert len(nw["predictions"]) == 3 and nw["targets"][0]["token"] == "market"
        assert c.tokenize("The market")["token_strs"] == ["the", "market"]
        with pytest.raises(RnnlmError) as e:
            c.generate("the", temperature=0)
        assert e.value.status == 422 and e.value.error_type == "validation"
        assert e.value.param == "parameters.temperature"
        with pytest.raises(RnnlmError) as e:
            list(c.generate_stream("the", watermark=True))
        assert e.value.status == 422 and "watermark" in e.value.message


def test_live_server_with_the_async_client(live_server: str) -> None:
    async def main() -> None:
        async with AsyncClient(live_server, timeout=30) as c:
            assert (await c.health())["status"] == "ready"
            assert (await c.info())["model"]["hidden_size"] == 16
            plain = await c.generate(
                "a", max_new_tokens=5, seed=1, do_sample=True, stop_at_eos=False
            )
            events = [
                e
                async for e in c.generate_stream(
                    "a", max_new_tokens=5, seed=1, do_sample=True, stop_at_eos=False
                )
            ]
            assert events[-1]["generated_text"] == plain["generated_text"]
            assert (await c.perplexity(["a b"]))["results"][0]["num_tokens"] >= 2
            assert len((await c.next_word("a", top_k=2))["predictions"]) == 2
            assert (await c.tokenize("a"))["count"] == 1
            with pytest.raises(RnnlmError) as e:
                await c.perplexity([])
            assert e.value.status == 422

    anyio.run(main)


def test_live_server_serves_docs_and_metrics(live_server: str) -> None:
    assert httpx.get(live_server + "/docs").status_code == 200
    r = httpx.get(live_server + "/metrics")
    assert r.status_code == 200 and "rnnlm_requests_total" in r.text
    r = httpx.post(
        live_server + "/generate",
        content=b"x" * (2 << 20),
        headers={"content-type": "application/json"},
    )
    assert r.status_code == 413 and r.json()["error_type"] == "payload_too_large"


def test_bad_weights_stop_start_up_with_one_line(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-weights"
    proc = subprocess.run(
        [*serve_command(), "--weights", str(missing), "--port", "0"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr
    assert str(missing) in lines[0] and "Traceback" not in proc.stderr


def test_corrupt_weights_name_the_file(tmp_path: Path, tiny_weights: Path) -> None:
    bad = tmp_path / "bad"
    bad.mkdir()
    for f in tiny_weights.iterdir():
        (bad / f.name).write_bytes(f.read_bytes())
    (bad / "params.npz").write_bytes(b"garbage")
    proc = subprocess.run(
        [*serve_command(), "--port", "0"],
        capture_output=True,
        text=True,
        timeout=60,
        env={"RNNLM_WEIGHTS": str(bad), "PATH": "/usr/bin:/bin"},
    )
    assert proc.returncode == 2
    assert str(bad / "params.npz") in proc.stderr and "Traceback" not in proc.stderr


def test_python_m_app_is_the_command() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "app", "--help"], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0
    for flag in ("--host", "--port", "--weights", "--log-level"):
        assert flag in proc.stdout


def _requests() -> list[tuple[str, dict[str, Any]]]:
    """50 mixed requests: sampled, greedy and stopped generation, streams, scoring, next-word."""
    prompts = ["the stock market", "a big house", "", "new york", "prices rose and fell"]
    reqs: list[tuple[str, dict[str, Any]]] = []
    for i in range(10):
        reqs.append(
            (
                "/generate",
                {
                    "inputs": prompts[i % 5],
                    "parameters": {
                        "max_new_tokens": 12,
                        "seed": i,
                        "temperature": 0.7 + 0.1 * (i % 4),
                        "top_k": 50 if i % 2 else None,
                        "stop_at_eos": False,
                        "details": True,
                        "decoder_input_details": True,
                    },
                },
            )
        )
    for i in range(5):
        reqs.append(
            (
                "/generate",
                {
                    "inputs": prompts[i],
                    "parameters": {
                        "max_new_tokens": 10,
                        "details": True,
                        "repetition_penalty": 1.0 + i / 4,
                        "stop": ["the market"],
                        "top_n_tokens": 2,
                    },
                },
            )
        )
    for i in range(5):
        reqs.append(
            (
                "/generate_stream",
                {
                    "inputs": prompts[i],
                    "parameters": {
                        "max_new_tokens": 8,
                        "seed": 100 + i,
                        "do_sample": True,
                        "stop_at_eos": False,
                    },
                },
            )
        )
    for i in range(15):
        texts = [f"{prompts[j % 5]} {j} stock" for j in range(i % 4 + 1)] + [prompts[i % 4] or "a"]
        reqs.append(("/perplexity", {"texts": texts, "return_tokens": True}))
    for i in range(15):
        reqs.append(
            (
                "/next-word",
                {
                    "context": prompts[i % 5] + " the" * (i % 3),
                    "top_k": 5,
                    "targets": ["market", "house"],
                },
            )
        )
    return reqs  # fmt: skip


def test_concurrent_requests_equal_sequential_ones(tiny_weights: Path) -> None:
    reqs = _requests()
    assert len(reqs) == 50
    app = create_app(Settings(weights=tiny_weights))

    async def one(c: httpx.AsyncClient, path: str, body: dict[str, Any]) -> Any:
        r = await c.post(path, json=body)
        assert r.status_code == 200, r.text
        if path == "/generate_stream":
            return [ln for ln in r.text.splitlines() if ln.startswith("data:")]
        return r.json()

    async def main() -> tuple[list[Any], list[Any]]:
        async with asgi_client(app) as c:
            sequential = [await one(c, p, b) for p, b in reqs]
            concurrent = await asyncio.gather(*(one(c, p, b) for p, b in reqs))
        return sequential, list(concurrent)

    sequential, concurrent = asyncio.run(main())
    for (path, _), s, c in zip(reqs, sequential, concurrent, strict=True):
        if path == "/generate_stream":
            s, c = [json.loads(x[5:]) for x in s], [json.loads(x[5:]) for x in c]
        assert_close(s, c, path)
    # and generation did happen concurrently with other work (the engine admitted them all)
    assert app.state.service.engine.stats()["requests_served"] >= 100


def test_sigterm_shuts_down_cleanly(tiny_weights: Path, live_server_factory: Any) -> None:
    with live_server_factory(tiny_weights) as server:
        assert httpx.get(server.url + "/health").status_code == 200
        server.process.send_signal(signal.SIGTERM)
        assert server.process.wait(timeout=30) == 0
        logs = server.logs()
    assert "Application shutdown complete" in logs
    assert "Traceback" not in logs
