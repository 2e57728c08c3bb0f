"""The optimiser's steps: global-norm clipping, weight decay, SGD, and NT-ASGD's weight average.

NT-ASGD (Merity et al. 2017, "Regularizing and Optimizing LSTM Language Models", section 3):
plain SGD until validation has not improved for ``n`` evaluations, then the iterates are
averaged from that step on (Polyak & Juditsky 1992); validation and the written weights use
the average.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np


def clip_grads(grads: list[np.ndarray], max_norm: float) -> float:
    """Scale gradients in place so their global L2 norm is at most max_norm; -> the norm."""
    total = math.sqrt(sum(float(np.vdot(g.ravel(), g.ravel())) for g in grads))
    rate = max_norm / (total + 1e-6)
    if rate < 1.0:
        for g in grads:
            g *= g.dtype.type(rate)
    return total


def add_weight_decay(params: list[np.ndarray], grads: list[np.ndarray], decay: float) -> None:
    """g += decay * p in place (L2 regularisation, after clipping as torch's SGD applies it)."""
    if decay:
        for p, g in zip(params, grads, strict=True):
            g += p.dtype.type(decay) * p


def sgd_update(params: list[np.ndarray], grads: list[np.ndarray], lr: float) -> None:
    """p -= lr * g in place (the gradients are consumed)."""
    for p, g in zip(params, grads, strict=True):
        g *= p.dtype.type(lr)
        p -= g


def should_start_averaging(history: Sequence[float], current: float, nonmono: int) -> bool:
    """NT-ASGD's non-monotone trigger: the current validation loss is worse than the best of
    the evaluations before the last ``nonmono`` ones (history excludes the current one)."""
    return nonmono > 0 and len(history) > nonmono and current > min(history[:-nonmono])


class Averager:
    """The running mean of the parameters since averaging began: one update per SGD step."""

    def __init__(self, params: Mapping[str, np.ndarray], steps: int = 1) -> None:
        # a copy in the parameters' own float type (float32 in training, float64 in checks)
        self.mean: dict[str, np.ndarray] = {k: np.array(v, copy=True) for k, v in params.items()}
        self.steps = steps  # iterates in the mean

    def update(self, params: Mapping[str, np.ndarray]) -> None:
        """Fold one more iterate into the mean: m += (p - m) / k."""
        self.steps += 1
        rate = 1.0 / self.steps
        for k, m in self.mean.items():
            delta = np.subtract(params[k], m)
            delta *= rate
            m += delta
