"""Fixtures of the app tests: weights directories, in-process apps and a live rnnlm-serve."""

from __future__ import annotations

import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from app.config import Settings
from app.main import create_app
from model.book import import_book
from model.rnnlm import ModelConfig, init_params
from model.vocab import Vocab
from model.weights import LoadedWeights, load_weights, save_weights

TOY_WORDS = [
    "<eos>", "<unk>", "the", "a", "cat", "dog", "sat", "on", "mat", "ran", "N", "and",
    "big", "small", "house", "new", "york", "market", "stock", "fell", "rose", "'s",
]  # fmt: skip


@pytest.fixture(scope="session")
def app_vocab(request: pytest.FixtureRequest) -> Vocab:
    """The real PTB vocabulary when the shared data is there, else a toy one."""
    try:
        vocab: Vocab = request.getfixturevalue("ptb_vocab")
        return vocab
    except (pytest.skip.Exception, pytest.FixtureLookupError):
        return Vocab(TOY_WORDS)


def tiny_params(vocab: Vocab, special_boost: float = 0.0) -> tuple[ModelConfig, dict]:
    """A random 2-layer tied model with hidden 16; <eos> and <unk> biased up by special_boost."""
    cfg = ModelConfig(len(vocab), 16, 16, 2, True, 0.5)
    rng = np.random.default_rng(1234)
    params = init_params(cfg, rng)
    # Book initialisation gives a nearly uniform softmax; larger weights make the
    # distributions less flat, so greedy paths and seeds are meaningful.
    for name, a in params.items():
        scale = 1.0 if name == "embed.W" else 0.5
        params[name] = (a + rng.standard_normal(a.shape) * scale).astype(np.float32)
    params["affine.b"][[vocab.eos_id, vocab.unk_id]] += special_boost
    return cfg, params


@pytest.fixture(scope="session")
def tiny_weights(tmp_path_factory: pytest.TempPathFactory, app_vocab: Vocab) -> Path:
    """The tiny random model as a weights directory (<eos> and <unk> as likely as any word)."""
    cfg, params = tiny_params(app_vocab)
    out = tmp_path_factory.mktemp("weights") / "tiny"
    return save_weights(
        out, cfg, params, app_vocab, dtype="float32", metrics={"test_perplexity": 1e4}
    )


@pytest.fixture(scope="session")
def special_weights(tmp_path_factory: pytest.TempPathFactory, app_vocab: Vocab) -> Path:
    """The tiny model with <eos> and <unk> boosted so that sampling meets them within ~50 tokens."""
    boost = 7.0 if len(app_vocab) > 1000 else 0.0
    cfg, params = tiny_params(app_vocab, boost)
    out = tmp_path_factory.mktemp("weights") / "special"
    return save_weights(out, cfg, params, app_vocab, dtype="float32")


@pytest.fixture(scope="session")
def tiny_loaded(tiny_weights: Path) -> LoadedWeights:
    """tiny_weights, loaded (float32 params, vocab) for independent checks."""
    return load_weights(tiny_weights)


@pytest.fixture(scope="session")
def book_weights(
    tmp_path_factory: pytest.TempPathFactory, shared_data_dir: Path, ptb_vocab: Vocab
) -> Path:
    """The book's trained Rnnlm.pkl imported into a weights directory."""
    pkl = shared_data_dir / "book" / "Rnnlm.pkl"
    if not pkl.is_file():
        pytest.skip(f"the book's parameters are not at {pkl}")
    cfg, params = import_book("rnnlm", pkl, ptb_vocab)
    out = tmp_path_factory.mktemp("weights") / "book"
    return save_weights(out, cfg, params, ptb_vocab, dtype="float32")


@pytest.fixture(scope="session")
def book_loaded(book_weights: Path) -> LoadedWeights:
    """book_weights, loaded."""
    return load_weights(book_weights)


@pytest.fixture
def make_client(tiny_weights: Path) -> Callable[..., AbstractContextManager[TestClient]]:
    """A factory: ``with make_client(max_texts=2) as c`` runs an app on tiny_weights."""

    @contextmanager
    def make(weights: Path | None = None, **settings: Any) -> Iterator[TestClient]:
        app = create_app(Settings(weights=weights or tiny_weights, **settings))
        with TestClient(app) as client:
            yield client

    return make


@pytest.fixture(scope="module")
def client(tiny_weights: Path) -> Iterator[TestClient]:
    """An in-process app on tiny_weights with the default settings (lifespan run)."""
    with TestClient(create_app(Settings(weights=tiny_weights))) as c:
        yield c


@pytest.fixture(scope="module")
def book_client(book_weights: Path) -> Iterator[TestClient]:
    """An in-process app on the imported book model."""
    with TestClient(create_app(Settings(weights=book_weights))) as c:
        yield c


@asynccontextmanager
async def asgi_client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """An httpx.AsyncClient on the app's ASGI interface, with the app's lifespan run."""
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
            yield c


# --- a real server ---------------------------------------------------------------------------


@dataclass
class LiveServer:
    """A running rnnlm-serve subprocess."""

    url: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def logs(self) -> str:
        """Everything the server wrote to stdout and stderr so far."""
        return self.log_path.read_text(encoding="utf-8", errors="replace")


def free_port() -> int:
    """A loopback port that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def serve_command() -> list[str]:
    """The rnnlm-serve console script of this environment (python -m app without it)."""
    script = shutil.which("rnnlm-serve", path=str(Path(sys.executable).parent))
    return [script] if script else [sys.executable, "-m", "app"]


@contextmanager
def run_server(
    weights: Path,
    log_dir: Path,
    env: Mapping[str, str] | None = None,
    args: Sequence[str] = (),
    command: Sequence[str] | None = None,
    startup_timeout: float = 60.0,
) -> Iterator[LiveServer]:
    """Start rnnlm-serve on a free loopback port, wait until ready, yield it, then stop it.

    ``env`` adds RNNLM_* variables (RNNLM_WEIGHTS is set to weights); ``command`` replaces
    the rnnlm-serve command line (e.g. a Docker CMD), and gets --host/--port appended.
    """
    log_dir.mkdir(parents=True, exist_ok=True)
    for attempt in range(3):
        port = free_port()
        log_path = log_dir / f"server-{port}.log"
        full_env = {
            **os.environ,
            "RNNLM_WEIGHTS": str(weights),
            "OPENBLAS_NUM_THREADS": "1",
            "PYTHONUNBUFFERED": "1",
            # a live test server drains for a moment, not a deployment's 10 s
            "RNNLM_DRAIN_SECONDS": "0.2",
            **(env or {}),
        }
        cmd = [*(command or serve_command()), "--host", "127.0.0.1", "--port", str(port), *args]
        with log_path.open("wb") as log:
            proc = subprocess.Popen(cmd, env=full_env, stdout=log, stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}"
        server = LiveServer(url, proc, log_path)
        try:
            if _wait_ready(server, startup_timeout):
                break
        except BaseException:
            _stop(proc)
            raise
        _stop(proc)
        if "address already in use" not in server.logs().lower() or attempt == 2:
            pytest.fail(f"rnnlm-serve did not become ready:\n{server.logs()[-4000:]}")
    try:
        yield server
    finally:
        _stop(server.process)


def _wait_ready(server: LiveServer, timeout: float) -> bool:
    """Poll /health/ready until 200; False if the process exits or time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            return False
        try:
            if httpx.get(server.url + "/health/ready", timeout=2.0).status_code == 200:
                return True
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    return False


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL if it does not exit in 15 s."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="session")
def live_server_factory(
    tmp_path_factory: pytest.TempPathFactory,
) -> Callable[..., AbstractContextManager[LiveServer]]:
    """run_server with a per-session log folder: ``with live_server_factory(weights) as s``."""
    log_dir = tmp_path_factory.mktemp("server-logs")

    def factory(weights: Path, **kwargs: Any) -> AbstractContextManager[LiveServer]:
        return run_server(weights, log_dir, **kwargs)

    return factory


@pytest.fixture(scope="session")
def live_server(
    tiny_weights: Path, live_server_factory: Callable[..., AbstractContextManager[LiveServer]]
) -> Iterator[str]:
    """The base URL of an rnnlm-serve subprocess serving tiny_weights (shared by the session)."""
    with live_server_factory(tiny_weights) as server:
        yield server.url


# --- comparing answers -----------------------------------------------------------------------


def assert_close(got: Any, want: Any, path: str = "") -> None:
    """got equals want, floats to 1e-4 (relative or absolute): docs/design.md allows BLAS
    rounding, log-probabilities within 1e-4; ids, texts and structure exactly. A wanted
    "..." stands for any value (a response's random id, its time)."""
    if want == "...":
        return
    if isinstance(want, float) or isinstance(got, float):
        assert isinstance(got, int | float) and isinstance(want, int | float), path
        assert math.isclose(got, want, rel_tol=1e-4, abs_tol=1e-4), f"{path}: {got} != {want}"
    elif isinstance(want, dict):
        assert isinstance(got, dict) and got.keys() == want.keys(), f"{path}: {got} != {want}"
        for k in want:
            assert_close(got[k], want[k], f"{path}.{k}")
    elif isinstance(want, list):
        assert isinstance(got, list) and len(got) == len(want), f"{path}: {got} != {want}"
        for i, (g, w) in enumerate(zip(got, want, strict=True)):
            assert_close(g, w, f"{path}[{i}]")
    else:
        assert got == want, f"{path}: {got!r} != {want!r}"


def prom_samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Prometheus text -> {(sample name, sorted labels): value}."""
    from prometheus_client.parser import text_string_to_metric_families

    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out

