"""Vocab and the PTB-style normaliser: golden cases, properties, PTB round trip."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from model.normalize import Tokenized, normalize, tokenize
from model.vocab import EOS, UNK, Vocab

GOLDEN = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "normalizer_cases.json"


def _golden_cases() -> list[Any]:
    """Golden cases as pytest params, or one skipped param when the shared data is absent."""
    if not GOLDEN.is_file():
        return [pytest.param(None, marks=pytest.mark.skip(reason=f"{GOLDEN} not found"))]
    cases = json.loads(GOLDEN.read_text(encoding="utf-8"))["cases"]
    return [pytest.param(c, id=repr(c["input"])[:40]) for c in cases]


# Characters and fragments that exercise every rule, so the properties meet clitics,
# dots, numbers, escapes and Unicode oddities far more often than plain st.text() does.
_PIECES = [
    *"aAsSnNtTdmMyY'\u2019\u201c\".,$#%/*\\-&;:()[]{}!? \n\t\r0159",
    *("<unk>", "<eos>", "n't", "'s", "mr.", "u.s.", "...", "--", "1,000", "3.5"),
    *("\u0301", "\u0130", "\u03a3", "\u00ad", "\u200b", "\u00bd", "\u01c5", "\ufb01", "\ufeff"),
    *("\u00e9", "\u212a", "\x00", "\x85", "\u2028", "\U0001f600", "\ud800"),
]
_tricky_text = st.lists(st.sampled_from(_PIECES), max_size=30).map("".join)
_any_text = st.one_of(st.text(), st.text(st.characters(exclude_categories=())), _tricky_text)
_PROPERTY_SETTINGS = settings(
    max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


# --- Vocab


def test_ptb_vocab_ids(ptb_vocab: Vocab) -> None:
    assert len(ptb_vocab) == 10000
    assert ptb_vocab.word_to_id["aer"] == 0
    assert ptb_vocab.eos_id == ptb_vocab.word_to_id[EOS] == 24
    assert ptb_vocab.unk_id == ptb_vocab.word_to_id[UNK] == 26
    assert "N" in ptb_vocab


def test_encode_decode() -> None:
    vocab = Vocab([EOS, UNK, "a", "b"])
    assert vocab.encode(["a", "zzz", "b", EOS]) == [2, 1, 3, 0]
    assert vocab.decode([3, 2]) == ["b", "a"]


def test_save_load_roundtrip(tmp_path: Path, ptb_vocab: Vocab) -> None:
    path = tmp_path / "vocab.txt"
    ptb_vocab.save(path)
    loaded = Vocab.load(path)
    assert loaded.id_to_word == ptb_vocab.id_to_word
    assert (loaded.eos_id, loaded.unk_id) == (24, 26)
    assert path.read_text(encoding="utf-8").count("\n") == 10000


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ("a\n\nb\n<eos>\n<unk>\n", "line 2"),
        ("a b\n<eos>\n<unk>\n", "line 1"),
        ("a\na\n<eos>\n<unk>\n", "duplicate"),
        ("a\n<unk>\n", "<eos>"),
        ("a\n<eos>\n", "<unk>"),
    ],
    ids=["empty-line", "two-tokens", "duplicate", "no-eos", "no-unk"],
)
def test_load_rejects_bad_vocab_file(tmp_path: Path, content: str, match: str) -> None:
    path = tmp_path / "vocab.txt"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(ValueError, match=match):
        Vocab.load(path)


# --- The normaliser


@pytest.mark.parametrize("case", _golden_cases())
def test_golden_case(case: dict[str, Any], ptb_vocab: Vocab) -> None:
    assert normalize(case["input"], ptb_vocab) == case["words"]
    t = tokenize(case["input"], ptb_vocab)
    assert t.words == case["words"]
    assert t.tokens == case["tokens"]
    assert t.oov_words == case["oov"]
    assert t.ids == ptb_vocab.encode(t.tokens)
    assert t.oov == [tok == UNK for tok in t.tokens]


def test_literal_unk_is_oov_but_not_an_oov_word(ptb_vocab: Vocab) -> None:
    t = tokenize("<unk> zyxwvut", ptb_vocab)
    assert t.tokens == [UNK, UNK]
    assert t.oov == [True, True]
    assert t.oov_words == ["zyxwvut"]


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("Mr. Smith", ["mr", "smith"]),  # no vocabulary: a trailing dot is always stripped
        ("U.S. end.", ["u.s", "end"]),
        ("a\n\nb\n", ["a", EOS, "b"]),  # a run of line ends is one <eos>, none at the end
        ("\n\na\r\n\r\nb", ["a", EOS, "b"]),  # none at the start either
        ("a\rb", ["a", "b"]),  # a lone \r ends no line
        ("a\r\nb", ["a", EOS, "b"]),  # \r is a control character, so a space
        ("a\x00b\u200bc", ["a", "b", "c"]),
        ("co\u00adoperate", ["cooperate"]),  # a soft hyphen is invisible
        ("\uff21\uff22\uff23 \u00bd", ["abc", "N"]),  # NFKC: full-width letters, "1/2"
        ("\u2018quoted\u2019 it\u2019s", ["'quoted'", "it", "'s"]),
        ("N <UNK> <eos> n", ["N", UNK, EOS, "n"]),
        ("N's N.", ["N", "'s", "N"]),
        ("$$5 #1's 5%.", ["$", "$", "N", "#", "N", "'s", "N", "N"]),
        ("a*b ** \\/ 1\\/2", ["a\\*b", "\\*\\*", "N"]),
        ("-5 .5 1.5.3 1..2 3:30", ["-5", "N", "N", "1..2", "N", "N"]),
        ("hi,there a--b x...y", ["hi", "there", "a", "b", "x", "y"]),
        ("they'd've s' 's", ["they", "'d", "'ve", "s", "'", "'s"]),
        ("\ud800x", ["\ufffdx"]),
        ("- . ' @ &", ["'", "&"]),
    ],
)
def test_rules_without_vocab(text: str, words: list[str]) -> None:
    assert normalize(text) == words


def test_dotted_vocab_words_keep_their_dot(ptb_vocab: Vocab) -> None:
    assert normalize("Corp.'s U.S. a.m.. N.", ptb_vocab) == ["corp.", "'s", "u.s.", "a.m.", "N"]


def test_tiny_vocab_reports_symbols_as_oov() -> None:
    t = tokenize("$5 and *", Vocab([EOS, UNK, "and"]))
    assert t.tokens == [UNK, UNK, "and", UNK]
    assert t.oov_words == ["$", "N", "\\*"]


def test_tokenized_is_frozen(ptb_vocab: Vocab) -> None:
    t = tokenize("a b", ptb_vocab)
    assert isinstance(t, Tokenized)
    with pytest.raises(AttributeError):
        t.words = []  # type: ignore[misc]


@_PROPERTY_SETTINGS
@given(text=_any_text)
def test_never_raises_and_is_idempotent_without_vocab(text: str) -> None:
    words = normalize(text)
    assert all(w and not any(c.isspace() for c in w) for w in words)
    assert normalize(" ".join(words)) == words


@_PROPERTY_SETTINGS
@given(text=_any_text)
def test_tokenize_is_idempotent(text: str, ptb_vocab: Vocab) -> None:
    t = tokenize(text, ptb_vocab)
    assert normalize(" ".join(t.words), ptb_vocab) == t.words
    assert tokenize(" ".join(t.words), ptb_vocab) == t
    again = tokenize(" ".join(t.tokens), ptb_vocab)
    assert (again.tokens, again.ids, again.oov) == (t.tokens, t.ids, t.oov)
    assert len(t.words) == len(t.tokens) == len(t.ids) == len(t.oov)
    assert t.oov_words == [w for w in t.words if w not in ptb_vocab]


def test_every_ptb_test_line_normalises_to_itself(ptb_dir: Path, ptb_vocab: Vocab) -> None:
    lines = (ptb_dir / "ptb.test.txt").read_text(encoding="utf-8").split("\n")
    for line in lines:
        t = tokenize(line, ptb_vocab)
        assert t.tokens == t.words == line.split(), line
        assert not any(t.oov) or UNK in line


def test_whole_ptb_test_file_keeps_its_tokens(ptb_dir: Path, ptb_vocab: Vocab) -> None:
    text = (ptb_dir / "ptb.test.txt").read_text(encoding="utf-8")
    words = normalize(text, ptb_vocab)
    # a text's closing line end adds no <eos> (docs/design.md, line ends)
    assert [*words, EOS] == text.replace("\n", " <eos> ").split()
    assert len(words) == 82429
