"""Tests for model.book: the restricted unpickler and the import of the book's .pkl files."""

from __future__ import annotations

import os
import pickle
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from model.book import import_book, load_book_pickle
from model.rnnlm import ModelConfig
from model.vocab import Vocab
from model.weights import WeightsError, load_weights, save_weights
from tests.model.conftest import Eval, Pwn, marker_path

REPO_ROOT = Path(__file__).resolve().parents[2]
V, D, H = 12, 4, 4


def _vocab(n: int = V) -> Vocab:
    """A vocabulary of n words holding <eos> and <unk>."""
    return Vocab(["<eos>", "<unk>"] + [f"w{i}" for i in range(n - 2)])


# --- the book's .pkl -------------------------------------------------------------------------


def _book_params(kind: str, seed: int = 0) -> list[np.ndarray]:
    """The book's model.params list in its order, tied copies as the book makes them."""
    rng = np.random.default_rng(seed)
    embed = rng.standard_normal((V, D)).astype(np.float32)

    def lstm(n_in: int) -> list[np.ndarray]:
        return [
            rng.standard_normal((n_in, 4 * H)).astype(np.float32),
            rng.standard_normal((H, 4 * H)).astype(np.float32),
            rng.standard_normal(4 * H).astype(np.float32),
        ]

    affine_b = rng.standard_normal(V).astype(np.float32)
    if kind == "rnnlm":
        affine_w = rng.standard_normal((H, V)).astype(np.float32)
        return [embed, *lstm(D), affine_w, affine_b]
    # BetterRnnlm: TimeAffine(embed_W.T, affine_b), so the list holds a transposed view
    return [embed, *lstm(D), *lstm(H), embed.T, affine_b]


def _book_save(params: list[np.ndarray], path: Path, protocol: int | None = None) -> Path:
    """Exactly the book's BaseModel.save_params."""
    params = [p.astype(np.float16) for p in params]
    with path.open("wb") as f:
        pickle.dump(params, f, protocol=protocol)
    return path


@pytest.mark.parametrize("kind", ["rnnlm", "better"])
def test_import_book_like_file(tmp_path: Path, kind: str) -> None:
    book = _book_params(kind)
    pkl = _book_save(book, tmp_path / "model.pkl")
    config, params = import_book(kind, pkl, _vocab())  # type: ignore[arg-type]
    if kind == "rnnlm":
        assert config == ModelConfig(
            vocab_size=V, wordvec_size=D, hidden_size=H, num_layers=1, tied=False, dropout=0.0
        )
        names = ["embed.W", "lstm.0.Wx", "lstm.0.Wh", "lstm.0.b", "affine.W", "affine.b"]
        expected = dict(zip(names, book, strict=True))
    else:
        assert config == ModelConfig(
            vocab_size=V, wordvec_size=D, hidden_size=H, num_layers=2, tied=True, dropout=0.5
        )
        names = [
            "embed.W",
            "lstm.0.Wx",
            "lstm.0.Wh",
            "lstm.0.b",
            "lstm.1.Wx",
            "lstm.1.Wh",
            "lstm.1.b",
            "affine.W",
            "affine.b",
        ]
        expected = dict(zip(names, book, strict=True))
        del expected["affine.W"]
    assert set(params) == set(config.param_shapes()) == set(expected)
    for name, a in expected.items():
        assert params[name].dtype == np.float32
        assert params[name].flags.c_contiguous
        np.testing.assert_array_equal(params[name], a.astype(np.float16).astype(np.float32))
    # and the imported params make a loadable weights directory
    lw = load_weights(save_weights(tmp_path / "w", config, params, _vocab()))
    np.testing.assert_array_equal(lw.params["embed.W"], params["embed.W"])


def test_old_numpy_core_global_loads_without_warning(tmp_path: Path) -> None:
    """The real file names numpy.core.multiarray (numpy 1.x); it must load without warnings."""
    pkl = _book_save(_book_params("rnnlm"), tmp_path / "model.pkl", protocol=3)
    data = pkl.read_bytes()
    # protocol 3 writes globals as "module\nname\n" text, so the module name can be swapped
    assert b"numpy._core.multiarray\n" in data
    pkl.write_bytes(data.replace(b"numpy._core.multiarray\n", b"numpy.core.multiarray\n"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        arrays = load_book_pickle(pkl)
    assert [a.shape for a in arrays] == [a.shape for a in _book_params("rnnlm")]


@pytest.mark.parametrize("cls", [Pwn, Eval], ids=["os.system", "builtins.eval"])
def test_code_executing_pickle_is_refused(tmp_path: Path, cls: type) -> None:
    marker = marker_path()
    pkl = tmp_path / "evil.pkl"
    arrays: list[Any] = [np.zeros((2, 2), np.float16)]
    pkl.write_bytes(pickle.dumps([*arrays, cls(marker)]))
    with pytest.raises(WeightsError, match="refused global") as info:
        load_book_pickle(pkl)
    assert str(pkl) in str(info.value)
    with pytest.raises(WeightsError):
        import_book("rnnlm", pkl, _vocab())
    assert not marker.exists()


@pytest.mark.parametrize(
    ("payload", "needle"),
    [
        (pickle.dumps({"embed": 1}), "expected a list"),
        (pickle.dumps([np.zeros(2, np.float16), 3]), "item 1 is int"),
        (pickle.dumps([np.zeros(2, np.int64)]), "floating point"),
        (pickle.dumps([np.array(["a"], dtype=object)]), "dtype object"),
        (b"", "cannot read pickle"),
        (b"not a pickle at all", "cannot read pickle"),
        (pickle.dumps([np.zeros(2, np.float16)])[:-10], "cannot read pickle"),
    ],
)
def test_bad_book_pickles(tmp_path: Path, payload: bytes, needle: str) -> None:
    pkl = tmp_path / "bad.pkl"
    pkl.write_bytes(payload)
    with pytest.raises(WeightsError, match=needle) as info:
        load_book_pickle(pkl)
    assert str(pkl) in str(info.value)


def test_missing_book_file(tmp_path: Path) -> None:
    with pytest.raises(WeightsError, match="no such file"):
        load_book_pickle(tmp_path / "absent.pkl")


def test_mismatched_tied_copies_refused(tmp_path: Path) -> None:
    book = [p.astype(np.float16) for p in _book_params("better")]
    book[7] = book[7].copy()
    book[7][1, 2] += np.float16(0.5)
    pkl = tmp_path / "better.pkl"
    pkl.write_bytes(pickle.dumps(book))
    with pytest.raises(WeightsError, match=r"array 7 \(affine W\).*1 elements differ") as info:
        import_book("better", pkl, _vocab())
    assert str(pkl) in str(info.value)


def test_import_book_validates_count_shape_and_vocab(tmp_path: Path) -> None:
    pkl = _book_save(_book_params("better"), tmp_path / "better.pkl")
    with pytest.raises(WeightsError, match=r"holds 9 arrays.*Rnnlm saves 6"):
        import_book("rnnlm", pkl, _vocab())
    with pytest.raises(WeightsError, match="embedding has 12 rows, the vocabulary has 11"):
        import_book("better", pkl, _vocab(V - 1))
    book = _book_params("rnnlm")
    book[3] = np.zeros(3 * H, np.float32)
    pkl = _book_save(book, tmp_path / "rnnlm.pkl")
    with pytest.raises(
        WeightsError, match=r"array 3 \(LSTM b\) has shape \(12,\), expected \(16,\)"
    ):
        import_book("rnnlm", pkl, _vocab())
    with pytest.raises(ValueError, match="kind"):
        import_book("nope", pkl, _vocab())  # type: ignore[arg-type]


# --- the real file from the book -------------------------------------------------------------


def _shared_data() -> Path:
    return REPO_ROOT.parent / "shared" / "data"


def _book_pkl() -> Path:
    env = os.environ.get("RNNLM_BOOK_PKL")
    path = Path(env) if env else _shared_data() / "book" / "Rnnlm.pkl"
    if not path.is_file():
        pytest.skip(f"the book's Rnnlm.pkl is not at {path} (set RNNLM_BOOK_PKL to its path)")
    return path


def _ptb_vocab() -> Vocab:
    train = _shared_data() / "ptb" / "ptb.train.txt"
    if not train.is_file():
        pytest.skip(f"PTB is not at {train}; the book's vocabulary is built from it")
    return Vocab.from_words(train.read_text().replace("\n", "<eos>").split())


def test_import_real_book_rnnlm(tmp_path: Path) -> None:
    pkl = _book_pkl()
    vocab = _ptb_vocab()
    raw = load_book_pickle(pkl)
    assert [a.dtype for a in raw] == [np.dtype(np.float16)] * 6
    config, params = import_book("rnnlm", pkl, vocab)
    assert config == ModelConfig(
        vocab_size=10000,
        wordvec_size=100,
        hidden_size=100,
        num_layers=1,
        tied=False,
        dropout=0.0,
    )
    assert {k: v.shape for k, v in params.items()} == {
        "embed.W": (10000, 100),
        "lstm.0.Wx": (100, 400),
        "lstm.0.Wh": (100, 400),
        "lstm.0.b": (400,),
        "affine.W": (100, 10000),
        "affine.b": (10000,),
    }
    names = ["embed.W", "lstm.0.Wx", "lstm.0.Wh", "lstm.0.b", "affine.W", "affine.b"]
    for name, a in zip(names, raw, strict=True):
        assert params[name].dtype == np.float32
        np.testing.assert_array_equal(params[name], a.astype(np.float32))
    # float16 on disk keeps the book's values bit for bit
    lw = load_weights(save_weights(tmp_path / "book", config, params, vocab, dtype="float16"))
    for name, a in params.items():
        np.testing.assert_array_equal(lw.params[name], a)
    assert lw.vocab.id_to_word[0] == "aer"
