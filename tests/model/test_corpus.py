"""PTB corpus: data-dir resolution, checksums, sizes and the book's vocabulary."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from model.corpus import (
    DATA_DIR_ENV,
    PTB_FILES,
    PTB_SHA256,
    SPLITS,
    CorpusError,
    build_vocab,
    load_split,
    read_words,
    resolve_data_dir,
    split_path,
)
from model.vocab import EOS, Vocab

SIZES = {"train": 929589, "valid": 73760, "test": 82430}
LINES = {"train": 42068, "valid": 3370, "test": 3761}


@pytest.fixture
def ptb_copy(ptb_dir: Path, tmp_path: Path) -> Path:
    """A private copy of the valid and test splits (train is left out to stay quick)."""
    folder = tmp_path / "ptb"
    folder.mkdir()
    for split in ("valid", "test"):
        shutil.copyfile(ptb_dir / PTB_FILES[split], folder / PTB_FILES[split])
    return folder


def test_checksums_match_sha256sums(ptb_dir: Path) -> None:
    sums = dict(
        reversed(line.split()) for line in (ptb_dir / "SHA256SUMS").read_text().splitlines()
    )
    assert {split: sums[name] for split, name in PTB_FILES.items()} == PTB_SHA256
    assert set(PTB_FILES) == set(SPLITS) == {"train", "valid", "test"}


@pytest.mark.parametrize("split", SPLITS)
def test_split_sizes(ptb_dir: Path, ptb_vocab: Vocab, split: str) -> None:
    ids = load_split(ptb_dir, split, ptb_vocab)
    assert ids.dtype == np.int32
    assert ids.shape == (SIZES[split],)
    assert int(ids.min()) >= 0 and int(ids.max()) < len(ptb_vocab)
    assert int((ids == ptb_vocab.eos_id).sum()) == LINES[split]
    words = read_words(split_path(ptb_dir, split))
    assert ptb_vocab.decode(ids[:50]) == words[:50]


def test_build_vocab_matches_book(ptb_vocab: Vocab) -> None:
    assert len(ptb_vocab) == 10000
    assert ptb_vocab.id_to_word[:2] == ["aer", "banknote"]
    assert (ptb_vocab.word_to_id[EOS], ptb_vocab.word_to_id["<unk>"]) == (24, 26)


def test_read_words_is_the_books_tokenisation(tmp_path: Path) -> None:
    path = tmp_path / "tiny.txt"
    path.write_text(" a b \n c N \n", encoding="utf-8")
    assert read_words(path) == ["a", "b", EOS, "c", "N", EOS]


def test_altered_file_fails_checksum(ptb_copy: Path) -> None:
    path = ptb_copy / "ptb.test.txt"
    path.write_bytes(path.read_bytes().replace(b" the ", b" a ", 1))
    with pytest.raises(CorpusError, match=r"ptb\.test\.txt.*sha256") as info:
        split_path(ptb_copy, "test")
    assert "download-ptb" in str(info.value)
    with pytest.raises(CorpusError, match=r"ptb\.test\.txt"):
        load_split(ptb_copy, "test", Vocab.from_words(read_words(path)))
    assert split_path(ptb_copy, "test", verify=False) == path
    assert split_path(ptb_copy, "valid") == ptb_copy / "ptb.valid.txt"


def test_missing_file_is_named(ptb_copy: Path) -> None:
    with pytest.raises(CorpusError, match=r"ptb\.train\.txt is missing.*download-ptb"):
        split_path(ptb_copy, "train")
    with pytest.raises(CorpusError, match=r"ptb\.train\.txt"):
        build_vocab(ptb_copy)


def test_missing_folder_is_named(tmp_path: Path) -> None:
    folder = tmp_path / "nowhere"
    with pytest.raises(CorpusError, match=r"nowhere.*does not exist"):
        split_path(folder, "valid")


def test_unknown_split() -> None:
    with pytest.raises(ValueError, match="unknown PTB split"):
        split_path(".", "dev")


def test_word_outside_vocab(ptb_copy: Path) -> None:
    vocab = Vocab.from_words(["<eos>", "<unk>", "the"])
    with pytest.raises(CorpusError, match="not in the vocabulary"):
        load_split(ptb_copy, "valid", vocab)


def test_resolve_data_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(DATA_DIR_ENV, str(tmp_path / "from-env"))
    assert resolve_data_dir(tmp_path / "flag") == tmp_path / "flag"
    assert resolve_data_dir(str(tmp_path / "flag")) == tmp_path / "flag"
    assert resolve_data_dir(None) == tmp_path / "from-env"
    monkeypatch.delenv(DATA_DIR_ENV)
    with pytest.raises(CorpusError, match=f"--data-dir.*{DATA_DIR_ENV}"):
        resolve_data_dir(None)


def test_env_data_dir_is_used(
    monkeypatch: pytest.MonkeyPatch, ptb_copy: Path, ptb_vocab: Vocab
) -> None:
    monkeypatch.setenv(DATA_DIR_ENV, str(ptb_copy))
    ids = load_split(resolve_data_dir(None), "valid", ptb_vocab)
    assert ids.shape == (SIZES["valid"],)
