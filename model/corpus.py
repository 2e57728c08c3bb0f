"""PTB splits (Mikolov's ptb.{train,valid,test}.txt): locate, verify checksums, read, encode."""

from __future__ import annotations

import hashlib
import logging
import os
import urllib.request
from pathlib import Path

import numpy as np

from model.atomic import replace_file
from model.vocab import Vocab

logger = logging.getLogger(__name__)

DATA_DIR_ENV = "RNNLM_DATA_DIR"
SPLITS = ("train", "valid", "test")
PTB_FILES: dict[str, str] = {split: f"ptb.{split}.txt" for split in SPLITS}
PTB_SHA256: dict[str, str] = {
    "train": "fcea919f6cf83f35d4d00c6cbf08040d13d4155226340912e2fef9c9c4102cbf",
    "valid": "c9fe6985fe0d4ccb578183407d7668fc6066c20700cb4cf87d8ff1cc34df1bf2",
    "test": "dd65dff31e70846b2a6030a87482edcd5d199130cdcfa1f3dccbb033728deee0",
}
PTB_URL = "https://raw.githubusercontent.com/tomsercu/lstm/master/data/{name}"
_DOWNLOAD_TIMEOUT_S = 60.0


class CorpusError(Exception):
    """The PTB data is missing, altered or does not fit the vocabulary."""


def _how_to_get(data_dir: Path) -> str:
    """The remedy appended to every missing-data message."""
    return (
        f"run `rnnlm download-ptb {data_dir}` to fetch it, or point --data-dir / "
        f"{DATA_DIR_ENV} at the folder that holds ptb.{{train,valid,test}}.txt"
    )


def resolve_data_dir(data_dir: str | Path | None) -> Path:
    """The PTB folder: the flag if given, else $RNNLM_DATA_DIR, else a CorpusError."""
    if data_dir is not None and str(data_dir) != "":
        return Path(data_dir).expanduser()
    env = os.environ.get(DATA_DIR_ENV, "")
    if env:
        return Path(env).expanduser()
    raise CorpusError(
        "no PTB data directory given: pass --data-dir DIR or set "
        f"{DATA_DIR_ENV}=DIR, where DIR holds ptb.{{train,valid,test}}.txt "
        "(get them with `rnnlm download-ptb DIR`)"
    )


def _checked_path(data_dir: str | Path, split: str) -> Path:
    """Path of a split's file, raising CorpusError when it or its folder is missing."""
    if split not in PTB_FILES:
        raise ValueError(f"unknown PTB split {split!r}; expected one of {', '.join(SPLITS)}")
    folder = Path(data_dir)
    path = folder / PTB_FILES[split]
    if not folder.is_dir():
        raise CorpusError(f"PTB data directory {folder} does not exist; {_how_to_get(folder)}")
    if not path.is_file():
        raise CorpusError(f"PTB file {path} is missing; {_how_to_get(folder)}")
    return path


def _verify(path: Path, split: str, digest: str) -> None:
    """Raise CorpusError naming path when its sha256 is not the published one."""
    if digest != PTB_SHA256[split]:
        raise CorpusError(
            f"PTB file {path} has sha256 {digest}, expected {PTB_SHA256[split]}: it is altered "
            f"or not Mikolov's {PTB_FILES[split]}; replace it with "
            f"`rnnlm download-ptb {path.parent}`"
        )


def split_path(data_dir: str | Path, split: str, verify: bool = True) -> Path:
    """Path of ptb.<split>.txt in data_dir, checked to exist and (by default) its sha256."""
    path = _checked_path(data_dir, split)
    if verify:
        h = hashlib.sha256()
        with path.open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        _verify(path, split, h.hexdigest())
    return path


def _words_of(text: str) -> list[str]:
    """The book's ptb.load_data tokenisation: each newline an <eos>, split on whitespace."""
    return text.replace("\n", "<eos>").strip().split()


def read_words(path: str | Path) -> list[str]:
    """Tokens of a PTB-format file, exactly as the book's ptb.load_data reads them."""
    return _words_of(Path(path).read_text(encoding="utf-8"))


def _read_split(data_dir: str | Path, split: str, verify: bool) -> tuple[Path, list[str]]:
    """Read a split once, hashing the same bytes, so a big file is read and hashed once."""
    path = _checked_path(data_dir, split)
    data = path.read_bytes()
    if verify:
        _verify(path, split, hashlib.sha256(data).hexdigest())
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise CorpusError(f"PTB file {path} is not UTF-8 text ({e})") from e
    return path, _words_of(text)


def build_vocab(data_dir: str | Path, verify: bool = True) -> Vocab:
    """The book's vocabulary: ids in first-occurrence order of the train split."""
    _, words = _read_split(data_dir, "train", verify)
    vocab = Vocab.from_words(words)
    logger.debug("built a vocabulary of %d words from %s", len(vocab), data_dir)
    return vocab


def load_split(data_dir: str | Path, split: str, vocab: Vocab, verify: bool = True) -> np.ndarray:
    """A split as one int32 id stream (an <eos> per line); every word must be in vocab."""
    path, words = _read_split(data_dir, split, verify)
    get = vocab.word_to_id.get
    ids = np.fromiter((get(w, -1) for w in words), dtype=np.int32, count=len(words))
    missing = np.flatnonzero(ids < 0)
    if missing.size:
        first = int(missing[0])
        raise CorpusError(
            f"{path}: {missing.size} tokens are not in the vocabulary, the first "
            f"{words[first]!r} at token {first}; use the vocabulary built from the same "
            "ptb.train.txt"
        )
    return ids


def download_ptb(dest: str | Path) -> None:
    """Fetch the three PTB files into dest, each verified and then moved into place."""
    folder = Path(dest).expanduser()
    folder.mkdir(parents=True, exist_ok=True)
    for split in SPLITS:
        name = PTB_FILES[split]
        url = PTB_URL.format(name=name)
        logger.info("downloading %s", url)
        try:
            with urllib.request.urlopen(url, timeout=_DOWNLOAD_TIMEOUT_S) as response:
                data = response.read()
        except OSError as e:
            raise CorpusError(f"could not download {url}: {e}") from e
        digest = hashlib.sha256(data).hexdigest()
        if digest != PTB_SHA256[split]:
            raise CorpusError(
                f"{url} has sha256 {digest}, expected {PTB_SHA256[split]}; {name} not written"
            )
        # an interrupted download never leaves a truncated ptb.*.txt behind
        replace_file(folder / name, data)
        logger.info("wrote %s (%d bytes)", folder / name, len(data))
