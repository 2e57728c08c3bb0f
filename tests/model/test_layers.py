"""Numerical gradient checks (central differences, float64) for every layer and the loss."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from model.functions import log_softmax, logsumexp, sigmoid, softmax
from model.layers import LSTM, Affine, Dropout, Embedding, SoftmaxCrossEntropy

EPS = 1e-6


def numerical_grad(f: Callable[[], float], x: np.ndarray) -> np.ndarray:
    """Central differences of scalar f() with respect to every element of x (in place)."""
    g = np.zeros_like(x)
    for i in np.ndindex(x.shape):
        old = x[i]
        x[i] = old + EPS
        a = f()
        x[i] = old - EPS
        b = f()
        x[i] = old
        g[i] = (a - b) / (2 * EPS)
    return g


def assert_close_grad(num: np.ndarray, ana: np.ndarray, rtol: float = 1e-6) -> None:
    scale = max(np.abs(num).max(), 1e-8)
    assert np.abs(num - ana).max() / scale < rtol


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


def test_functions_are_stable() -> None:
    x = np.array([[1000.0, -1000.0, 0.0], [-1e30, 5.0, 5.0]], dtype=np.float32)
    assert np.all(np.isfinite(log_softmax(x)))
    assert np.allclose(softmax(x).sum(axis=1), 1.0)
    assert np.all(np.isfinite(logsumexp(x)))
    s = sigmoid(np.array([-1e4, 0.0, 1e4], dtype=np.float32))
    assert np.allclose(s, [0.0, 0.5, 1.0])


def test_softmax_cross_entropy_gradient(rng: np.random.Generator) -> None:
    logits = rng.standard_normal((3, 4, 7)) * 3
    t = rng.integers(0, 7, (3, 4))
    layer = SoftmaxCrossEntropy()

    def f() -> float:
        return layer.forward(logits.copy(), t)

    f()
    ana = layer.backward().reshape(logits.shape)
    assert_close_grad(numerical_grad(f, logits), ana)


def test_softmax_cross_entropy_is_finite_for_extreme_logits() -> None:
    logits = np.array([[1e30, -1e30, 0.0], [-3e38, 3e38, 3e38]], dtype=np.float32)
    loss = SoftmaxCrossEntropy().forward(logits.copy(), np.array([1, 0]))
    assert np.isfinite(loss)
    assert loss > 1e29  # target 1 of row 0 is 2e30 below the max


def test_affine_gradient(rng: np.random.Generator) -> None:
    x = rng.standard_normal((4, 3, 5))
    W, b = rng.standard_normal((5, 6)), rng.standard_normal(6)
    layer = Affine(W, b, np.zeros_like(W), np.zeros_like(b))
    w_out = rng.standard_normal((4, 3, 6))

    def f() -> float:
        return float(np.sum(layer.forward(x) * w_out))

    f()
    dx = layer.backward(w_out.copy())
    assert_close_grad(numerical_grad(f, x), dx)
    assert_close_grad(numerical_grad(f, W), layer.grads[0])
    assert_close_grad(numerical_grad(f, b), layer.grads[1])


def test_affine_transposed_shares_the_array(rng: np.random.Generator) -> None:
    E, b = rng.standard_normal((6, 5)), rng.standard_normal(6)
    dE = np.zeros_like(E)
    layer = Affine(E, b, dE, np.zeros_like(b), transposed=True)
    assert layer.params[0] is E and layer.weight().base is E
    x, w_out = rng.standard_normal((2, 3, 5)), rng.standard_normal((2, 3, 6))

    def f() -> float:
        return float(np.sum(layer.forward(x) * w_out))

    f()
    layer.backward(w_out.copy())
    assert_close_grad(numerical_grad(f, E), dE)


@pytest.mark.parametrize("accumulate", [False, True])
def test_embedding_gradient(rng: np.random.Generator, accumulate: bool) -> None:
    W = rng.standard_normal((7, 4))
    dW = np.full_like(W, 0.5)
    layer = Embedding(W, dW, accumulate=accumulate)
    ids = np.array([[1, 3, 1], [6, 0, 1]])  # repeated ids must add up
    w_out = rng.standard_normal((2, 3, 4))

    def f() -> float:
        return float(np.sum(layer.forward(ids) * w_out))

    f()
    layer.backward(w_out)
    expected = numerical_grad(f, W) + (0.5 if accumulate else 0.0)
    assert np.allclose(dW, expected, atol=1e-6)


def test_lstm_gradient(rng: np.random.Generator) -> None:
    T, N, D, H = 5, 3, 4, 6
    Wx, Wh = rng.standard_normal((D, 4 * H)), rng.standard_normal((H, 4 * H))
    b = rng.standard_normal(4 * H)
    xs = rng.standard_normal((T, N, D))
    h0, c0 = rng.standard_normal((N, H)), rng.standard_normal((N, H))
    layer = LSTM(Wx, Wh, b, np.zeros_like(Wx), np.zeros_like(Wh), np.zeros_like(b))
    w_out = rng.standard_normal((T, N, H))

    def f() -> float:
        hs, _, _ = layer.forward(xs, h0, c0)
        return float(np.sum(hs * w_out))

    f()
    dxs = layer.backward(w_out)
    assert_close_grad(numerical_grad(f, xs), dxs)
    for p, g in zip(layer.params, layer.grads, strict=True):
        assert_close_grad(numerical_grad(f, p), g)


def test_lstm_gate_order_is_f_g_i_o(rng: np.random.Generator) -> None:
    """One step by hand with the book's gate layout."""
    D, H = 3, 2
    Wx, Wh = rng.standard_normal((D, 4 * H)), rng.standard_normal((H, 4 * H))
    b = rng.standard_normal(4 * H)
    x = rng.standard_normal((1, 1, D))
    h0, c0 = rng.standard_normal((1, H)), rng.standard_normal((1, H))
    layer = LSTM(Wx, Wh, b, np.zeros_like(Wx), np.zeros_like(Wh), np.zeros_like(b))
    hs, h, c = layer.forward(x, h0, c0)
    a = x[0] @ Wx + h0 @ Wh + b
    sig = lambda z: 1 / (1 + np.exp(-z))  # noqa: E731
    f, g = sig(a[:, :H]), np.tanh(a[:, H : 2 * H])
    i, o = sig(a[:, 2 * H : 3 * H]), sig(a[:, 3 * H :])
    c_ref = f * c0 + g * i
    assert np.allclose(c, c_ref)
    assert np.allclose(h, o * np.tanh(c_ref))
    assert np.allclose(hs[0], h)


def test_dropout_inverted_scaling_and_gradient(rng: np.random.Generator) -> None:
    x = np.ones((200, 50))
    layer = Dropout(0.5)
    y = layer.forward(x, train=True, rng=np.random.default_rng(1))
    assert set(np.unique(y)) <= {0.0, 2.0}
    assert abs(y.mean() - 1.0) < 0.05  # inverted dropout keeps the expectation
    dout = rng.standard_normal(x.shape)
    assert np.array_equal(layer.backward(dout), dout * (y / x))


def test_dropout_inference_is_identity_and_backward_passes() -> None:
    layer = Dropout(0.5)
    x = np.arange(6.0).reshape(2, 3)
    assert layer.forward(x, train=False) is x
    d = np.ones_like(x)
    assert layer.backward(d) is d  # the book's Dropout fails here (no mask)


def test_dropout_needs_a_generator_in_training() -> None:
    with pytest.raises(ValueError, match="Generator"):
        Dropout(0.3).forward(np.ones(3), train=True)
    with pytest.raises(ValueError, match="dropout"):
        Dropout(1.0)
