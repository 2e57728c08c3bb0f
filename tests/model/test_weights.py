"""Tests for model.weights: the weights directory format, saved, loaded and verified."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from model import weights as checkpoint
from model.normalize import Normalizer
from model.rnnlm import ModelConfig
from model.vocab import Vocab
from model.weights import (
    LoadedWeights,
    WeightsError,
    load_weights,
    save_weights,
    update_metrics,
)
from tests.model.conftest import Pwn, marker_path

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
        "normalizer",
        "dtype",
        "sha256",
        "training",
        "metrics",
    ]
    assert meta["format"] == "rnnlm"
    assert meta["format_version"] == 2
    assert meta["model"] == TIED.to_dict()
    assert meta["normalizer"] == {"name": "ptb", "lowercase": False}
    assert meta["sha256"] == {
        "params.npz": _sha(saved / "params.npz"),
        "vocab.txt": _sha(saved / "vocab.txt"),
    }
    assert sorted(os.listdir(saved)) == ["config.json", "params.npz", "vocab.txt"]
    assert "affine.W" not in _raw_npz(saved)
    assert all(a.dtype == np.float16 for a in _raw_npz(saved).values())


def test_load_logs_one_info_line(saved: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="model.weights"):
        load_weights(saved)
    records = [r for r in caplog.records if r.name == "model.weights"]
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
        ({"format_version": 3}, "unknown format_version 3"),
        ({"normalizer": {"name": "nfkc", "lowercase": False}}, "unknown normalizer 'nfkc'"),
        ({"normalizer": {"name": "plain"}}, '"normalizer" must be'),
        ({"normalizer": "plain"}, '"normalizer" must be'),
        ({"normalizer": {"name": "plain", "lowercase": "yes"}}, "lowercase must be true or false"),
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


def test_format_2_needs_its_normalizer(saved: Path) -> None:
    meta = json.loads((saved / "config.json").read_text())
    del meta["normalizer"]
    (saved / "config.json").write_text(json.dumps(meta))
    msg = _load_error(saved)
    assert str(saved / "config.json") in msg and 'needs "normalizer"' in msg


def test_format_1_loads_as_ptb_and_format_2_keeps_its_normalizer(tmp_path: Path) -> None:
    one = save_weights(tmp_path / "one", TIED, _params(TIED), _vocab())
    meta = json.loads((one / "config.json").read_text())
    del meta["normalizer"]
    meta["format_version"] = 1  # as the shipped models and every earlier import are
    (one / "config.json").write_text(json.dumps(meta))
    assert load_weights(one).normalizer == Normalizer("ptb")
    two = save_weights(tmp_path / "two", TIED, _params(TIED), _vocab(),
                       normalizer=Normalizer("plain", lowercase=True))
    assert load_weights(two).normalizer == Normalizer("plain", lowercase=True)


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


def test_object_array_in_npz_is_refused_not_unpickled(saved: Path) -> None:
    marker = marker_path()
    arrays: dict[str, Any] = dict(_raw_npz(saved))
    obj = np.empty(V, dtype=object)
    obj[0] = Pwn(marker)
    arrays["affine.b"] = obj
    _write_npz(saved, arrays, allow_pickle=True)
    msg = _load_error(saved)
    assert str(saved / "params.npz") in msg
    assert not marker.exists()


