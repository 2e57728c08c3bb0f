"""Vocab: the fixed word <-> id mapping of a model (vocab.txt), and how one is built from counts."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
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


def check_vocab_limits(vocab_size: int | None, min_count: int | None) -> None:
    """ValueError unless at most one limit is given and it is usable."""
    if vocab_size is not None and min_count is not None:
        raise ValueError("--vocab-size and --min-count are exclusive: give one")
    if vocab_size is not None and vocab_size < 3:
        raise ValueError(f"--vocab-size must be at least 3 (<eos>, <unk>, a word): {vocab_size}")
    if min_count is not None and min_count < 1:
        raise ValueError(f"--min-count must be at least 1, got {min_count}")


def vocab_from_counts(
    counts: Mapping[str, int], vocab_size: int | None = None, min_count: int | None = None
) -> Vocab:
    """<eos> (id 0), <unk> (id 1), then the other tokens by descending count, ties broken by
    first occurrence (``counts`` in first-occurrence order, as a Counter fills), until
    vocab_size tokens in all, or every token seen at least min_count times."""
    check_vocab_limits(vocab_size, min_count)
    order = {w: i for i, w in enumerate(counts)}
    ranked = sorted((w for w in counts if w not in (EOS, UNK)),
                    key=lambda w: (-counts[w], order[w]))
    if min_count is not None:
        ranked = [w for w in ranked if counts[w] >= min_count]
    else:
        ranked = ranked[: (vocab_size or 10_000) - 2]
    return Vocab([EOS, UNK, *ranked])
