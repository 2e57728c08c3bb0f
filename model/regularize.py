"""Training-only regularisation of AWD-LSTM (Merity et al. 2017), each with forward and backward.

None of these changes the served architecture or the weights format: at inference they are
all the identity. Masks are drawn from the np.random.Generator passed in, so a run with the
same seed (and a resumed one) draws the same masks.

- ``LockedDropout``: variational dropout, one mask per sequence and unit reused at every time
  step (Gal & Ghahramani 2016, "A Theoretically Grounded Application of Dropout in RNNs").
- ``EmbeddingDropout``: whole words dropped from the input lookup, one mask over the
  vocabulary per batch (Gal & Ghahramani 2016; Merity et al. 2017, section 4.3).
- ``WeightDrop``: DropConnect on the recurrent matrix Wh, one mask per batch (Wan et al. 2013,
  "Regularization of Neural Networks using DropConnect"; Merity et al. 2017, section 2).
- ``activation_penalty``: activation regularisation (AR) and temporal activation
  regularisation (TAR) of the top layer (Merity et al. 2017b, "Revisiting Activation
  Regularization for Language RNNs").
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Regularization:
    """AWD-LSTM's training-time regularisation of a BetterRnnlm; 0 turns each part off.

    With it, the book's per-element dropout gives way to locked dropout at the same three
    places (embedding output, between layers, before the softmax).
    """

    dropout_embedding: float = 0.0  # words dropped from the input lookup (AWD's dropoute)
    dropout_input: float = 0.0  # locked dropout on the embedding output (dropouti)
    dropout_hidden: float = 0.0  # locked dropout between LSTM layers (dropouth)
    dropout_output: float = 0.0  # locked dropout before the softmax (dropout)
    weight_drop: float = 0.0  # DropConnect on each layer's Wh (wdrop)
    ar_alpha: float = 0.0  # activation regularisation of the top layer
    tar_beta: float = 0.0  # temporal activation regularisation of the top layer

    def __post_init__(self) -> None:
        for name in ("dropout_embedding", "dropout_input", "dropout_hidden", "dropout_output",
                     "weight_drop"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)}")
        if self.ar_alpha < 0 or self.tar_beta < 0:
            raise ValueError("ar_alpha and tar_beta must be >= 0")


def _keep_mask(
    shape: tuple[int, ...], p: float, rng: np.random.Generator, dtype: np.dtype
) -> np.ndarray:
    """Inverted-dropout mask: 0 with probability p, else 1 / (1 - p)."""
    keep = rng.random(shape, dtype=np.float32) >= p
    return keep.astype(dtype) * dtype.type(1.0 / (1.0 - p))


class LockedDropout:
    """Dropout on (T, N, H) with one (1, N, H) mask for all T steps (inverted scaling)."""

    def __init__(self, p: float) -> None:
        if not 0.0 <= p < 1.0:
            raise ValueError(f"locked dropout must be in [0, 1), got {p}")
        self.p = p
        self.mask: np.ndarray | None = None

    def forward(
        self, x: np.ndarray, train: bool, rng: np.random.Generator | None = None
    ) -> np.ndarray:
        """x * mask in training (the mask broadcast over time), x itself otherwise."""
        if not train or self.p == 0.0:
            self.mask = None
            return x
        if rng is None:
            raise ValueError("dropout in training needs a np.random.Generator")
        self.mask = _keep_mask((1, *x.shape[1:]), self.p, rng, x.dtype)  # (1, N, H)
        return x * self.mask

    def backward(self, dout: np.ndarray) -> np.ndarray:
        """dout * mask, or dout unchanged when the last forward did not drop."""
        return dout if self.mask is None else dout * self.mask


class EmbeddingDropout:
    """A (V,) mask of whole words: a dropped word's vector is zero wherever it occurs."""

    def __init__(self, p: float) -> None:
        if not 0.0 <= p < 1.0:
            raise ValueError(f"embedding dropout must be in [0, 1), got {p}")
        self.p = p

    def mask(
        self, vocab_size: int, train: bool, rng: np.random.Generator | None, dtype: np.dtype
    ) -> np.ndarray | None:
        """The row scales for one batch, or None (no dropping)."""
        if not train or self.p == 0.0:
            return None
        if rng is None:
            raise ValueError("dropout in training needs a np.random.Generator")
        return _keep_mask((vocab_size,), self.p, rng, dtype)


class WeightDrop:
    """DropConnect on Wh (H, 4H): the recurrence uses Wh * mask for a whole batch."""

    def __init__(self, p: float) -> None:
        if not 0.0 <= p < 1.0:
            raise ValueError(f"weight drop must be in [0, 1), got {p}")
        self.p = p

    def mask(
        self, shape: tuple[int, ...], train: bool, rng: np.random.Generator | None,
        dtype: np.dtype,
    ) -> np.ndarray | None:
        """The mask for one batch, or None (the plain Wh)."""
        if not train or self.p == 0.0:
            return None
        if rng is None:
            raise ValueError("weight drop in training needs a np.random.Generator")
        return _keep_mask(shape, self.p, rng, dtype)


@dataclass(frozen=True)
class Penalty:
    """AR and TAR of one batch: the added loss and the gradients it sends back."""

    loss: float
    d_dropped: np.ndarray | None  # d/d(top layer output after dropout), (T, N, H)
    d_raw: np.ndarray | None  # d/d(top layer output before dropout), (T, N, H)


def activation_penalty(
    dropped: np.ndarray, raw: np.ndarray, alpha: float, beta: float
) -> Penalty:
    """alpha * mean(dropped**2) + beta * mean((raw[t] - raw[t-1])**2), and their gradients.

    AR penalises large outputs of the top layer (after dropout, as Merity et al. do), TAR
    large changes between consecutive steps (before dropout).
    """
    loss = 0.0
    d_dropped = d_raw = None
    if alpha:
        loss += alpha * float(np.mean(dropped.astype(np.float64) ** 2))
        d_dropped = dropped * dropped.dtype.type(2.0 * alpha / dropped.size)
    if beta and raw.shape[0] > 1:
        diff = raw[1:] - raw[:-1]  # (T-1, N, H)
        loss += beta * float(np.mean(diff.astype(np.float64) ** 2))
        g = diff * diff.dtype.type(2.0 * beta / diff.size)
        d_raw = np.zeros_like(raw)
        d_raw[1:] += g
        d_raw[:-1] -= g
    return Penalty(loss, d_dropped, d_raw)
