"""The normalisers that turn user text into a model's tokens: "ptb" and "plain".

``ptb`` makes text look like Mikolov's Penn Treebank (docs/design.md, "The PTB normaliser";
golden cases in ../shared/data/normalizer_cases.json); ``plain`` is for a corpus of one's
own (NFKC, optional lower case, white space, nothing else). Both end a line only at \\n
(or \\r\\n), and neither ever raises on a str.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from typing import Any

from model.vocab import EOS, UNK, Vocab

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


def _split_word(chunk: str, vocab: Vocab | None, out: list[str], counting: bool = False) -> None:
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
            if keep and (counting or (vocab is not None and _escape(_fold(core)) + "." in vocab)):
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


def _ptb_line(line: str, vocab: Vocab | None, counting: bool) -> list[str]:
    """Rules 2 and 4-8 on one line already through rule 1."""
    words: list[str] = []
    for chunk in _DROPPED.sub(" ", line).split():
        _split_word(chunk, vocab, words, counting)
    return words


def _plain_line(line: str, lowercase: bool) -> list[str]:
    """The plain normaliser's words of one line already through NFKC."""
    words = line.split()
    if lowercase:
        words = [w if w in (UNK, EOS) else w.lower() for w in words]
    return words


def _nfkc(text: str) -> str:
    """NFKC, a lone surrogate as the replacement character (it has no UTF-8 form)."""
    if text.isascii():
        return text
    return unicodedata.normalize("NFKC", _SURROGATE.sub("\ufffd", text))


@dataclass(frozen=True)
class Normalizer:
    """How a model's text becomes tokens: "ptb" (Mikolov's PTB conventions) or "plain"
    (NFKC, optional lower case, white space); recorded in the weights' config.json."""

    name: str = "ptb"
    lowercase: bool = False

    def __post_init__(self) -> None:
        if self.name not in NORMALIZERS:
            raise ValueError(f"unknown normalizer {self.name!r}; expected one of {NORMALIZERS}")
        if not isinstance(self.lowercase, bool):
            raise ValueError(f"normalizer lowercase must be true or false, got {self.lowercase!r}")

    def to_dict(self) -> dict[str, Any]:
        """The config.json object."""
        return {"name": self.name, "lowercase": self.lowercase}

    @classmethod
    def from_dict(cls, d: Any) -> Normalizer:
        """From config.json's "normalizer" (ValueError on a bad one)."""
        if not isinstance(d, dict) or set(d) != {"name", "lowercase"}:
            raise ValueError(f'"normalizer" must be {{"name", "lowercase"}}, got {d!r}')
        return cls(d["name"], d["lowercase"])

    def lines(self, text: str, vocab: Vocab | None = None, counting: bool = False
              ) -> list[list[str]]:
        """The words of each line of text that has any (only \\n and \\r\\n end a line).

        ``counting``: the vocabulary is being built, so nothing depends on one (for ptb, a
        trailing dot is kept, as the vocabulary may hold the word with it).
        """
        if self.name == "ptb":
            lines = (_ptb_line(x, vocab, counting) for x in _canon(text).split("\n"))
        else:
            # \r of a \r\n is white space to split(); a lone \r ends no line
            lines = (_plain_line(x, self.lowercase) for x in _nfkc(text).split("\n"))
        return [words for words in lines if words]

    def words(self, text: str, vocab: Vocab | None = None) -> list[str]:
        """The words of a text: its lines' words with one <eos> between lines (a run of line
        ends is one sentence boundary; none at the start or end)."""
        out: list[str] = []
        for n, words in enumerate(self.lines(text, vocab)):
            if n:
                out.append(EOS)
            out.extend(words)
        return out


NORMALIZERS = ("ptb", "plain")
PTB = Normalizer("ptb")


def normalize(text: str, vocab: Vocab | None = None) -> list[str]:
    """PTB-style words of user text (docs/design.md, rules 1-8); never raises on a str."""
    return PTB.words(text, vocab)


@dataclass(frozen=True)
class Tokenized:
    """What the normaliser makes of a text: words, vocabulary tokens, ids and OOV flags."""

    words: list[str]
    tokens: list[str]
    ids: list[int]
    oov: list[bool]
    oov_words: list[str]


@dataclass(frozen=True)
class Tokenizer:
    """A model's vocabulary with its own normaliser: text -> Tokenized."""

    vocab: Vocab
    normalizer: Normalizer = PTB

    def __call__(self, text: str) -> Tokenized:
        return tokenize(text, self.vocab, self.normalizer)


def tokenize(text: str, vocab: Vocab, normalizer: Normalizer = PTB) -> Tokenized:
    """Normalise text and map it onto vocab (rule 9: unknown words become <unk>)."""
    words = normalizer.words(text, vocab)
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
