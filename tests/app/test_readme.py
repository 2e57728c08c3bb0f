"""The README's curl and Python examples run against a live server and succeed."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path

import pytest

from tests.app.conftest import LiveServer

README = Path(__file__).resolve().parents[2] / "README.md"
SHIPPED = Path(__file__).resolve().parents[2] / "weights" / "ptb-650"


def blocks(lang: str) -> list[str]:
    """The fenced code blocks of the README in a language."""
    return re.findall(rf"```{lang}\n(.*?)```", README.read_text(encoding="utf-8"), re.S)


def curl_commands() -> list[str]:
    """Every curl command of the bash blocks, continuation lines joined."""
    cmds = []
    for block in blocks("bash"):
        for cmd in block.replace("\\\n", " ").splitlines():
            # /nginx-health exists only behind the scale-out proxy (docker compose)
            if cmd.strip().startswith("curl ") and "nginx-health" not in cmd:
                cmds.append(cmd.split("  #")[0].strip())
    return cmds


@pytest.fixture(scope="module")
def server(
    tiny_weights: Path, live_server_factory: Callable[..., AbstractContextManager[LiveServer]]
) -> LiveServer:
    # The shipped model when it is there (the README's outputs come from it).
    weights = SHIPPED if (SHIPPED / "config.json").exists() else tiny_weights
    with live_server_factory(weights) as s:
        yield s  # type: ignore[misc]


def test_readme_has_examples_for_every_endpoint() -> None:
    text = " ".join(curl_commands())
    for path in ("/generate ", "/generate_stream", "/perplexity", "/next-word", "/tokenize",
                 "/health", "/info", "/metrics"):
        assert f"localhost:8000{path}" in text + " ", path


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
@pytest.mark.parametrize("cmd", curl_commands())
def test_curl_example(cmd: str, server: LiveServer) -> None:
    port = server.url.rsplit(":", 1)[1]
    # -f: an HTTP error fails the command
    cmd = cmd.replace("localhost:8000", f"127.0.0.1:{port}").replace("curl -s", "curl -sf", 1)
    r = subprocess.run(["bash", "-c", f"set -o pipefail; {cmd}"], capture_output=True,
                       text=True, timeout=60)
    # 23 and 141: head closed the pipe before curl finished writing
    assert r.returncode in (0, 23, 141), f"{cmd}\n{r.stderr}"
    out = r.stdout.strip()
    assert out
    if "/metrics" not in cmd and "generate_stream" not in cmd:
        json.loads(out.splitlines()[0])
    if "generate_stream" in cmd:
        assert "data:" in out


@pytest.mark.parametrize("code", blocks("python"))
def test_python_example(code: str, server: LiveServer, tmp_path: Path) -> None:
    script = tmp_path / "example.py"
    script.write_text(code.replace("http://127.0.0.1:8000", server.url), encoding="utf-8")
    r = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                       timeout=120, cwd=README.parent)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.strip()


def test_readme_documents_every_setting() -> None:
    from app.config import Settings

    text = README.read_text(encoding="utf-8")
    missing = [n for n in Settings.model_fields if f"`RNNLM_{n.upper()}`" not in text]
    assert not missing, f"README's configuration table lacks {missing}"
