"""Helpers shared by the model tests: a small trained-like model (tied and untied) and
objects whose unpickling would run code."""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from model.inference import InferenceModel
from model.rnnlm import BetterRnnlm, ModelConfig

TINY_V = 40  # the vocabulary of trained_like


@pytest.fixture(scope="module", params=[True, False], ids=["tied", "untied"])
def trained_like(request: pytest.FixtureRequest) -> tuple[ModelConfig, dict[str, np.ndarray]]:
    """A 2-layer model of TINY_V words, its weights pushed away from their initial scale."""
    tied = request.param
    cfg = ModelConfig(TINY_V, 16, 16 if tied else 12, 2, tied, 0.5)
    m = BetterRnnlm(cfg, rng=np.random.default_rng(0))
    r = np.random.default_rng(1)
    for p in m.params.values():
        p += (r.standard_normal(p.shape) * 0.4).astype(np.float32)
    return cfg, m.params


@pytest.fixture(scope="module")
def model(trained_like: tuple[ModelConfig, dict[str, np.ndarray]]) -> InferenceModel:
    """trained_like arranged for inference."""
    return InferenceModel.from_params(*trained_like)


class Pwn:
    """Unpickling this runs a shell command that creates a marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (f"touch {self.marker}",))


class Eval:
    """Unpickling this evaluates Python code that creates a marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (eval, (f"open({str(self.marker)!r}, 'w').close()",))


def marker_path() -> Path:
    return Path(f"/tmp/pwned_{uuid.uuid4().hex}")
