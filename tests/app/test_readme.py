"""The README's and docs/'s examples run against a live server and answer what they show.

A bash block with one curl command followed by a json block (or, for /generate_stream, a
text block of events) must get that answer: ids, texts and structure exactly, floats to
1e-4. A python block followed by "prints" and a text block must print exactly that.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.app.conftest import LiveServer, assert_close

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
DOCS = [README, *sorted((ROOT / "docs").glob("*.md"))]
SHIPPED = ROOT / "weights" / "ptb-650-awd"
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)


@dataclass(frozen=True)
class Example:
    """A fenced code block and the output block shown after it, if any."""

    doc: str
    lang: str
    code: str
    expected: str | None  # the next block's text, when it shows this one's output
    expected_lang: str | None

    def __str__(self) -> str:
        return f"{self.doc}:{self.code.splitlines()[0][:60]}"


def _examples() -> Iterator[Example]:
    for doc in DOCS:
        text = doc.read_text(encoding="utf-8")
        blocks = [(m.group(1), m.group(2), m.start(), m.end()) for m in FENCE.finditer(text)]
        for i, (lang, code, _, end) in enumerate(blocks):
            nxt = blocks[i + 1] if i + 1 < len(blocks) else None
            expected = expected_lang = None
            if nxt is not None:
                between = text[end : nxt[2]].strip()
                shows = (lang, between) in (("bash", ""), ("python", "prints"))
                if shows:
                    expected, expected_lang = nxt[1], nxt[0]
            yield Example(doc.relative_to(ROOT).as_posix(), lang, code, expected, expected_lang)


def _curls(code: str) -> list[str]:
    """The curl commands of a bash block, continuation lines joined, comments cut."""
    out = []
    for cmd in code.replace("\\\n", " ").splitlines():
        # /nginx-health exists only behind the scale-out proxy (docker compose)
        if cmd.strip().startswith("curl ") and "nginx-health" not in cmd:
            out.append(cmd.split("  #")[0].strip())
    return out


CURLS = [(ex, cmd) for ex in _examples() if ex.lang == "bash" for cmd in _curls(ex.code)]
PYTHON = [ex for ex in _examples() if ex.lang == "python"]


def test_the_comparison_can_fail() -> None:
    assert_close({"a": [1, 0.50001]}, {"a": [1, 0.5]})
    for got, want in (({"a": 2}, {"a": 1}), ([1.0], [1.01]), ({"a": 1, "b": 2}, {"a": 1}),
                      (["x"], ["y"]), ([1, 2], [1])):
        with pytest.raises(AssertionError):
            assert_close(got, want)


@pytest.fixture(scope="module")
def server(
    tiny_weights: Path, live_server_factory: Callable[..., AbstractContextManager[LiveServer]]
) -> Iterator[LiveServer]:
    if not (SHIPPED / "config.json").exists():
        pytest.skip(f"the documented answers come from {SHIPPED}, which is not here")
    with live_server_factory(SHIPPED) as s:
        yield s


def test_readme_has_one_example_per_endpoint() -> None:
    text = " ".join(cmd for ex, cmd in CURLS if ex.doc == "README.md")
    for path in ("/generate ", "/generate_stream", "/perplexity", "/next-word", "/tokenize",
                 "/health", "/info", "/metrics"):
        assert f"localhost:8000{path}" in text + " ", path


def test_every_documented_answer_is_checked() -> None:
    checked = [ex for ex, _ in CURLS if ex.expected is not None]
    assert len(checked) >= 10  # the README's and docs/api.md's
    assert {ex.doc for ex in checked} >= {"README.md", "docs/api.md"}


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
@pytest.mark.parametrize(("ex", "cmd"), CURLS, ids=[f"{e.doc}:{c[8:60]}" for e, c in CURLS])
def test_curl_example(ex: Example, cmd: str, server: LiveServer) -> None:
    port = server.url.rsplit(":", 1)[1]
    # -f: an HTTP error fails the command
    run = cmd.replace("localhost:8000", f"127.0.0.1:{port}").replace("curl -s", "curl -sf", 1)
    r = subprocess.run(["bash", "-c", f"set -o pipefail; {run}"], capture_output=True,
                       text=True, timeout=60)
    # 23 and 141: head closed the pipe before curl finished writing
    assert r.returncode in (0, 23, 141), f"{cmd}\n{r.stderr}"
    out = r.stdout.strip()
    assert out
    if "/metrics" not in cmd and "generate_stream" not in cmd:
        json.loads(out.splitlines()[0])
    if ex.expected is None or len(_curls(ex.code)) != 1:
        return
    if ex.expected_lang == "json":
        assert_close(json.loads(out), json.loads(ex.expected), ex.doc)
    elif "generate_stream" in cmd:
        events = [json.loads(x[5:]) for x in out.splitlines() if x.startswith("data:")]
        want = [json.loads(x[5:]) for x in ex.expected.splitlines() if x.startswith("data:")]
        assert_close(events, want, ex.doc)


@pytest.mark.parametrize("ex", PYTHON, ids=str)
def test_python_example(ex: Example, server: LiveServer, tmp_path: Path) -> None:
    script = tmp_path / "example.py"
    script.write_text(ex.code.replace("http://127.0.0.1:8000", server.url), encoding="utf-8")
    r = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                       timeout=120, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.strip()
    if ex.expected is not None:
        # the block ends where the output ends; a last print without a newline is the same
        assert r.stdout.rstrip("\n") == ex.expected.rstrip("\n"), f"{ex.doc}: printed\n{r.stdout}"


def test_every_link_between_the_pages_exists() -> None:
    for doc in [*DOCS, ROOT / "bench" / "README.md"]:
        for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", doc.read_text(encoding="utf-8")):
            assert (doc.parent / target).exists(), f"{doc.relative_to(ROOT)} links {target}"


def test_the_readme_is_short() -> None:
    assert README.read_text(encoding="utf-8").count("\n") <= 220


def test_configuration_documents_every_setting() -> None:
    from app.config import Settings

    text = (ROOT / "docs" / "configuration.md").read_text(encoding="utf-8")
    missing = [n for n in Settings.model_fields if f"`RNNLM_{n.upper()}`" not in text]
    assert not missing, f"docs/configuration.md's table lacks {missing}"


def test_design_names_every_source_file() -> None:
    text = (ROOT / "docs" / "design.md").read_text(encoding="utf-8")
    files = [f for d in ("model", "app", "bench") for f in sorted((ROOT / d).rglob("*.py"))
             if (f.stat().st_size > 0 and f.name != "__init__.py") or f.parent.name == "engine"]
    missing = [str(f.relative_to(ROOT)) for f in files if f"`{f.relative_to(ROOT)}`" not in text]
    assert not missing, f"docs/design.md does not name {missing}"
