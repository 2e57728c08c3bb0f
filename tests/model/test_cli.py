"""The rnnlm command: import the book's model and reproduce its published perplexity."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest

from model.cli import main


def last_json(capsys: pytest.CaptureFixture[str]) -> dict:  # type: ignore[type-arg]
    out = capsys.readouterr().out.strip().splitlines()
    return json.loads(out[-1])


def test_book_model_reproduces_136_08(
    book_pkl: Path, ptb_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "book"
    rc = main(["import-book", "rnnlm", str(book_pkl), "--out", str(out), "--data-dir",
               str(ptb_dir), "--no-evaluate", "--quiet", "--json"])
    assert rc == 0
    assert last_json(capsys)["model"]["hidden_size"] == 100
    rc = main(["evaluate", str(out), "--data-dir", str(ptb_dir), "--book-batching", "--json",
               "--quiet"])
    assert rc == 0
    r = last_json(capsys)
    # The book's own code gives 136.0776 on test with its eval_perplexity batching.
    assert abs(r["perplexity"] - 136.0776) < 0.05
    assert r["tokens"] == 82250  # 179 trailing targets unscored, as in the book
    assert set(r) >= {"perplexity", "tokens", "seconds", "tokens_per_second"}


def test_one_stream_counts_every_target(
    book_weights: Path, ptb_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["evaluate", str(book_weights), "--data-dir", str(ptb_dir), "--split", "valid",
                 "--json", "--quiet"]) == 0
    r = last_json(capsys)
    assert r["tokens"] == 73760 - 1
    assert 100 < r["perplexity"] < 200


def test_generate_is_reproducible_with_a_seed(
    book_weights: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["generate", str(book_weights), "--prompt", "The company said", "--seed", "7",
            "--max-new-tokens", "15", "--json", "--top-k", "50"]
    assert main(args) == 0
    a = last_json(capsys)
    assert main(args) == 0
    b = last_json(capsys)
    assert a["tokens"] == b["tokens"]
    assert a["prompt_tokens"] == ["the", "company", "said"]
    assert "<unk>" not in a["tokens"]
    assert main([*args[:-2], "--greedy"]) == 0
    g = last_json(capsys)
    assert g["finish_reason"] in ("eos_token", "length")


class _Evil:
    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (Path.touch, (Path(self.marker),))  # type: ignore[attr-defined]


def test_import_book_refuses_code(
    tmp_path: Path, ptb_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    marker = tmp_path / "pwned"
    evil = _Evil()
    evil.marker = str(marker)  # type: ignore[attr-defined]
    pkl = tmp_path / "evil.pkl"
    pkl.write_bytes(pickle.dumps([np.zeros(3, dtype=np.float16), evil]))
    rc = main(["import-book", "rnnlm", str(pkl), "--out", str(tmp_path / "w"), "--data-dir",
               str(ptb_dir), "--quiet"])
    assert rc == 2
    assert not marker.exists()
    assert not (tmp_path / "w").exists()


def test_evaluate_names_a_missing_weights_dir(
    tmp_path: Path, ptb_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    rc = main(["evaluate", str(tmp_path / "nope"), "--data-dir", str(ptb_dir), "--quiet"])
    assert rc == 2
    assert "nope" in caplog.text


def test_help_for_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    for cmd in ("train", "evaluate", "generate", "import-book", "download-ptb", "plot"):
        with pytest.raises(SystemExit) as e:
            main([cmd, "--help"])
        assert e.value.code == 0
        assert "usage: rnnlm" in capsys.readouterr().out


def test_plot_table_puts_runs_side_by_side(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for name, ppls in (("a", [90.0, 80.0, 85.0]), ("b", [95.0, 70.0])):
        (tmp_path / name).mkdir()
        records = [{"type": "train", "epoch": 1, "ppl": 1.0}] + [
            {"type": "valid", "epoch": i + 1, "valid_ppl": p, "averaged": i == 2}
            for i, p in enumerate(ppls)]
        (tmp_path / name / "train_log.jsonl").write_text(
            "".join(json.dumps(r) + "\n" for r in records))
    logs = [str(tmp_path / n / "train_log.jsonl") for n in ("a", "b")]
    assert main(["plot", "--table", *logs]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "| epoch | a | b |", "| --- | --- | --- |", "| 1 | 90.00 | 95.00 |",
        "| 2 | **80.00** | **70.00** |", "| 3 | 85.00 a |  |"]
    assert main(["plot", *logs, "--out", str(tmp_path / "x.png")]) == 2  # a plot takes one
