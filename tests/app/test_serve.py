"""Tests for app.serve: the rnnlm-serve command exits 0 on SIGTERM whenever it arrives."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.app.conftest import free_port, serve_command

SHIPPED = Path(__file__).resolve().parents[2] / "weights" / "ptb-650-awd"


def _start(weights: Path, log: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    env = {**os.environ, "RNNLM_WEIGHTS": str(weights), "PYTHONUNBUFFERED": "1",
           "OPENBLAS_NUM_THREADS": "1", "RNNLM_DRAIN_SECONDS": "0.2"}
    with log.open("wb") as f:
        proc = subprocess.Popen([*serve_command(), "--host", "127.0.0.1", "--port", str(port),
                                 "--log-level", "debug"],
                                env=env, stdout=f, stderr=subprocess.STDOUT)
    return proc, f"http://127.0.0.1:{port}"


def _wait_for(predicate: Any, proc: subprocess.Popen[bytes], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert proc.poll() is None, "the server exited early"
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


def test_sigterm_while_the_weights_load_exits_0(tmp_path: Path, tiny_weights: Path) -> None:
    # The shipped 2 x 650 model takes long enough to load (checksums, float32 copies) for the
    # signal to arrive before uvicorn has its handlers; the default action would be -SIGTERM.
    weights = SHIPPED if (SHIPPED / "config.json").exists() else tiny_weights
    log = tmp_path / "server.log"
    proc, _ = _start(weights, log)
    try:
        _wait_for(lambda: "loading weights" in log.read_text(errors="replace"), proc)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0, log.read_text(errors="replace")
    finally:
        if proc.poll() is None:
            proc.kill()
    assert "Traceback" not in log.read_text(errors="replace")


@pytest.mark.parametrize("signals", [1, 2], ids=["once", "twice"])
def test_sigterm_while_serving_exits_0(tmp_path: Path, tiny_weights: Path, signals: int) -> None:
    log = tmp_path / "server.log"
    proc, url = _start(tiny_weights, log)

    def ready() -> bool:
        try:
            return httpx.get(url + "/health/ready", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        _wait_for(ready, proc)
        for _ in range(signals):
            proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0, log.read_text(errors="replace")
    finally:
        if proc.poll() is None:
            proc.kill()
    text = log.read_text(errors="replace")
    assert "Application shutdown complete" in text
    assert "Traceback" not in text
