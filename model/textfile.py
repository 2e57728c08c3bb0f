"""Text files of one's own as a corpus: streamed, counted, encoded into one int32 array.

A file is read line by line as bytes (only ``\\n`` ends a line; a ``\\r`` before it is white
space to the normalisers), each line decoded as UTF-8 on its own so that an error names its
line. Each line with tokens gives its tokens and an ``<eos>``; lines without are skipped
(docs/design.md, "Training on a corpus of one's own"). Two passes, never the text in memory:
a count pass (which also hashes the file), then an encode pass into an array of the size the
first pass found.
"""

from __future__ import annotations

import hashlib
import logging
import sys
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from model.corpus import CorpusError
from model.normalize import Normalizer
from model.vocab import Vocab

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class FileInfo:
    """A corpus file as config.json records it."""

    name: str
    size: int
    sha256: str

    def to_dict(self) -> dict[str, Any]:
        """{"name", "size", "sha256"}."""
        return {"name": self.name, "size": self.size, "sha256": self.sha256}


@dataclass
class Counts:
    """What the count pass found in one file."""

    words: Counter[str]  # in first-occurrence order, as the vocabulary rule breaks ties
    tokens: int  # words plus one <eos> per line with words: the encoded length
    lines: int  # lines with words
    info: FileInfo


def _check(path: Path, what: str) -> None:
    """A CorpusError naming the file unless it is a file."""
    if not path.exists():
        raise CorpusError(f"{path}: the {what} file does not exist")
    if path.is_dir():
        raise CorpusError(f"{path}: the {what} file is a directory")


def _open(path: Path, what: str) -> Any:
    """The file opened for binary reading, or a CorpusError naming it."""
    _check(path, what)
    try:
        return path.open("rb")
    except OSError as e:
        raise CorpusError(f"{path}: cannot read the {what} file: {e}") from e


def _progress(path: Path, progress: bool, desc: str) -> Any:
    """A byte-counting progress bar on stderr."""
    from tqdm import tqdm

    return tqdm(total=path.stat().st_size, desc=f"{desc} {path.name}", unit="B",
                unit_scale=True, disable=not progress, file=sys.stderr, dynamic_ncols=True,
                leave=False)


def lines_of(path: Path, what: str, hasher: Any = None, bar: Any = None) -> Iterator[str]:
    """The decoded lines of a file; a line that is not UTF-8 stops it with its number."""
    with _open(path, what) as f:
        for n, raw in enumerate(f, 1):
            if hasher is not None:
                hasher.update(raw)
            if bar is not None:
                bar.update(len(raw))
            try:
                yield raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise CorpusError(f"{path}: line {n} is not UTF-8 ({e})") from None


def count_file(path: Path, normalizer: Normalizer, what: str = "training",
               progress: bool = False) -> Counts:
    """The count pass: the normaliser without a vocabulary, word counts, the file's sha256."""
    _check(path, what)
    words: Counter[str] = Counter()
    tokens = lines = 0
    hasher = hashlib.sha256()
    with _progress(path, progress, "counting") as bar:
        for line in lines_of(path, what, hasher, bar):
            for ws in normalizer.lines(line, counting=True):
                words.update(ws)
                tokens += len(ws) + 1
                lines += 1
    info = FileInfo(path.name, path.stat().st_size, hasher.hexdigest())
    if tokens == 0:
        raise CorpusError(f"{path}: the {what} file has no tokens after normalisation "
                          f"({normalizer.name})")
    return Counts(words, tokens, lines, info)


def encode_file(path: Path, vocab: Vocab, normalizer: Normalizer, size: int | None = None,
                what: str = "training", progress: bool = False) -> np.ndarray:
    """The encode pass: each line with tokens as its ids and <eos>, in one int32 array.

    ``size`` (the count pass's ``tokens``) preallocates the array; without it the ids are
    gathered in chunks and joined once.
    """
    _check(path, what)
    get, unk, eos = vocab.word_to_id.get, vocab.unk_id, vocab.eos_id
    out = np.empty(size, np.int32) if size is not None else None
    chunks: list[np.ndarray] = []
    buf: list[int] = []
    n = 0
    with _progress(path, progress, "encoding") as bar:
        for line in lines_of(path, what, bar=bar):
            for ws in normalizer.lines(line, vocab):
                buf.extend(get(w, unk) for w in ws)
                buf.append(eos)
            if len(buf) >= 1 << 16:
                n = _flush(buf, out, chunks, n)
        n = _flush(buf, out, chunks, n)
    if out is None:
        out = np.concatenate(chunks) if chunks else np.empty(0, np.int32)
    elif n != size:
        raise CorpusError(f"{path}: changed while it was read ({n} tokens, {size} counted)")
    if n == 0:
        raise CorpusError(f"{path}: the {what} file has no tokens after normalisation "
                          f"({normalizer.name})")
    return out


def _flush(buf: list[int], out: np.ndarray | None, chunks: list[np.ndarray], n: int) -> int:
    """Move buf's ids into out at n (or a new chunk); -> the new count."""
    if buf:
        a = np.fromiter(buf, np.int32, len(buf))
        if out is not None:
            if n + len(a) > len(out):
                raise CorpusError("a file changed while it was read (more tokens than counted)")
            out[n : n + len(a)] = a
        else:
            chunks.append(a)
        n += len(a)
        buf.clear()
    return n


def oov_share(ids: np.ndarray, vocab: Vocab) -> float:
    """The share of ids that are <unk> among those that are not <eos>."""
    words = ids[ids != vocab.eos_id]
    return float(np.mean(words == vocab.unk_id)) if words.size else 0.0


__all__ = ["Counts", "FileInfo", "count_file", "encode_file", "lines_of", "oov_share"]
