"""rnnlm score end to end: input order, workers, errors with exit status 2, resume, Ctrl-C."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from model.blas import set_num_threads
from model.cli import main
from model.score_run import resume_point
from model.scorer import Scorer

SMALL = Path(__file__).resolve().parents[2] / "weights" / "ptb-small"


@pytest.fixture(scope="module")
def small() -> Scorer:
    return Scorer.load(SMALL)


def lines_of(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines()]


@pytest.fixture(scope="module")
def ptb_lines(ptb_dir: Path) -> list[str]:
    return (ptb_dir / "ptb.test.txt").read_text(encoding="utf-8").splitlines()[:300]


def same_numbers(a: list[dict], b: list[dict]) -> None:
    assert [r["line"] for r in a] == [r["line"] for r in b]
    for x, y in zip(a, b, strict=True):
        assert x.keys() == y.keys()
        assert x["num_tokens"] == y["num_tokens"]
        assert x["log_prob"] == pytest.approx(y["log_prob"], abs=1e-4)


def test_text_lines_in_input_order_with_the_scorers_numbers(
    tmp_path: Path, small: Scorer, ptb_lines: list[str]
) -> None:
    texts = [*ptb_lines[:40], "", "   ", "a qqxyzzy"]
    inp = tmp_path / "in.txt"
    inp.write_text("\n".join(texts) + "\n", encoding="utf-8")
    out = tmp_path / "out.jsonl"
    # A window of 7 lines: sorting by length within a window must not reorder the output.
    assert main(["score", str(SMALL), str(inp), "--out", str(out), "--window", "7",
                 "--quiet"]) == 0
    rows = lines_of(out)
    assert [r["line"] for r in rows] == list(range(1, len(texts) + 1))
    for r, want in zip(rows, small.score(texts), strict=True):
        assert r == {"line": r["line"], **want} or (
            r["log_prob"] == pytest.approx(want["log_prob"], abs=1e-4)
            and r["num_tokens"] == want["num_tokens"])
    assert rows[40]["num_tokens"] == rows[41]["num_tokens"] == 1  # blank lines: the <eos>
    assert rows[-1]["num_oov"] == 1


def test_workers_and_threads_write_the_same_file(tmp_path: Path, ptb_lines: list[str]) -> None:
    inp = tmp_path / "in.txt"
    inp.write_text("\n".join(ptb_lines) + "\n", encoding="utf-8")
    one = tmp_path / "one.jsonl"
    before = set_num_threads(2)
    try:
        assert main(["score", str(SMALL), str(inp), "--out", str(one), "--quiet",
                     "--threads", "1"]) == 0
        for name, flags in [("two", ["--workers", "2"]), ("threads", ["--threads", "3"])]:
            other = tmp_path / f"{name}.jsonl"
            assert main(["score", str(SMALL), str(inp), "--out", str(other), "--quiet",
                         "--window", "16", *flags]) == 0
            same_numbers(lines_of(one), lines_of(other))
            assert len(lines_of(other)) == len(ptb_lines)
        # the threads scored with one BLAS thread each; the process gets its own count back
        assert set_num_threads(2) in (2, None)
    finally:
        if before is not None:
            set_num_threads(before)


def test_jsonl_fields_tokens_and_no_eos(tmp_path: Path, small: Scorer) -> None:
    inp = tmp_path / "in.jsonl"
    docs = [{"id": "a", "body": "the market fell\nprices rose", "meta": [1, {"x": None}]},
            {"body": "", "id": "b"}]
    inp.write_text("".join(json.dumps(d) + "\n" for d in docs), encoding="utf-8")
    out = tmp_path / "out.jsonl"
    assert main(["score", str(SMALL), str(inp), "--format", "jsonl", "--field", "body",
                 "--out", str(out), "--return-tokens", "--no-eos", "--keep-text",
                 "--quiet"]) == 0
    rows = lines_of(out)
    want = small.score([d["body"] for d in docs], eos=False, return_tokens=True)
    assert rows[0]["id"] == "a" and rows[0]["meta"] == [1, {"x": None}]
    assert rows[0]["body"] == docs[0]["body"]
    assert [t["token"] for t in rows[0]["tokens"]] == ["the", "market", "fell", "<eos>",
                                                      "prices", "rose"]
    assert rows[0]["log_prob"] == pytest.approx(want[0]["log_prob"], abs=1e-4)
    assert rows[1] == {"line": 2, "body": "", "id": "b", **want[1]}
    assert rows[1]["num_tokens"] == 0 and rows[1]["perplexity"] is None


def test_a_bad_line_stops_with_status_2_after_every_earlier_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    inp = tmp_path / "in.jsonl"
    good = [json.dumps({"text": f"the market {i}"}) for i in range(30)]
    inp.write_text("\n".join([*good[:25], '{"text": 5}', *good[25:]]) + "\n", encoding="utf-8")
    out = tmp_path / "out.jsonl"
    assert main(["score", str(SMALL), str(inp), "--format", "jsonl", "--out", str(out),
                 "--window", "4", "--quiet"]) == 2
    assert [r["line"] for r in lines_of(out)] == list(range(1, 26))
    assert f"{inp}: line 26: field \"text\" is int, not a string" in caplog.text
    # --on-error skip writes an error object in its place and goes on.
    assert main(["score", str(SMALL), str(inp), "--format", "jsonl", "--out", str(out),
                 "--on-error", "skip", "--quiet"]) == 0
    rows = lines_of(out)
    assert len(rows) == 31
    assert rows[25] == {"line": 26, "error": 'field "text" is int, not a string'}


def test_a_clashing_field_stops_even_when_skipping(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    inp = tmp_path / "in.jsonl"
    inp.write_text('{"text": "a"}\n{"text": "b", "log_prob": 3}\n', encoding="utf-8")
    assert main(["score", str(SMALL), str(inp), "--format", "jsonl", "--on-error", "skip",
                 "--out", str(tmp_path / "o.jsonl"), "--quiet"]) == 2
    assert 'line 2: the input field "log_prob"' in caplog.text


def test_inputs_are_numbered_across_and_errors_name_the_file(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    a.write_text('{"text": "x"}\n{"text": "y"}\n', encoding="utf-8")
    b.write_text('{"text": "z"}\n[]\n', encoding="utf-8")
    out = tmp_path / "o.jsonl"
    assert main(["score", str(SMALL), str(a), str(b), "--format", "jsonl", "--out", str(out),
                 "--quiet"]) == 2
    assert [r["line"] for r in lines_of(out)] == [1, 2, 3]
    assert f"{b}: line 2 (input line 4): not a JSON object" in caplog.text


@pytest.mark.parametrize(("argv", "message"), [
    (["--resume"], "--resume needs --out"),
    (["missing.txt"], "missing.txt: no such input file"),
    (["--workers", "0"], "--workers must be at least 1"),
    (["--threads", "0"], "--threads must be at least 1"),
    (["--threads", "2", "--workers", "2"], "--threads is for one process"),
    (["--threads", "2", "--engine", "ray"], "--threads is for the local engine"),
    (["--json"], "--json needs --out"),
    (["--out-dir", "x"], "--out-dir and --ray-address need --engine ray"),
])
def test_bad_flags_exit_2_with_one_line(
    argv: list[str], message: str, caplog: pytest.LogCaptureFixture
) -> None:
    assert main(["score", str(SMALL), *argv, "--quiet"]) == 2
    assert message in caplog.text


def test_resume_drops_a_partial_line_and_continues(tmp_path: Path, ptb_lines: list[str]) -> None:
    inp = tmp_path / "in.txt"
    inp.write_text("\n".join(ptb_lines[:60]) + "\n", encoding="utf-8")
    full = tmp_path / "full.jsonl"
    # the input after the flags is an input too
    assert main(["score", str(SMALL), "--out", str(full), "--quiet", str(inp)]) == 0
    data = full.read_bytes()
    part = tmp_path / "part.jsonl"
    cut = data.index(b"\n", len(data) // 2) + 15  # 15 bytes into a line
    part.write_bytes(data[:cut])
    assert resume_point(part) == data[:cut].count(b"\n")
    assert part.read_bytes().endswith(b"}\n")  # the partial line is gone
    assert main(["score", str(SMALL), str(inp), "--out", str(part), "--resume", "--quiet",
                 "--json"]) == 0
    same_numbers(lines_of(part), lines_of(full))
    # Resuming a finished file scores nothing more.
    assert main(["score", str(SMALL), str(inp), "--out", str(part), "--resume", "--quiet"]) == 0
    same_numbers(lines_of(part), lines_of(full))
    bad = tmp_path / "bad.jsonl"
    bad.write_text("not ours\n", encoding="utf-8")
    assert main(["score", str(SMALL), str(inp), "--out", str(bad), "--resume", "--quiet"]) == 2


def test_standard_input_and_output(ptb_lines: list[str]) -> None:
    r = subprocess.run(
        [sys.executable, "-m", "model.cli", "score", str(SMALL), "-", "--quiet"],
        input="\n".join(ptb_lines[:5]) + "\n", capture_output=True, text=True, timeout=120,
        check=True,
    )
    rows = [json.loads(x) for x in r.stdout.splitlines()]
    assert [x["line"] for x in rows] == [1, 2, 3, 4, 5]
    assert "scored 5 texts" in r.stderr


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_stops_after_the_window_and_resume_finishes(
    tmp_path: Path, ptb_lines: list[str], sig: signal.Signals
) -> None:
    inp = tmp_path / "in.txt"
    inp.write_text("\n".join(ptb_lines * 6) + "\n", encoding="utf-8")  # 1,800 lines
    out = tmp_path / "out.jsonl"
    cmd = [sys.executable, "-m", "model.cli", "score", str(SMALL), str(inp), "--out", str(out),
           "--window", "50", "--quiet"]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OPENBLAS_NUM_THREADS": "1"})
    deadline = time.monotonic() + 60
    while (not out.exists() or out.stat().st_size == 0) and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == (130 if sig == signal.SIGINT else 143), err
    assert "--resume to continue" in err
    done = out.read_text(encoding="utf-8")
    assert done.endswith("\n")
    n = len(done.splitlines())
    assert 0 < n < 1800 and n % 50 == 0  # whole windows only
    subprocess.run([*cmd, "--resume"], check=True, timeout=300, capture_output=True)
    rows = lines_of(out)
    assert [r["line"] for r in rows] == list(range(1, 1801))


def test_the_docs_example_prints_what_it_shows() -> None:
    doc = (Path(__file__).resolve().parents[2] / "docs" / "scoring.md").read_text()
    cmd = doc.split("```bash\n", 1)[1].split("```", 1)[0]
    shown = doc.split("```text\n", 1)[1].split("```", 1)[0]
    bindir = Path(sys.executable).parent
    r = subprocess.run(["bash", "-c", cmd], capture_output=True, text=True, timeout=120,
                       cwd=Path(__file__).resolve().parents[2],
                       env={**os.environ, "PATH": f"{bindir}:{os.environ['PATH']}"})
    assert r.returncode == 0, r.stderr
    got = [json.loads(x) for x in r.stdout.splitlines()]
    want = [json.loads(x) for x in shown.splitlines()]
    assert [g.keys() for g in got] == [w.keys() for w in want]
    for g, w in zip(got, want, strict=True):
        for k, v in w.items():
            assert g[k] == pytest.approx(v, rel=1e-6), k  # float32 sums differ by BLAS build
