"""rnnlm score --engine ray on a local Ray instance: the local engine's file, part files, errors."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from model import score_ray
from model.cli import main
from model.score_ray import plan_ranges
from model.scorer import Scorer

SMALL = Path(__file__).resolve().parents[2] / "weights" / "ptb-small"
ray = pytest.importorskip("ray", reason="the [ray] extra is not installed")


def test_ranges_cut_at_line_starts_and_number_lines_across_files(tmp_path: Path) -> None:
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    a.write_bytes(b"".join(b"line %d of a\n" % i for i in range(1, 5001)))
    b.write_bytes(b"x\n\ny")  # no newline at the end: 3 lines
    c.write_bytes(b"")
    ranges, names = plan_ranges((str(a), str(b), str(c), str(a)), target=1000, block=4096)
    assert len([r for r in ranges if r.path == str(a)]) > 10
    lines: list[tuple[int, bytes]] = []
    for r in ranges:
        lines.extend(
            (int(t["line"]), bytes(t["raw"]))
            for block in score_ray._read_range(r, 0) for t in block.to_pylist())
    assert [n for n, _ in lines] == list(range(1, 10_004))
    assert lines[4999] == (5000, b"line 5000 of a\n") and lines[5000] == (5001, b"x\n")
    assert lines[5002] == (5003, b"y") and lines[5003] == (5004, b"line 1 of a\n")
    # c is empty: the second a begins at the same line, and error messages name a.
    assert names == {1: (str(a), 0), 5001: (str(b), 5000), 5004: (str(a), 5003)}


@pytest.fixture(scope="module")
def local_ray() -> Iterator[None]:
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"OPENBLAS_NUM_THREADS": "1"}})
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def docs(tmp_path_factory: pytest.TempPathFactory, ptb_dir: Path) -> Path:
    lines = (ptb_dir / "ptb.test.txt").read_text(encoding="utf-8").splitlines()[:400]
    path = tmp_path_factory.mktemp("ray") / "docs.jsonl"
    rows = [{"id": i, "text": t} for i, t in enumerate(lines)] + [{"id": -1, "text": ""}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def rows_of(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines()]


def same(a: list[dict], b: list[dict]) -> None:
    assert [r["line"] for r in a] == [r["line"] for r in b]
    for x, y in zip(a, b, strict=True):
        assert x.keys() == y.keys() and x["num_tokens"] == y["num_tokens"]
        assert x["log_prob"] == pytest.approx(y["log_prob"], abs=1e-4)


def test_ray_writes_the_local_engines_file_and_part_files(
    local_ray: None, docs: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(score_ray, "RANGE_BYTES", 4096)  # many read tasks
    local, ray_out = tmp_path / "local.jsonl", tmp_path / "ray.jsonl"
    flags = ["--format", "jsonl", "--quiet", "--window", "64"]
    assert main(["score", str(SMALL), str(docs), "--out", str(local), *flags]) == 0
    assert main(["score", str(SMALL), str(docs), "--out", str(ray_out), "--engine", "ray",
                 "--workers", "2", *flags]) == 0
    same(rows_of(ray_out), rows_of(local))
    parts = tmp_path / "parts"
    assert main(["score", str(SMALL), str(docs), "--out-dir", str(parts), "--engine", "ray",
                 *flags]) == 0
    got = sorted((r for p in parts.iterdir() for r in rows_of(p)), key=lambda r: r["line"])
    same(got, rows_of(local))
    pq = pytest.importorskip("pyarrow.parquet")
    pparts = tmp_path / "pparts"
    assert main(["score", str(SMALL), str(docs), "--out-dir", str(pparts), "--engine", "ray",
                 "--out-format", "parquet", *flags]) == 0
    table = pq.read_table(sorted(pparts.iterdir()))
    got = sorted(table.to_pylist(), key=lambda r: r["line"])
    same(got, rows_of(local))


def test_ray_stops_at_a_bad_line_after_every_earlier_one(
    local_ray: None, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    inp = tmp_path / "in.jsonl"
    inp.write_text("".join(json.dumps({"text": f"the market {i}"}) + "\n" for i in range(50))
                   + "{oops\n" + json.dumps({"text": "after"}) + "\n", encoding="utf-8")
    out = tmp_path / "out.jsonl"
    assert main(["score", str(SMALL), str(inp), "--format", "jsonl", "--out", str(out),
                 "--engine", "ray", "--window", "8", "--quiet"]) == 2
    assert [r["line"] for r in rows_of(out)] == list(range(1, 51))
    assert f"{inp}: line 51: not JSON" in caplog.text
    caplog.clear()
    assert main(["score", str(SMALL), str(inp), "--format", "jsonl", "--out-dir",
                 str(tmp_path / "parts"), "--engine", "ray", "--quiet"]) == 2
    assert f"{inp}: line 51: not JSON" in caplog.text
    # --resume continues an --out file on Ray as well.
    assert main(["score", str(SMALL), str(inp), "--format", "jsonl", "--out", str(out),
                 "--engine", "ray", "--on-error", "skip", "--resume", "--quiet"]) == 0
    rows = rows_of(out)
    assert [r["line"] for r in rows] == list(range(1, 53)) and "error" in rows[50]


def test_score_dataset_adds_the_numbers_to_a_users_pipeline(local_ray: None) -> None:
    texts = ["the stock market fell", "", "prices rose sharply"]
    ds = ray.data.from_items([{"id": i, "body": t} for i, t in enumerate(texts)])
    out = score_ray.score_dataset(ds, SMALL, field="body", actors=1).take_all()
    want = Scorer.load(SMALL).score(texts)
    got = sorted(out, key=lambda r: r["id"])
    for r, w in zip(got, want, strict=True):
        assert r["num_tokens"] == w["num_tokens"]
        assert r["log_prob"] == pytest.approx(w["log_prob"], abs=1e-4)
        assert r["body"] == texts[r["id"]]
