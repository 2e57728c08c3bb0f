"""A training run's resumable state on disk: parameters (best, averaged), LSTM state, counters, RNG.

Written with ``model.atomic.replace_dir``, so a run stopped at any moment resumes from the
last complete state; plain ``.npz`` and JSON, read without unpickling.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from model.atomic import replace_dir
from model.rnnlm import LSTMState

RUN_STATE_VERSION = 1
META_FILE = "trainer.json"


@dataclass(eq=False)
class RunState:
    """What a stopped run needs to continue bit for bit."""

    params: dict[str, np.ndarray]
    best_params: dict[str, np.ndarray] | None
    lstm_state: LSTMState | None
    train_config: dict[str, Any]
    model_config: dict[str, Any]
    counters: dict[str, Any]  # TrainState as a dict
    rng: dict[str, Any]  # the generator's bit_generator.state
    avg_params: dict[str, np.ndarray] | None = None  # NT-ASGD's running average


def _same(a: dict[str, np.ndarray] | None, b: dict[str, np.ndarray] | None) -> bool:
    """True when a and b hold the same arrays, key for key, dtype and value."""
    if a is None or b is None or a.keys() != b.keys():
        return False
    return all(a[k].dtype == b[k].dtype and np.array_equal(a[k], b[k]) for k in a)


def exists(directory: Path) -> bool:
    """True when directory holds a run state."""
    return (Path(directory) / META_FILE).is_file()


def save_run_state(directory: Path, rs: RunState) -> None:
    """Replace directory with rs, atomically."""

    # the best parameters are, at the end of an epoch that improved, the parameters or
    # their average: stored once, a run state is a third smaller (and so is its commit)
    best_from = None
    if rs.best_params is not None:
        best_from = ("params" if _same(rs.best_params, rs.params)
                     else "avg" if _same(rs.best_params, rs.avg_params) else "file")

    def write(d: Path) -> None:
        np.savez(d / "params.npz", **rs.params)  # type: ignore[arg-type]
        if best_from == "file":
            np.savez(d / "best.npz", **rs.best_params)  # type: ignore[arg-type]
        if rs.avg_params is not None:
            np.savez(d / "avg.npz", **rs.avg_params)  # type: ignore[arg-type]
        if rs.lstm_state is not None:
            np.savez(d / "lstm_state.npz", h=rs.lstm_state.h, c=rs.lstm_state.c)
        meta = {
            "checkpoint_version": RUN_STATE_VERSION,
            "train_config": rs.train_config,
            "model_config": rs.model_config,
            "state": rs.counters,
            "rng": rs.rng,
            "best_from": best_from,
            "saved_at": time.time(),
        }
        (d / META_FILE).write_text(json.dumps(meta, indent=1))

    replace_dir(Path(directory), write)


def load_run_state(directory: Path) -> RunState:
    """Read a run state written by save_run_state (FileNotFoundError, ValueError on a bad one)."""
    directory = Path(directory)
    meta_path = directory / META_FILE
    if not meta_path.is_file():
        raise FileNotFoundError(f"{meta_path}: no run state to resume from")
    meta = json.loads(meta_path.read_text())
    if meta.get("checkpoint_version") != RUN_STATE_VERSION:
        raise ValueError(f"{meta_path}: unknown checkpoint_version")

    def load(name: str) -> dict[str, np.ndarray] | None:
        if not (directory / name).exists():
            return None
        with np.load(directory / name, allow_pickle=False) as z:
            return {k: z[k].copy() for k in z.files}

    params = load("params.npz")
    if params is None:
        raise ValueError(f"{directory / 'params.npz'}: missing from the run state")
    hc = load("lstm_state.npz")
    avg = load("avg.npz")
    best_from = meta.get("best_from", "file")  # states written before best_from: a file
    best: dict[str, np.ndarray] | None
    if best_from == "params":
        best = {k: v.copy() for k, v in params.items()}
    elif best_from == "avg":
        if avg is None:
            raise ValueError(f"{directory / 'avg.npz'}: missing from the run state")
        best = {k: v.copy() for k, v in avg.items()}
    else:
        best = load("best.npz")
    return RunState(
        params=params,
        best_params=best,
        lstm_state=LSTMState(hc["h"], hc["c"]) if hc is not None else None,
        train_config=dict(meta["train_config"]),
        model_config=dict(meta["model_config"]),
        counters=dict(meta["state"]),
        rng=meta["rng"],
        avg_params=avg,
    )
