"""Tests for model.regularize: float64 gradient checks of each AWD-LSTM part, and their masks."""

from __future__ import annotations

import numpy as np
import pytest

from model.layers import LSTM, Embedding
from model.regularize import (
    EmbeddingDropout,
    LockedDropout,
    Regularization,
    WeightDrop,
    activation_penalty,
)
from model.rnnlm import BetterRnnlm, LSTMState, ModelConfig
from tests.model.test_layers import assert_close_grad, numerical_grad


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


def test_locked_dropout_reuses_one_mask_over_time(rng: np.random.Generator) -> None:
    layer = LockedDropout(0.5)
    x = np.ones((7, 3, 40))
    y = layer.forward(x, True, rng)
    assert set(np.unique(y)) <= {0.0, 2.0}
    assert (y == y[0]).all()  # the same units are dropped at every step
    assert 0.3 < (y[0] == 0).mean() < 0.7
    assert layer.forward(x, False) is x


def test_locked_dropout_gradient(rng: np.random.Generator) -> None:
    layer = LockedDropout(0.4)
    x = rng.standard_normal((4, 2, 5))
    w = rng.standard_normal(x.shape)

    def f() -> float:
        return float((layer.forward(x, True, np.random.default_rng(1)) * w).sum())

    f()
    assert_close_grad(numerical_grad(f, x), layer.backward(w))


def test_embedding_dropout_drops_whole_words_and_its_gradient(rng: np.random.Generator) -> None:
    V, D = 9, 4
    W, dW = rng.standard_normal((V, D)), np.zeros((V, D))
    emb = Embedding(W, dW)
    ids = np.array([[1, 2, 1], [3, 1, 8]])  # (T, N): word 1 three times
    drop = EmbeddingDropout(0.5)
    scale = drop.mask(V, True, np.random.default_rng(3), W.dtype)
    assert scale is not None and set(np.unique(scale)) <= {0.0, 2.0}
    x = emb.forward(ids, scale)
    for t, n in np.ndindex(ids.shape):  # a word is dropped everywhere or nowhere
        np.testing.assert_array_equal(x[t, n], W[ids[t, n]] * scale[ids[t, n]])
    w = rng.standard_normal(x.shape)

    def f() -> float:
        return float((emb.forward(ids, scale) * w).sum())

    f()
    emb.backward(w)
    assert_close_grad(numerical_grad(f, W), dW)


def test_weight_drop_gradient_and_one_mask_a_batch(rng: np.random.Generator) -> None:
    D, H, T, N = 3, 4, 5, 2
    Wx, Wh = rng.standard_normal((D, 4 * H)), rng.standard_normal((H, 4 * H))
    b = rng.standard_normal(4 * H)
    grads = [np.zeros_like(Wx), np.zeros_like(Wh), np.zeros_like(b)]
    lstm = LSTM(Wx, Wh, b, *grads)
    xs = rng.standard_normal((T, N, D))
    h0, c0 = rng.standard_normal((N, H)), rng.standard_normal((N, H))
    mask = WeightDrop(0.5).mask(Wh.shape, True, np.random.default_rng(5), Wh.dtype)
    assert mask is not None and (mask == 0).any() and (mask == 2).any()
    w = rng.standard_normal((T, N, H))

    def f() -> float:
        return float((lstm.forward(xs, h0, c0, mask)[0] * w).sum())

    f()
    dxs = lstm.backward(w)
    for p, g in zip((Wx, Wh, b), grads, strict=True):
        assert_close_grad(numerical_grad(f, p), g, rtol=1e-5)
    assert_close_grad(numerical_grad(f, xs), dxs, rtol=1e-5)
    assert (grads[1][mask == 0] == 0).all()  # a dropped connection gets no gradient
    # the masked recurrence is the plain one with Wh * mask
    plain = LSTM(Wx, Wh * mask, b, *[np.zeros_like(g) for g in grads])
    np.testing.assert_allclose(plain.forward(xs, h0, c0)[0], lstm.forward(xs, h0, c0, mask)[0])


def test_activation_penalty_gradients(rng: np.random.Generator) -> None:
    dropped, raw = rng.standard_normal((6, 2, 3)), rng.standard_normal((6, 2, 3))
    pen = activation_penalty(dropped, raw, alpha=2.0, beta=1.0)
    assert np.isclose(pen.loss, 2 * np.mean(dropped**2) + np.mean((raw[1:] - raw[:-1]) ** 2))
    assert_close_grad(numerical_grad(lambda: activation_penalty(dropped, raw, 2.0, 0).loss,
                                     dropped), pen.d_dropped)
    assert_close_grad(numerical_grad(lambda: activation_penalty(dropped, raw, 0, 1.0).loss,
                                     raw), pen.d_raw)


AWD = Regularization(dropout_embedding=0.2, dropout_input=0.3, dropout_hidden=0.25,
                     dropout_output=0.4, weight_drop=0.5, ar_alpha=2.0, tar_beta=1.0)


@pytest.mark.parametrize("tied", [True, False])
def test_whole_model_gradient_with_every_part_on(tied: bool) -> None:
    config = ModelConfig(vocab_size=11, wordvec_size=5, hidden_size=5 if tied else 6,
                         num_layers=2, tied=tied)
    m = BetterRnnlm(config, rng=np.random.default_rng(1), dtype=np.float64, reg=AWD)
    for p in m.params.values():  # larger than the book's init, so every path carries signal
        p += np.random.default_rng(7).normal(0, 0.3, p.shape)
    r = np.random.default_rng(2)
    xs, ts = r.integers(0, 11, (3, 4)), r.integers(0, 11, (3, 4))
    H = config.hidden_size
    state = LSTMState(r.standard_normal((2, 3, H)), r.standard_normal((2, 3, H)))

    def f() -> float:
        # The same seed each call: the same masks, so the function is fixed.
        loss = m.forward(xs, ts, state, train=True, rng=np.random.default_rng(3))[0]
        assert m.penalty is not None
        return loss + m.penalty.loss

    f()
    m.backward()
    assert m.penalty is not None and m.penalty.loss > 0
    for name, p in m.params.items():
        assert_close_grad(numerical_grad(f, p), m.grads[name], rtol=1e-5)


def test_regularisation_is_off_outside_training() -> None:
    config = ModelConfig(vocab_size=11, wordvec_size=5, hidden_size=5)
    params = BetterRnnlm(config, rng=np.random.default_rng(1)).params
    plain = BetterRnnlm(config, {k: v.copy() for k, v in params.items()})
    awd = BetterRnnlm(config, {k: v.copy() for k, v in params.items()}, reg=AWD)
    xs = np.random.default_rng(4).integers(0, 11, (2, 6))
    np.testing.assert_array_equal(plain.logits(xs), awd.logits(xs))
    a = awd.forward(xs, xs, train=True, rng=np.random.default_rng(5))[0]
    b = plain.forward(xs, xs, train=True, rng=np.random.default_rng(5))[0]
    assert a != b


def test_bad_rates_are_refused() -> None:
    with pytest.raises(ValueError, match="weight_drop"):
        Regularization(weight_drop=1.0)
    with pytest.raises(ValueError, match="ar_alpha"):
        Regularization(ar_alpha=-1)
