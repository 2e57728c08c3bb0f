"""Numerically stable elementwise functions shared by training and inference."""

from __future__ import annotations

import numpy as np


def sigmoid(x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """Logistic function 1 / (1 + exp(-x)), in place when ``out`` is ``x``."""
    # exp/add/reciprocal is faster than the tanh form in float32 (bench/README.md);
    # exp(-x) overflowing to inf for very negative x gives the correct limit 0.
    with np.errstate(over="ignore"):
        y = np.negative(x, out=out)
        np.exp(y, out=y)
    y += 1.0
    np.reciprocal(y, out=y)
    return y


def logsumexp(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """log(sum(exp(x))) along ``axis`` without overflow; keeps the reduced axis."""
    m = np.max(x, axis=axis, keepdims=True)
    m = np.where(np.isfinite(m), m, 0.0).astype(x.dtype, copy=False)
    s = np.sum(np.exp(x - m), axis=axis, keepdims=True)
    return np.log(s) + m


def log_softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """log(softmax(x)) along ``axis``; finite for any finite input."""
    return x - logsumexp(x, axis=axis)


def softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """Softmax along ``axis``, shifted by the maximum so exp never overflows."""
    m = np.max(x, axis=axis, keepdims=True)
    m = np.where(np.isfinite(m), m, 0.0).astype(x.dtype, copy=False)
    e = np.exp(x - m)
    e /= np.sum(e, axis=axis, keepdims=True)
    return e
