"""The weights directory (docs/design.md, formats 1 and 2): save, load and verify, update metrics.

A weights directory holds ``config.json``, ``params.npz`` and ``vocab.txt``. Loading never
unpickles: arrays are read with ``allow_pickle=False`` and every checksum and shape is checked
against config.json. (The book's pickles are read in ``model.book``, nowhere else.) Format
2 adds the normaliser the model's text goes through; a format-1 directory (no "normalizer")
loads as ``ptb``, which every format-1 model was trained with.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import math
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from model.atomic import replace_dir, replace_file
from model.normalize import PTB, Normalizer
from model.rnnlm import ModelConfig
from model.vocab import Vocab

logger = logging.getLogger(__name__)

FORMAT = "rnnlm"
FORMAT_VERSION = 2  # what save_weights writes
READABLE_VERSIONS = (1, 2)
CONFIG_FILE = "config.json"
PARAMS_FILE = "params.npz"
VOCAB_FILE = "vocab.txt"
DTYPES = ("float16", "float32")

__all__ = [
    "CONFIG_FILE",
    "FORMAT",
    "FORMAT_VERSION",
    "PARAMS_FILE",
    "VOCAB_FILE",
    "LoadedWeights",
    "WeightsError",
    "load_weights",
    "save_weights",
    "update_metrics",
]


class WeightsError(Exception):
    """A weights directory or book pickle that cannot be used; the message names the file."""


# eq=False: the fields hold numpy arrays, whose == is elementwise, so identity is the only
# meaningful equality (and the generated __hash__ would fail on the dicts anyway).
@dataclass(frozen=True, eq=False)
class LoadedWeights:
    """A verified weights directory: config, read-only float32 params, vocab and metadata."""

    path: Path
    config: ModelConfig
    params: dict[str, np.ndarray]
    vocab: Vocab
    meta: dict[str, Any]
    sha256: str
    normalizer: Normalizer = PTB


def _sha256_bytes(data: bytes) -> str:
    """Hex sha256 of bytes."""
    return hashlib.sha256(data).hexdigest()


def _sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in chunks."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _jsonable(obj: Any) -> Any:
    """Plain JSON values from numpy scalars, paths and tuples; non-finite floats become None."""
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        return _jsonable(obj.item())
    if isinstance(obj, Path):
        return str(obj)
    # strict JSON has no NaN/Infinity; a diverged run's metric is recorded as null instead
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def _dump_json(obj: Any) -> str:
    """The config.json text: indented, strict JSON, trailing newline."""
    return json.dumps(_jsonable(obj), indent=2, allow_nan=False, ensure_ascii=False) + "\n"


def _check_params(config: ModelConfig, params: Mapping[str, np.ndarray], where: Path) -> None:
    """Names and shapes of params must be exactly config.param_shapes()."""
    shapes = config.param_shapes()
    missing = sorted(set(shapes) - set(params))
    extra = sorted(set(params) - set(shapes))
    if missing or extra:
        raise ValueError(
            f"{where}: parameters do not match the config: missing {missing}, extra {extra}"
        )
    for name, shape in shapes.items():
        got = tuple(np.shape(params[name]))
        if got != shape:
            raise ValueError(f"{where}: parameter {name} has shape {got}, expected {shape}")


def save_weights(
    out_dir: str | Path,
    config: ModelConfig,
    params: Mapping[str, np.ndarray],
    vocab: Vocab,
    *,
    dtype: Literal["float16", "float32"] = "float16",
    training: Mapping[str, Any] | None = None,
    metrics: Mapping[str, Any] | None = None,
    normalizer: Normalizer = PTB,
) -> Path:
    """Write a weights directory atomically (model.atomic.replace_dir); return its path."""
    out_dir = Path(out_dir)
    if dtype not in DTYPES:
        raise ValueError(f"{out_dir}: dtype must be one of {DTYPES}, got {dtype!r}")
    _check_params(config, params, out_dir)
    if len(vocab) != config.vocab_size:
        raise ValueError(
            f"{out_dir}: vocabulary has {len(vocab)} words, config vocab_size is "
            f"{config.vocab_size}"
        )
    arrays: dict[str, np.ndarray] = {}
    for name in config.param_shapes():
        # a value past float16's range becomes inf on the cast; the check below reports it
        with np.errstate(over="ignore"):
            a = np.ascontiguousarray(np.asarray(params[name]).astype(dtype))
        if not np.isfinite(a).all():
            raise ValueError(f"{out_dir}: parameter {name} has non-finite values as {dtype}")
        arrays[name] = a
    if out_dir.exists():
        if not out_dir.is_dir():
            raise ValueError(f"{out_dir}: exists and is not a directory")
        # replacing deletes the old directory, so refuse one that is not a weights directory
        # (a mistyped path such as the project root must never be wiped)
        if any(out_dir.iterdir()) and not (out_dir / CONFIG_FILE).is_file():
            raise ValueError(
                f"{out_dir}: exists, is not empty and holds no {CONFIG_FILE}; refusing to "
                "replace it"
            )

    def write(tmp: Path) -> None:
        with (tmp / PARAMS_FILE).open("wb") as f:
            np.savez(f, allow_pickle=False, **arrays)
        vocab.save(tmp / VOCAB_FILE)
        meta = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "model": config.to_dict(),
            "normalizer": normalizer.to_dict(),
            "dtype": dtype,
            "sha256": {
                PARAMS_FILE: _sha256_file(tmp / PARAMS_FILE),
                VOCAB_FILE: _sha256_file(tmp / VOCAB_FILE),
            },
            "training": dict(training or {}),
            "metrics": dict(metrics or {}),
        }
        (tmp / CONFIG_FILE).write_text(_dump_json(meta), encoding="utf-8")

    replace_dir(out_dir, write)
    logger.info(
        "saved weights to %s (%s, %d parameters)",
        out_dir,
        dtype,
        sum(a.size for a in arrays.values()),
    )
    return out_dir


def _read_config(weights_dir: Path) -> dict[str, Any]:
    """Parse and check config.json's format fields; raise WeightsError naming the file."""
    path = weights_dir / CONFIG_FILE
    if not path.is_file():
        raise WeightsError(f"{path}: missing ({CONFIG_FILE} is required in a weights directory)")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise WeightsError(f"{path}: cannot read JSON: {e}") from e
    if not isinstance(meta, dict):
        raise WeightsError(f"{path}: expected a JSON object, got {type(meta).__name__}")
    if meta.get("format") != FORMAT:
        raise WeightsError(f"{path}: format is {meta.get('format')!r}, expected {FORMAT!r}")
    version = meta.get("format_version")
    if type(version) is not int or version not in READABLE_VERSIONS:
        raise WeightsError(
            f"{path}: unknown format_version {version!r}; this version reads "
            f"{' and '.join(map(str, READABLE_VERSIONS))}"
        )
    return meta


def _model_config(meta: dict[str, Any], config_path: Path) -> ModelConfig:
    """config.json's "model" as a ModelConfig; raise WeightsError naming the file."""
    model = meta.get("model")
    if not isinstance(model, dict):
        raise WeightsError(f'{config_path}: "model" must be an object, got {model!r}')
    try:
        return ModelConfig.from_dict(model)
    except (TypeError, ValueError) as e:
        raise WeightsError(f'{config_path}: invalid "model": {e}') from e


def read_model_config(weights_dir: str | Path) -> ModelConfig:
    """A weights directory's architecture from its config.json alone (no parameters read)."""
    path = Path(weights_dir)
    return _model_config(_read_config(path), path / CONFIG_FILE)


def _read_normalizer(meta: dict[str, Any], config_path: Path) -> Normalizer:
    """Format 2's "normalizer" (required there); ptb for format 1."""
    if meta.get("format_version") == 1:
        if "normalizer" in meta:
            raise WeightsError(f'{config_path}: "normalizer" needs format_version 2')
        return PTB
    if "normalizer" not in meta:
        raise WeightsError(f'{config_path}: format_version 2 needs "normalizer" '
                           '({"name": "ptb" | "plain", "lowercase": false | true})')
    try:
        return Normalizer.from_dict(meta["normalizer"])
    except ValueError as e:
        raise WeightsError(f"{config_path}: {e}") from e


def update_metrics(weights_dir: str | Path, metrics: Mapping[str, Any]) -> dict[str, Any]:
    """Merge metrics into config.json's "metrics" (atomically); return the new config.json."""
    weights_dir = Path(weights_dir)
    meta = _read_config(weights_dir)
    current = meta.get("metrics")
    merged = dict(current) if isinstance(current, dict) else {}
    merged.update(metrics)
    meta["metrics"] = _jsonable(merged)
    path = weights_dir / CONFIG_FILE
    replace_file(path, _dump_json(meta).encode("utf-8"))
    logger.info("updated metrics in %s", path)
    return meta


def _read_checked(path: Path, expected: Any) -> bytes:
    """The bytes of a weights file whose sha256 must equal config.json's entry."""
    if not path.is_file():
        raise WeightsError(f"{path}: missing ({path.name} is required in a weights directory)")
    try:
        data = path.read_bytes()
    except OSError as e:
        raise WeightsError(f"{path}: cannot read: {e}") from e
    actual = _sha256_bytes(data)
    if actual != expected:
        raise WeightsError(
            f"{path}: sha256 mismatch: config.json records {expected}, file has {actual} "
            "(the file is corrupt or was changed after saving)"
        )
    return data


def load_weights(path: str | Path) -> LoadedWeights:
    """Load and verify a weights directory; raise WeightsError naming the file on any problem."""
    path = Path(path).resolve()
    if not path.exists():
        raise WeightsError(f"{path}: no such weights directory")
    if not path.is_dir():
        if path.suffix == ".pkl":
            raise WeightsError(
                f"{path}: is a pickle file from the book; import it with `rnnlm import-book ...` "
                "to make a weights directory"
            )
        raise WeightsError(
            f"{path}: is not a directory (a weights directory holds "
            f"{CONFIG_FILE}, {PARAMS_FILE} and {VOCAB_FILE})"
        )

    config_path = path / CONFIG_FILE
    meta = _read_config(path)
    config = _model_config(meta, config_path)
    normalizer = _read_normalizer(meta, config_path)
    dtype = meta.get("dtype")
    if dtype not in DTYPES:
        raise WeightsError(f"{config_path}: dtype {dtype!r} is not one of {DTYPES}")
    sums = meta.get("sha256")
    if not isinstance(sums, dict) or not all(
        isinstance(sums.get(n), str) for n in (PARAMS_FILE, VOCAB_FILE)
    ):
        raise WeightsError(
            f'{config_path}: "sha256" must map {PARAMS_FILE} and {VOCAB_FILE} to hex digests'
        )

    params_path = path / PARAMS_FILE
    vocab_path = path / VOCAB_FILE
    params_bytes = _read_checked(params_path, sums[PARAMS_FILE])
    _read_checked(vocab_path, sums[VOCAB_FILE])
    params = _load_params(params_path, params_bytes, config, dtype)

    try:
        vocab = Vocab.load(vocab_path)
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise WeightsError(f"{vocab_path}: invalid vocabulary: {e}") from e
    if len(vocab) != config.vocab_size:
        raise WeightsError(
            f"{vocab_path}: has {len(vocab)} words, {CONFIG_FILE} says vocab_size "
            f"{config.vocab_size}"
        )

    sha = sums[PARAMS_FILE]
    logger.info(
        "loaded weights %s: %d layers, V=%d D=%d H=%d, tied=%s, %s on disk, sha256 %s",
        path,
        config.num_layers,
        config.vocab_size,
        config.wordvec_size,
        config.hidden_size,
        config.tied,
        dtype,
        sha[:12],
    )
    return LoadedWeights(
        path=path, config=config, params=params, vocab=vocab, meta=meta, sha256=sha,
        normalizer=normalizer,
    )


def _load_params(
    params_path: Path, data: bytes, config: ModelConfig, dtype: str
) -> dict[str, np.ndarray]:
    """Arrays of params.npz, checked against config, as read-only C-contiguous float32."""
    shapes = config.param_shapes()
    raw: dict[str, np.ndarray] = {}
    try:
        # the bytes already hashed are parsed, so the file cannot change between check and use
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            names = list(npz.files)
            missing = sorted(set(shapes) - set(names))
            extra = sorted(set(names) - set(shapes))
            if missing or extra:
                raise WeightsError(
                    f"{params_path}: arrays do not match config.json: missing {missing}, "
                    f"extra {extra}"
                )
            for name in shapes:
                raw[name] = npz[name]
    except WeightsError:
        raise
    except (ValueError, OSError, EOFError, KeyError, zipfile.BadZipFile) as e:
        # an object array lands here too: allow_pickle=False refuses it with a ValueError
        raise WeightsError(f"{params_path}: cannot read arrays: {e}") from e

    params: dict[str, np.ndarray] = {}
    for name, shape in shapes.items():
        a = raw[name]
        if a.shape != shape:
            raise WeightsError(
                f"{params_path}: array {name} has shape {a.shape}, expected {shape} "
                f"from {CONFIG_FILE}"
            )
        if a.dtype != np.dtype(dtype):
            raise WeightsError(
                f"{params_path}: array {name} has dtype {a.dtype}, {CONFIG_FILE} says {dtype}"
            )
        a = np.ascontiguousarray(a, dtype=np.float32)
        if not np.isfinite(a).all():
            bad = int(a.size - np.count_nonzero(np.isfinite(a)))
            raise WeightsError(f"{params_path}: array {name} has {bad} non-finite values")
        a.flags.writeable = False
        params[name] = a
    return params
