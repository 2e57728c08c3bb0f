"""Tests for model.checkpoint: the weights directory format and the book's .pkl import."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pickle
import uuid
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from model import checkpoint
from model.checkpoint import (
    LoadedWeights,
    WeightsError,
    import_book,
    load_book_pickle,
    load_weights,
    save_weights,
    update_metrics,
)
from model.rnnlm import ModelConfig
from model.vocab import Vocab

REPO_ROOT = Path(__file__).resolve().parents[2]
V, D, H = 12, 4, 4

TIED = ModelConfig(vocab_size=V, wordvec_size=D, hidden_size=H, num_layers=2, tied=True)
UNTIED = ModelConfig(
    vocab_size=V, wordvec_size=3, hidden_size=5, num_layers=1, tied=False, dropout=0.0
)


def _vocab(n: int = V) -> Vocab:
    """A vocabulary of n words holding <eos> and <unk>."""
    return Vocab(["<eos>", "<unk>"] + [f"w{i}" for i in range(n - 2)])


def _params(config: ModelConfig, seed: int = 0) -> dict[str, np.ndarray]:
    """Random float32 params of config (biases too, so every value is exercised)."""
    rng = np.random.default_rng(seed)
    return {
        name: rng.standard_normal(shape).astype(np.float32)
        for name, shape in config.param_shapes().items()
    }


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _edit_config(weights_dir: Path, **changes: Any) -> None:
    """Rewrite top-level keys of config.json."""
    path = weights_dir / "config.json"
    meta = json.loads(path.read_text())
    meta.update(changes)
    path.write_text(json.dumps(meta))


def _fix_sha(weights_dir: Path, name: str) -> None:
    """Make config.json's checksum of name match the file, so a later check is what fires."""
    path = weights_dir / "config.json"
    meta = json.loads(path.read_text())
    meta["sha256"][name] = _sha(weights_dir / name)
    path.write_text(json.dumps(meta))


def _write_npz(weights_dir: Path, arrays: dict[str, Any], *, allow_pickle: bool = False) -> None:
    """Replace params.npz with arrays and record its checksum."""
    with (weights_dir / "params.npz").open("wb") as f:
        np.savez(f, allow_pickle=allow_pickle, **arrays)
    _fix_sha(weights_dir, "params.npz")


def _raw_npz(weights_dir: Path) -> dict[str, np.ndarray]:
    with np.load(weights_dir / "params.npz") as npz:
        return {k: npz[k] for k in npz.files}


@pytest.fixture
def saved(tmp_path: Path) -> Path:
    """A valid float16 weights directory of the tied config."""
    return save_weights(tmp_path / "w", TIED, _params(TIED), _vocab(), dtype="float16")


# --- save / load -----------------------------------------------------------------------------


@pytest.mark.parametrize("config", [TIED, UNTIED], ids=["tied", "untied"])
def test_roundtrip_float32_exact(tmp_path: Path, config: ModelConfig) -> None:
    params = _params(config)
    out = save_weights(
        tmp_path / "w",
        config,
        params,
        _vocab(),
        dtype="float32",
        training={"epochs": 3, "lr": np.float32(20.0)},
        metrics={"valid_perplexity": 123.5},
    )
    lw = load_weights(out)
    assert isinstance(lw, LoadedWeights)
    assert lw.config == config
    assert set(lw.params) == set(config.param_shapes())
    assert ("affine.W" in lw.params) == (not config.tied)
    for name, a in params.items():
        np.testing.assert_array_equal(lw.params[name], a)
    assert lw.vocab.id_to_word == _vocab().id_to_word
    assert lw.path == out.resolve()
    assert lw.sha256 == _sha(out / "params.npz")
    assert lw.meta["dtype"] == "float32"
    assert lw.meta["training"] == {"epochs": 3, "lr": 20.0}
    assert lw.meta["metrics"] == {"valid_perplexity": 123.5}


@pytest.mark.parametrize("config", [TIED, UNTIED], ids=["tied", "untied"])
def test_roundtrip_float16_rounding(tmp_path: Path, config: ModelConfig) -> None:
    params = _params(config)
    lw = load_weights(save_weights(tmp_path / "w", config, params, _vocab()))
    assert lw.meta["dtype"] == "float16"
    for name, a in params.items():
        np.testing.assert_array_equal(lw.params[name], a.astype(np.float16).astype(np.float32))
        # float16 keeps 11 significant bits: relative error at most 2**-11
        np.testing.assert_allclose(lw.params[name], a, rtol=2.0**-11, atol=2.0**-24)


def test_loaded_arrays_are_readonly_contiguous_float32(saved: Path) -> None:
    lw = load_weights(saved)
    for a in lw.params.values():
        assert a.dtype == np.float32
        assert a.flags.c_contiguous
        assert not a.flags.writeable
        with pytest.raises(ValueError, match="read-only"):
            a[...] = 0


def test_config_json_shape(saved: Path) -> None:
    meta = json.loads((saved / "config.json").read_text())
    assert list(meta) == [
        "format",
        "format_version",
        "model",
        "dtype",
        "sha256",
        "training",
        "metrics",
    ]
    assert meta["format"] == "rnnlm"
    assert meta["format_version"] == 1
    assert meta["model"] == TIED.to_dict()
    assert meta["sha256"] == {
        "params.npz": _sha(saved / "params.npz"),
        "vocab.txt": _sha(saved / "vocab.txt"),
    }
    assert sorted(os.listdir(saved)) == ["config.json", "params.npz", "vocab.txt"]
    assert "affine.W" not in _raw_npz(saved)
    assert all(a.dtype == np.float16 for a in _raw_npz(saved).values())


def test_load_logs_one_info_line(saved: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="model.checkpoint"):
        load_weights(saved)
    records = [r for r in caplog.records if r.name == "model.checkpoint"]
    assert len(records) == 1
    assert records[0].levelno == logging.INFO


def test_overwrite_replaces_and_leaves_no_temp(tmp_path: Path) -> None:
    out = tmp_path / "w"
    save_weights(out, TIED, _params(TIED, seed=1), _vocab(), dtype="float32")
    new = _params(TIED, seed=2)
    save_weights(out, TIED, new, _vocab(), dtype="float32")
    np.testing.assert_array_equal(load_weights(out).params["embed.W"], new["embed.W"])
    assert os.listdir(tmp_path) == ["w"]


def test_crash_while_writing_keeps_old_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "w"
    old = _params(TIED, seed=1)
    save_weights(out, TIED, old, _vocab(), dtype="float32")

    def boom(*args: Any, **kwargs: Any) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint.np, "savez", boom)
    with pytest.raises(OSError, match="disk full"):
        save_weights(out, TIED, _params(TIED, seed=2), _vocab(), dtype="float32")
    monkeypatch.undo()
    np.testing.assert_array_equal(load_weights(out).params["embed.W"], old["embed.W"])
    assert os.listdir(tmp_path) == ["w"]


def test_save_refuses_non_weights_dir(tmp_path: Path) -> None:
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "keep.txt").write_text("precious")
    with pytest.raises(ValueError, match="refusing"):
        save_weights(tmp_path / "other", TIED, _params(TIED), _vocab())
    assert (tmp_path / "other" / "keep.txt").read_text() == "precious"


def test_save_validates_params(tmp_path: Path) -> None:
    params = _params(TIED)
    with pytest.raises(ValueError, match=r"missing \['lstm.1.b'\]"):
        save_weights(
            tmp_path / "w", TIED, {k: v for k, v in params.items() if k != "lstm.1.b"}, _vocab()
        )
    with pytest.raises(ValueError, match=r"extra \['affine.W'\]"):
        save_weights(tmp_path / "w", TIED, {**params, "affine.W": np.zeros((H, V))}, _vocab())
    with pytest.raises(ValueError, match=r"lstm.0.Wh has shape \(4, 4\), expected \(4, 16\)"):
        save_weights(tmp_path / "w", TIED, {**params, "lstm.0.Wh": np.zeros((4, 4))}, _vocab())
    with pytest.raises(ValueError, match="vocabulary has 11 words"):
        save_weights(tmp_path / "w", TIED, params, _vocab(V - 1))
    with pytest.raises(ValueError, match="dtype"):
        save_weights(tmp_path / "w", TIED, params, _vocab(), dtype="float64")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="non-finite"):
        save_weights(tmp_path / "w", TIED, {**params, "affine.b": np.full(V, 1e6)}, _vocab())
    assert not (tmp_path / "w").exists()
    assert os.listdir(tmp_path) == []


def test_update_metrics(saved: Path) -> None:
    before = json.loads((saved / "config.json").read_text())
    meta = update_metrics(saved, {"test_perplexity": np.float64(99.5), "nan": float("nan")})
    after = json.loads((saved / "config.json").read_text())
    assert after == meta
    assert after["metrics"] == {"test_perplexity": 99.5, "nan": None}
    assert after["sha256"] == before["sha256"]
    assert after["model"] == before["model"]
    update_metrics(saved, {"valid_perplexity": 100.0})
    assert load_weights(saved).meta["metrics"] == {
        "test_perplexity": 99.5,
        "nan": None,
        "valid_perplexity": 100.0,
    }
    assert sorted(os.listdir(saved)) == ["config.json", "params.npz", "vocab.txt"]


# --- load failures: every one is a WeightsError naming the file ------------------------------


def _load_error(path: Path) -> str:
    with pytest.raises(WeightsError) as info:
        load_weights(path)
    return str(info.value)


def test_pkl_path_points_to_import_book(tmp_path: Path) -> None:
    pkl = tmp_path / "Rnnlm.pkl"
    pkl.write_bytes(b"\x80\x03]q\x00.")
    msg = _load_error(pkl)
    assert str(pkl) in msg
    assert "pickle file from the book" in msg
    assert "rnnlm import-book" in msg


def test_not_a_directory_or_missing(tmp_path: Path) -> None:
    f = tmp_path / "weights.bin"
    f.write_bytes(b"x")
    assert str(f) in _load_error(f)
    assert str(tmp_path / "nope") in _load_error(tmp_path / "nope")


@pytest.mark.parametrize("name", ["config.json", "params.npz", "vocab.txt"])
def test_missing_file(saved: Path, name: str) -> None:
    (saved / name).unlink()
    msg = _load_error(saved)
    assert str(saved / name) in msg
    assert "missing" in msg


def test_bad_json(saved: Path) -> None:
    (saved / "config.json").write_text("{not json")
    assert str(saved / "config.json") in _load_error(saved)


@pytest.mark.parametrize(
    ("changes", "needle"),
    [
        ({"format": "other"}, "format"),
        ({"format_version": 2}, "unknown format_version 2"),
        ({"format_version": "1"}, "unknown format_version '1'"),
        ({"format_version": True}, "unknown format_version True"),
        ({"dtype": "float64"}, "dtype"),
        ({"model": {**TIED.to_dict(), "extra": 1}}, 'invalid "model"'),
        ({"model": {**TIED.to_dict(), "wordvec_size": 5}}, 'invalid "model"'),
        ({"sha256": {"params.npz": "x"}}, "sha256"),
    ],
)
def test_bad_config_fields(saved: Path, changes: dict[str, Any], needle: str) -> None:
    _edit_config(saved, **changes)
    msg = _load_error(saved)
    assert str(saved / "config.json") in msg
    assert needle in msg


def test_truncated_params_fails_checksum(saved: Path) -> None:
    data = (saved / "params.npz").read_bytes()
    (saved / "params.npz").write_bytes(data[: len(data) // 2])
    msg = _load_error(saved)
    assert str(saved / "params.npz") in msg
    assert "sha256 mismatch" in msg


def test_truncated_params_with_matching_checksum(saved: Path) -> None:
    data = (saved / "params.npz").read_bytes()
    (saved / "params.npz").write_bytes(data[: len(data) // 2])
    _fix_sha(saved, "params.npz")
    msg = _load_error(saved)
    assert str(saved / "params.npz") in msg
    assert "cannot read arrays" in msg


@pytest.mark.parametrize("name", ["params.npz", "vocab.txt"])
def test_flipped_byte_fails_checksum_with_both_digests(saved: Path, name: str) -> None:
    path = saved / name
    expected = _sha(path)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    msg = _load_error(saved)
    assert str(path) in msg
    assert expected in msg
    assert _sha(path) in msg


def test_wrong_shape_with_consistent_checksum(saved: Path) -> None:
    arrays = _raw_npz(saved)
    arrays["lstm.1.Wh"] = np.zeros((H, 3 * H), np.float16)
    _write_npz(saved, arrays)
    msg = _load_error(saved)
    assert str(saved / "params.npz") in msg
    assert "lstm.1.Wh" in msg
    assert "(4, 12)" in msg
    assert "(4, 16)" in msg


def test_missing_and_extra_arrays(saved: Path) -> None:
    arrays = _raw_npz(saved)
    b = arrays.pop("affine.b")
    _write_npz(saved, arrays)
    msg = _load_error(saved)
    assert str(saved / "params.npz") in msg
    assert "missing ['affine.b']" in msg
    _write_npz(saved, {**arrays, "affine.b": b, "affine.W": np.zeros((H, V), np.float16)})
    msg = _load_error(saved)
    assert "extra ['affine.W']" in msg


def test_dtype_disagreeing_with_config(saved: Path) -> None:
    arrays = {k: v.astype(np.float32) for k, v in _raw_npz(saved).items()}
    _write_npz(saved, arrays)
    msg = _load_error(saved)
    assert str(saved / "params.npz") in msg
    assert "dtype float32" in msg


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_values(saved: Path, bad: float) -> None:
    arrays = _raw_npz(saved)
    arrays["lstm.0.b"][3] = bad
    _write_npz(saved, arrays)
    msg = _load_error(saved)
    assert str(saved / "params.npz") in msg
    assert "lstm.0.b" in msg
    assert "non-finite" in msg


def test_vocab_size_mismatch(saved: Path) -> None:
    _vocab(V + 1).save(saved / "vocab.txt")
    _fix_sha(saved, "vocab.txt")
    msg = _load_error(saved)
    assert str(saved / "vocab.txt") in msg
    assert "13 words" in msg


def test_invalid_vocab_file(saved: Path) -> None:
    (saved / "vocab.txt").write_bytes(b"\xff\xfe\n" * V)
    _fix_sha(saved, "vocab.txt")
    assert str(saved / "vocab.txt") in _load_error(saved)


class _Pwn:
    """Unpickling this runs a shell command that creates a marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (f"touch {self.marker}",))


class _Eval:
    """Unpickling this evaluates Python code that creates a marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (eval, (f"open({str(self.marker)!r}, 'w').close()",))


def _marker() -> Path:
    return Path(f"/tmp/pwned_{uuid.uuid4().hex}")


def test_object_array_in_npz_is_refused_not_unpickled(saved: Path) -> None:
    marker = _marker()
    arrays: dict[str, Any] = dict(_raw_npz(saved))
    obj = np.empty(V, dtype=object)
    obj[0] = _Pwn(marker)
    arrays["affine.b"] = obj
    _write_npz(saved, arrays, allow_pickle=True)
    msg = _load_error(saved)
    assert str(saved / "params.npz") in msg
    assert not marker.exists()


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


@pytest.mark.parametrize("cls", [_Pwn, _Eval], ids=["os.system", "builtins.eval"])
def test_code_executing_pickle_is_refused(tmp_path: Path, cls: type) -> None:
    marker = _marker()
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
