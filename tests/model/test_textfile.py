"""Tests for model.textfile and training on one's own text: the vocabulary rule, streamed
encoding, the train command end to end, and every bad input stopping with exit status 2."""

from __future__ import annotations

import json
import logging
import unicodedata
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from model.cli import main
from model.corpus import CorpusError, build_vocab
from model.normalize import Normalizer
from model.textfile import count_file, encode_file
from model.vocab import EOS, UNK, vocab_from_counts
from model.weights import load_weights
from tests.own_corpus import write_corpus

PLAIN = Normalizer("plain")
TINY = ["--wordvec-size", "8", "--hidden-size", "8", "--batch-size", "4", "--bptt", "5",
        "--epochs", "1", "--quiet", "--json"]


def _independent_counts(path: Path, lowercase: bool = False) -> Counter[str]:
    """The plain rule written out again: NFKC, split on white space, <eos> per line."""
    words: Counter[str] = Counter()
    for line in path.read_bytes().decode("utf-8").split("\n"):
        toks = unicodedata.normalize("NFKC", line).split()
        if lowercase:
            toks = [t.lower() for t in toks]
        words.update(toks)
    return words


def test_the_vocabulary_rule(tmp_path: Path) -> None:
    train, _, _ = write_corpus(tmp_path)
    counts = count_file(train, PLAIN)
    assert counts.words == _independent_counts(train)
    vocab = vocab_from_counts(counts.words, vocab_size=20)
    assert vocab.id_to_word[:2] == [EOS, UNK] and len(vocab) == 20
    # then by descending count, ties by first occurrence
    first = {w: i for i, w in enumerate(counts.words)}
    ranked = vocab.id_to_word[2:]
    keys = [(-counts.words[w], first[w]) for w in ranked]
    assert keys == sorted(keys)
    assert all(counts.words[w] >= counts.words[x] for w in ranked
               for x in counts.words if x not in vocab)
    by_min = vocab_from_counts(counts.words, min_count=60)
    assert all(counts.words[w] >= 60 for w in by_min.id_to_word[2:])
    assert {w for w, c in counts.words.items() if c >= 60} == set(by_min.id_to_word[2:])
    # the same files give the same vocab.txt: nothing depends on hash order or the machine
    again = vocab_from_counts(count_file(train, PLAIN).words, vocab_size=20)
    assert again.id_to_word == vocab.id_to_word


def test_the_rule_on_ptb_train_gives_ptbs_10000_words(ptb_dir: Path) -> None:
    counts = count_file(ptb_dir / "ptb.train.txt", Normalizer("ptb"))
    vocab = vocab_from_counts(counts.words)
    assert set(vocab.id_to_word) == set(build_vocab(ptb_dir).id_to_word)
    assert len(vocab) == 10_000 and vocab.id_to_word[:2] == [EOS, UNK]


def test_encoding_follows_the_line_rule(tmp_path: Path) -> None:
    f = tmp_path / "t.txt"
    f.write_bytes(b"A b\r\n\r\n\n  \nb\rc <unk> z\n")
    counts = count_file(f, PLAIN)
    vocab = vocab_from_counts(counts.words)
    ids = encode_file(f, vocab, PLAIN, counts.tokens)
    # a blank line adds nothing; \r\n ends a line, a lone \r is white space; z is in vocab
    assert vocab.decode(ids) == ["A", "b", EOS, "b", "c", UNK, "z", EOS]
    assert ids.dtype == np.int32 and counts.lines == 2


def test_a_line_that_is_not_utf8_is_named(tmp_path: Path) -> None:
    f = tmp_path / "t.txt"
    f.write_bytes(b"good line\nstill good\nbad \xff byte\n")
    with pytest.raises(CorpusError, match=r"t\.txt: line 3 is not UTF-8"):
        count_file(f, PLAIN)


def _train(tmp_path: Path, *extra: str, files: tuple[Path, ...] | None = None) -> int:
    train, valid, test = files or write_corpus(tmp_path / "data")
    return main(["train", "--train-file", str(train), "--valid-file", str(valid),
                 "--test-file", str(test), "--out", str(tmp_path / "w"),
                 "--run-dir", str(tmp_path / "run"), *TINY, *extra])


def test_train_on_files_writes_format_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                        ) -> None:
    assert _train(tmp_path, "--vocab-size", "40") == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["status"] == "finished"
    w = load_weights(tmp_path / "w")
    assert w.normalizer == Normalizer("plain", lowercase=False)
    meta = w.meta
    assert meta["format_version"] == 2 and meta["normalizer"] == {"name": "plain",
                                                                  "lowercase": False}
    files = meta["training"]["files"]
    assert set(files) == {"train", "valid", "test"}
    data = tmp_path / "data" / "train.txt"
    assert files["train"]["name"] == "train.txt" and files["train"]["size"] == data.stat().st_size
    assert len(files["train"]["sha256"]) == 64
    assert set(meta["metrics"]) == {"valid_perplexity", "valid_perplexity_book",
                                    "test_perplexity", "test_perplexity_book"}
    assert "Σοφία" in w.vocab and "顧客" in w.vocab and "Mrs." in w.vocab  # case and dots kept
    # rnnlm evaluate --file gives the recorded one-stream figure
    assert main(["evaluate", str(tmp_path / "w"), "--file", str(tmp_path / "data" / "test.txt"),
                 "--quiet", "--json"]) == 0
    r = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert abs(r["perplexity"] - meta["metrics"]["test_perplexity"]) < 1e-3


def test_lowercase_and_min_count(tmp_path: Path) -> None:
    assert _train(tmp_path, "--lowercase", "--min-count", "30") == 0
    w = load_weights(tmp_path / "w")
    assert w.normalizer == Normalizer("plain", lowercase=True)
    words = _independent_counts(tmp_path / "data" / "train.txt", lowercase=True)
    assert set(w.vocab.id_to_word[2:]) == {x for x, c in words.items() if c >= 30}
    assert all(x == x.lower() for x in w.vocab.id_to_word[2:])


def test_an_all_oov_validation_file_trains_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    train, _, test = write_corpus(tmp_path / "data")
    valid = tmp_path / "data" / "other.txt"
    valid.write_text("zzz qqq\n" * 200, encoding="utf-8")
    with caplog.at_level(logging.WARNING):
        assert _train(tmp_path, files=(train, valid, test)) == 0
    assert "every word of the valid file is outside the vocabulary" in caplog.text


def _bad(tmp_path: Path, case: str) -> tuple[list[str], str]:
    """The command line of one bad input, and what its message must say."""
    train, valid, _ = write_corpus(tmp_path / "data")
    out = ["--out", str(tmp_path / "w"), "--run-dir", str(tmp_path / "run"), *TINY]
    files = ["--train-file", str(train), "--valid-file", str(valid)]
    d = tmp_path / "data"
    if case == "missing":
        return ["--train-file", str(d / "nope.txt"), "--valid-file", str(valid), *out], \
            "nope.txt: the training file does not exist"
    if case == "directory":
        return ["--train-file", str(d), "--valid-file", str(valid), *out], "is a directory"
    if case == "empty":
        (d / "e.txt").write_text("", encoding="utf-8")
        return ["--train-file", str(d / "e.txt"), "--valid-file", str(valid), *out], \
            "e.txt: the training file has no tokens"
    if case == "empty-after-normalisation":
        (d / "p.txt").write_text("!!! ... ,,,\n\n--\n", encoding="utf-8")
        return ["--train-file", str(d / "p.txt"), "--valid-file", str(valid), *out,
                "--normalizer", "ptb"], "p.txt: the training file has no tokens"
    if case == "short":
        (d / "s.txt").write_text("a b c\n", encoding="utf-8")
        return ["--train-file", str(d / "s.txt"), "--valid-file", str(valid), *out], \
            "s.txt: 4 tokens, fewer than one batch window"
    if case == "not-utf8":
        (d / "v.txt").write_bytes(valid.read_bytes() + b"caf\xe9\n")
        bad_line = valid.read_bytes().count(b"\n") + 1
        return ["--train-file", str(train), "--valid-file", str(d / "v.txt"), *out], \
            f"v.txt: line {bad_line} is not UTF-8"
    if case == "vocab-size-2":
        return [*files, *out, "--vocab-size", "2"], "--vocab-size must be at least 3"
    if case == "vocab-size-and-min-count":
        return [*files, *out, "--vocab-size", "50", "--min-count", "2"], "exclusive"
    if case == "out-not-weights":
        (tmp_path / "w").mkdir()
        (tmp_path / "w" / "notes.txt").write_text("mine", encoding="utf-8")
        return [*files, *out], "is not a weights directory"
    raise AssertionError(case)


BAD = ["missing", "directory", "empty", "empty-after-normalisation", "short", "not-utf8",
       "vocab-size-2", "vocab-size-and-min-count", "out-not-weights"]


@pytest.mark.parametrize("case", BAD)
def test_a_bad_input_stops_with_status_2_and_one_line(
    tmp_path: Path, case: str, caplog: pytest.LogCaptureFixture
) -> None:
    args, says = _bad(tmp_path, case)
    with caplog.at_level(logging.ERROR):
        assert main(["train", *args]) == 2
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and says in errors[0], errors
    w = tmp_path / "w"
    assert not (w / "config.json").exists()  # no weights folder left behind
    assert not w.exists() or case == "out-not-weights"


def test_an_unknown_normalizer_is_a_usage_error(tmp_path: Path) -> None:
    train, valid, _ = write_corpus(tmp_path / "data")
    with pytest.raises(SystemExit) as e:
        main(["train", "--train-file", str(train), "--valid-file", str(valid), "--out",
              str(tmp_path / "w"), "--normalizer", "nfkc"])
    assert e.value.code == 2
    assert not (tmp_path / "w").exists()
