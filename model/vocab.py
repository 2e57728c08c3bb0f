"""Vocab (ids in first-occurrence order of ptb.train.txt) and the PTB-style normaliser."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

EOS = "<eos>"
UNK = "<unk>"


class Vocab:
    """A fixed word <-> id mapping; id = position in ``words``."""

    def __init__(self, words: Sequence[str]) -> None:
        self.id_to_word: list[str] = list(words)
        self.word_to_id: dict[str, int] = {w: i for i, w in enumerate(self.id_to_word)}
        if len(self.word_to_id) != len(self.id_to_word):
            raise ValueError("vocabulary has duplicate words")
        for special in (EOS, UNK):
            if special not in self.word_to_id:
                raise ValueError(f"vocabulary lacks {special}")
        self.eos_id = self.word_to_id[EOS]
        self.unk_id = self.word_to_id[UNK]

    def __len__(self) -> int:
        return len(self.id_to_word)

    def __contains__(self, word: object) -> bool:
        return word in self.word_to_id

    def encode(self, tokens: Iterable[str]) -> list[int]:
        """Ids of tokens; a word outside the vocabulary becomes <unk>."""
        get, unk = self.word_to_id.get, self.unk_id
        return [get(t, unk) for t in tokens]

    def decode(self, ids: Iterable[int]) -> list[str]:
        """Words of ids."""
        return [self.id_to_word[int(i)] for i in ids]

    @classmethod
    def from_words(cls, stream: Iterable[str]) -> Vocab:
        """Ids in order of first occurrence in a token stream (the book's order)."""
        seen: dict[str, None] = {}
        for w in stream:
            seen.setdefault(w, None)
        return cls(list(seen))

    def save(self, path: str | Path) -> None:
        """vocab.txt: UTF-8, one token a line, id = 0-based line number."""
        Path(path).write_text("".join(w + "\n" for w in self.id_to_word), encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path) -> Vocab:
        """Read vocab.txt written by save."""
        text = Path(path).read_text(encoding="utf-8")
        words = text.split("\n")
        if words and words[-1] == "":
            words.pop()
        for n, w in enumerate(words, 1):
            if not w or any(ch.isspace() for ch in w):
                raise ValueError(f"{path}: line {n} is not a single token: {w!r}")
        return cls(words)


# --- The PTB-style normaliser (docs/design.md, "The PTB normaliser"; golden cases in
# ../shared/data/normalizer_cases.json).

# Tokens that keep their case and skip every other rule (rule 2).
_SPECIALS = frozenset({"N", UNK, EOS})
# Symbol-only tokens PTB kept (its vocabulary's punctuation-only words), spared by rule 6's
# "lone punctuation" drop even without a vocabulary; `%` is not here because it becomes N.
_KEPT_SYMBOLS = frozenset({"$", "#", "&", "'", "\\*", "\\*\\*"})
_ASCII_PUNCT = frozenset("!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~")

# Rule 1. Cc controls count as spaces (newline excepted: it ends a sentence); invisible format
# characters too (a zero-width space separates words), but a soft hyphen only marks a possible
# line break inside a word, so it is removed. U+2044 is what NFKC makes of the slash in "½".
_CHAR_MAP: dict[int, str] = {c: " " for c in (*range(0x00, 0x20), *range(0x7F, 0xA0)) if c != 0x0A}
_ASCII_CHAR_MAP = {c: s for c, s in _CHAR_MAP.items() if c < 0x80}
_CHAR_MAP.update({ord(c): "'" for c in "\u2018\u2019\u201a\u201b\u2032\u2035\u2039\u203a"})
_CHAR_MAP.update({ord(c): '"' for c in "\u201c\u201d\u201e\u201f\u2033\u2036\u00ab\u00bb"})
_CHAR_MAP.update({c: " " for c in (0x180E, *range(0x200B, 0x2010), *range(0x202A, 0x202F))})
_CHAR_MAP.update({c: " " for c in (*range(0x2060, 0x2065), *range(0x2066, 0x2070), 0xFEFF)})
_CHAR_MAP.update({0xAD: "", 0x2044: "/"})
_ASCII_CONTROL = re.compile(r"[\x00-\x09\x0b-\x1f\x7f]")
# A lone surrogate (possible in str, e.g. from a JSON "\ud800" escape) cannot be encoded as
# UTF-8 later on, so it becomes the replacement character like any other undecodable input.
_SURROGATE = re.compile("[\ud800-\udfff]")

# Rule 6: punctuation PTB dropped acts as a word separator; a comma inside a number is kept.
_DROPPED = re.compile(r"""[;:?!"()\[\]{}]|-{2,}|\.{3,}|,(?![0-9])|(?<![0-9]),""")
# Rule 4: clitics at a word's end; `'` alone only as a plural possessive (after an s).
_CLITIC = re.compile(r"(?:n't|'(?:s|re|ve|ll|d|m)|(?<=s)')\Z", re.IGNORECASE)
# Rule 7: digits with , . / inside (and a bare decimal like .5); never letters or hyphens.
_NUMBER = re.compile(r"[0-9]+(?:[.,/][0-9]+)*|\.[0-9]+")
# Rule 8: PTB escapes / and *; unescaping first makes escaping idempotent.
_ESCAPED = re.compile(r"\\([/*])")
_TO_ESCAPE = re.compile(r"([/*])")
# A plain lower-case word needs none of the rules (most of PTB-like text): a fast path.
_PLAIN = re.compile(r"[a-z][a-z0-9&-]*")


def _canon(text: str) -> str:
    """Rule 1: NFKC, straight quotes, controls as spaces, repeated until stable."""
    if text.isascii():
        return text.translate(_ASCII_CHAR_MAP) if _ASCII_CONTROL.search(text) else text
    text = _SURROGATE.sub("\ufffd", text)
    # Mapping can expose new NFKC compositions and NFKC can yield mapped characters, so
    # iterate; two rounds suffice in practice, the bound only guards against surprises.
    for _ in range(4):
        new = unicodedata.normalize("NFKC", text.translate(_CHAR_MAP))
        if new == text:
            break
        text = new
    return text


def _fold(word: str) -> str:
    """Rule 2's lower case, kept NFKC-stable so that normalising again changes nothing."""
    if word.isascii():
        return word.lower()
    for _ in range(4):
        new = _canon(word).lower()
        if new == word:
            break
        word = new
    return word


def _escape(word: str) -> str:
    """Rule 8: `/` -> `\\/`, `*` -> `\\*`."""
    return _TO_ESCAPE.sub(r"\\\1", word) if ("/" in word or "*" in word) else word


def _is_punct(word: str) -> bool:
    """True when every character is punctuation (ASCII symbols or Unicode category P*)."""
    return all(c in _ASCII_PUNCT or unicodedata.category(c)[0] == "P" for c in word)


def _finish(piece: str, vocab: Vocab | None) -> str:
    """Rules 2, 6 (lone punctuation), 7 and 8 on one split-off piece; '' drops it."""
    if piece in _SPECIALS:
        return piece
    if piece == "%" or _NUMBER.fullmatch(piece):
        return "N"
    word = _escape(_fold(piece))
    if _is_punct(word) and word not in _KEPT_SYMBOLS and (vocab is None or word not in vocab):
        return ""
    return word


def _split_word(chunk: str, vocab: Vocab | None, out: list[str]) -> None:
    """Rules 2 and 4-8 on one whitespace-separated chunk, appending its words to out."""
    if chunk in _SPECIALS or _PLAIN.fullmatch(chunk):
        out.append(chunk)
        return
    word = _ESCAPED.sub(r"\1", chunk) if "\\" in chunk else chunk
    head: list[str] = []
    while len(word) > 1 and word[0] in "$#":
        head.append(word[0])
        word = word[1:]
    tail: list[str] = []
    while word:
        if word[-1] == ".":
            core = word.rstrip(".")
            # `N.` ends a sentence about a number; it is not the initial `n.`.
            keep = core and core not in _SPECIALS
            if keep and vocab is not None and _escape(_fold(core)) + "." in vocab:
                word = core + "."
                break
            word = core
            continue
        if word[-1] == "%" and len(word) > 1:
            tail.append("%")
            word = word[:-1]
            continue
        m = _CLITIC.search(word)
        if m is not None and m.start() > 0:
            tail.append(m.group())
            word = word[: m.start()]
            continue
        break
    for piece in (*head, word, *reversed(tail)):
        if piece and (done := _finish(piece, vocab)):
            out.append(done)


def normalize(text: str, vocab: Vocab | None = None) -> list[str]:
    """PTB-style words of user text (docs/design.md, rules 1-8); never raises on a str."""
    words: list[str] = []
    for n, line in enumerate(_canon(text).split("\n")):
        if n:
            words.append(EOS)
        for chunk in _DROPPED.sub(" ", line).split():
            _split_word(chunk, vocab, words)
    return words


@dataclass(frozen=True)
class Tokenized:
    """What the normaliser makes of a text: words, vocabulary tokens, ids and OOV flags."""

    words: list[str]
    tokens: list[str]
    ids: list[int]
    oov: list[bool]
    oov_words: list[str]


def tokenize(text: str, vocab: Vocab) -> Tokenized:
    """Normalise text and map it onto vocab (rule 9: unknown words become <unk>)."""
    words = normalize(text, vocab)
    get, unk_id = vocab.word_to_id.get, vocab.unk_id
    ids: list[int] = []
    oov_words: list[str] = []
    for w in words:
        i = get(w)
        if i is None:
            i = unk_id
            oov_words.append(w)
        ids.append(i)
    tokens = [UNK if i == unk_id else w for w, i in zip(words, ids, strict=True)]
    return Tokenized(
        words=words,
        tokens=tokens,
        ids=ids,
        oov=[i == unk_id for i in ids],
        oov_words=oov_words,
    )
