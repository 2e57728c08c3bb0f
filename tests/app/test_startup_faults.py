"""Bad weights stop ``rnnlm-serve --weights X`` with one log line naming the file; no unpickling.

Every case runs the real command in a subprocess (all of them at once, to keep the module fast)
and must exit non-zero with exactly one log line, naming the file at fault and what is wrong,
and no traceback. The pickle cases carry a payload that creates a marker file when unpickled:
the marker must not exist afterwards (and the payload is checked to work, in this process).
"""

from __future__ import annotations

import io
import json
import os
import pickle
import subprocess
import uuid
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from model.weights import CONFIG_FILE, PARAMS_FILE
from tests.app.conftest import serve_command


class _Touch:
    """Unpickling this creates ``marker`` (what a malicious pickle would do, harmlessly)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (str(self.marker), "w"))


def _pickle(marker: Path) -> bytes:
    """A pickle whose loading touches marker."""
    return pickle.dumps([np.zeros(3, np.float32), _Touch(marker)], protocol=4)


def _copy(src: Path, dst: Path) -> Path:
    """A copy of a weights directory."""
    dst.mkdir(parents=True)
    for f in src.iterdir():
        (dst / f.name).write_bytes(f.read_bytes())
    return dst


def _write_params(weights: Path, data: bytes) -> None:
    """Replace params.npz and record its sha256 in config.json, so the checksum passes."""
    import hashlib

    (weights / PARAMS_FILE).write_bytes(data)
    config = json.loads((weights / CONFIG_FILE).read_text(encoding="utf-8"))
    config["sha256"][PARAMS_FILE] = hashlib.sha256(data).hexdigest()
    (weights / CONFIG_FILE).write_text(json.dumps(config), encoding="utf-8")


def _npz(arrays: dict[str, np.ndarray]) -> bytes:
    """The bytes of an .npz holding arrays (object arrays pickled, as np.savez does)."""
    buf = io.BytesIO()
    np.savez(buf, **arrays)  # type: ignore[arg-type]
    return buf.getvalue()


def _arrays(weights: Path) -> dict[str, np.ndarray]:
    """The arrays of a weights directory's params.npz."""
    with np.load(weights / PARAMS_FILE, allow_pickle=False) as npz:
        return {k: npz[k] for k in npz.files}


@dataclass
class Case:
    """A broken weights path: what rnnlm-serve gets, the file its message must name, its words."""

    weights: Path
    names: Path
    says: str
    marker: Path | None = None


def _missing(tiny: Path, tmp: Path) -> Case:
    path = tmp / "no-such-weights"
    return Case(path, path, "no such weights directory")


def _truncated(tiny: Path, tmp: Path) -> Case:
    w = _copy(tiny, tmp / "w")
    data = (w / PARAMS_FILE).read_bytes()
    (w / PARAMS_FILE).write_bytes(data[: len(data) // 2])
    return Case(w, w / PARAMS_FILE, "sha256 mismatch")


def _truncated_consistent(tiny: Path, tmp: Path) -> Case:
    """Truncated, with a checksum that matches the truncated file (the zip is unreadable)."""
    w = _copy(tiny, tmp / "w")
    _write_params(w, (w / PARAMS_FILE).read_bytes()[:-300])
    return Case(w, w / PARAMS_FILE, "cannot read arrays")


def _checksum(tiny: Path, tmp: Path) -> Case:
    w = _copy(tiny, tmp / "w")
    data = bytearray((w / PARAMS_FILE).read_bytes())
    data[len(data) // 2] ^= 0xFF
    (w / PARAMS_FILE).write_bytes(bytes(data))
    return Case(w, w / PARAMS_FILE, "sha256 mismatch")


def _wrong_shape(tiny: Path, tmp: Path) -> Case:
    w = _copy(tiny, tmp / "w")
    arrays = _arrays(w)
    arrays["lstm.0.Wh"] = np.zeros((3, 5), np.float32)
    _write_params(w, _npz(arrays))
    return Case(w, w / PARAMS_FILE, "lstm.0.Wh has shape (3, 5)")


def _pickle_as_npz(tiny: Path, tmp: Path) -> Case:
    """params.npz is a pickle (with a matching checksum)."""
    w = _copy(tiny, tmp / "w")
    marker = tmp / f"pwned-{uuid.uuid4().hex}"
    _write_params(w, _pickle(marker))
    return Case(w, w / PARAMS_FILE, "pickled", marker)


def _object_array_in_npz(tiny: Path, tmp: Path) -> Case:
    """A real .npz whose member is an object array: a pickle inside the zip."""
    w = _copy(tiny, tmp / "w")
    marker = tmp / f"pwned-{uuid.uuid4().hex}"
    arrays: dict[str, np.ndarray] = dict(_arrays(w))
    obj = np.empty(arrays["affine.b"].shape, dtype=object)
    obj[0] = _Touch(marker)
    arrays["affine.b"] = obj
    data = _npz(arrays)
    with zipfile.ZipFile(io.BytesIO(data)) as z:  # the payload really is in the file
        assert b"pwned-" in z.read("affine.b.npy")
    _write_params(w, data)
    return Case(w, w / PARAMS_FILE, "allow_pickle=False", marker)


def _book_pickle(tiny: Path, tmp: Path) -> Case:
    """A .pkl (the book's format) given as the weights: refused with a hint, never opened."""
    marker = tmp / f"pwned-{uuid.uuid4().hex}"
    pkl = tmp / "BetterRnnlm.pkl"
    pkl.write_bytes(_pickle(marker))
    return Case(pkl, pkl, "import-book", marker)


def _edit_normalizer(tiny: Path, tmp: Path, value: object) -> Case:
    """A format-2 config.json whose "normalizer" is changed (or removed when value is None)."""
    w = _copy(tiny, tmp / "w")
    config = json.loads((w / CONFIG_FILE).read_text(encoding="utf-8"))
    assert config["format_version"] == 2
    if value is None:
        del config["normalizer"]
    else:
        config["normalizer"] = value
    (w / CONFIG_FILE).write_text(json.dumps(config), encoding="utf-8")
    return Case(w, w / CONFIG_FILE, "normalizer", None)


def _unknown_normalizer(tiny: Path, tmp: Path) -> Case:
    """Format 2 naming a normaliser this version does not have."""
    return _edit_normalizer(tiny, tmp, {"name": "icu", "lowercase": False})


def _normalizer_field_missing(tiny: Path, tmp: Path) -> Case:
    """Format 2 with a normaliser that lacks a field."""
    return _edit_normalizer(tiny, tmp, {"name": "plain"})


def _normalizer_missing(tiny: Path, tmp: Path) -> Case:
    """Format 2 without its normaliser."""
    return _edit_normalizer(tiny, tmp, None)


CASES: dict[str, Callable[[Path, Path], Case]] = {
    "unknown-normalizer": _unknown_normalizer,
    "normalizer-field-missing": _normalizer_field_missing,
    "normalizer-missing": _normalizer_missing,
    "missing": _missing,
    "truncated": _truncated,
    "truncated-consistent-checksum": _truncated_consistent,
    "checksum-mismatch": _checksum,
    "wrong-shape": _wrong_shape,
    "pickle-as-npz": _pickle_as_npz,
    "object-array-in-npz": _object_array_in_npz,
    "book-pickle": _book_pickle,
}


@dataclass
class Outcome:
    """What one rnnlm-serve run did."""

    case: Case
    returncode: int
    stdout: str
    stderr: str


@pytest.fixture(scope="module")
def outcomes(tiny_weights: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Outcome]:
    """Start rnnlm-serve on every broken weights path at once; collect how each ended."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RNNLM_")}
    env.update(OPENBLAS_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    started = {}
    for name, make in CASES.items():
        case = make(tiny_weights, tmp_path_factory.mktemp(name))
        cmd = [*serve_command(), "--weights", str(case.weights), "--host", "127.0.0.1",
               "--port", "0"]  # fmt: skip
        proc = subprocess.Popen(
            cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        started[name] = (case, proc)
    out = {}
    for name, (case, proc) in started.items():
        try:
            stdout, stderr = proc.communicate(timeout=180)
        except subprocess.TimeoutExpired:
            proc.kill()
            stdout, stderr = proc.communicate()
        out[name] = Outcome(case, proc.returncode, stdout, stderr)
    return out


@pytest.mark.parametrize("name", list(CASES))
def test_bad_weights_stop_start_up_with_one_line(outcomes: dict[str, Outcome], name: str) -> None:
    o = outcomes[name]
    assert o.returncode not in (0, None), o.stderr
    assert "Traceback" not in o.stderr + o.stdout
    lines = [ln for ln in (o.stderr + o.stdout).splitlines() if ln.strip()]
    assert len(lines) == 1, lines
    (line,) = lines
    assert "ERROR" in line and "cannot load weights" in line, line
    assert str(o.case.names) in line, line
    assert o.case.says in line, line


@pytest.mark.parametrize("name", [n for n in CASES if "pickle" in n])
def test_nothing_is_unpickled(outcomes: dict[str, Outcome], name: str) -> None:
    marker = outcomes[name].case.marker
    assert marker is not None and not marker.exists()


def test_the_pickle_payload_would_leave_a_marker(tmp_path: Path) -> None:
    """The marker check can fail: unpickling the same payload here does create it."""
    marker = tmp_path / "control"
    pickle.loads(_pickle(marker))  # our own payload, to prove the probe works
    assert marker.exists()
    obj = np.empty(2, dtype=object)
    obj[0] = _Touch(tmp_path / "control-npz")
    with np.load(io.BytesIO(_npz({"a": obj})), allow_pickle=True) as npz:
        npz["a"]
    assert (tmp_path / "control-npz").exists()
