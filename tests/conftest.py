"""Shared pytest fixtures: where the read-only shared data (PTB, golden cases) lives."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from model.corpus import DATA_DIR_ENV, PTB_FILES, build_vocab
from model.vocab import Vocab

REPO_ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data_dir() -> Path:
    """../shared/data (golden cases, book parameters); skips when absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def ptb_dir() -> Path:
    """The folder holding ptb.{train,valid,test}.txt: $RNNLM_DATA_DIR or ../shared/data/ptb."""
    env = os.environ.get(DATA_DIR_ENV, "")
    path = Path(env) if env else SHARED_DATA / "ptb"
    if not all((path / name).is_file() for name in PTB_FILES.values()):
        pytest.skip(f"PTB data not found at {path}; set {DATA_DIR_ENV}")
    return path


@pytest.fixture(scope="session")
def ptb_vocab(ptb_dir: Path) -> Vocab:
    """The book's 10,000-word vocabulary built from ptb_dir's train split."""
    return build_vocab(ptb_dir)


@pytest.fixture(scope="session")
def book_pkl(shared_data_dir: Path) -> Path:
    """The book's trained chapter-6 Rnnlm.pkl; skips when absent."""
    path = shared_data_dir / "book" / "Rnnlm.pkl"
    if not path.is_file():
        pytest.skip(f"the book's parameter file is not at {path}")
    return path


@pytest.fixture(scope="session")
def book_weights(
    book_pkl: Path, ptb_vocab: Vocab, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """The book's Rnnlm imported into a weights directory (float16 on disk, as shipped)."""
    from model.book import import_book
    from model.weights import save_weights

    config, params = import_book("rnnlm", book_pkl, ptb_vocab)
    out = tmp_path_factory.mktemp("book") / "book-rnnlm"
    return save_weights(out, config, params, ptb_vocab, dtype="float16")
