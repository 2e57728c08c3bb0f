"""Time-distributed layers with forward and backward, in the book's style (params, grads).

Every tensor is time-major, ``(T, N, ...)`` as in PyTorch's ``nn.LSTM``: the recurrence
then reads and writes contiguous ``(N, ...)`` slices. Layers keep what backward needs
from the last forward; they hold no recurrent state (state is passed in and out).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from model.functions import sigmoid


class Buffers:
    """Named scratch arrays reused from call to call while their shape stays the same."""

    def __init__(self) -> None:
        self._arrays: dict[str, np.ndarray] = {}

    def get(self, name: str, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        """An uninitialised array of ``shape``, the same memory as last time when it fits."""
        a = self._arrays.get(name)
        if a is None or a.shape != shape or a.dtype != dtype:
            a = np.empty(shape, dtype=dtype)
            self._arrays[name] = a
        return a


class Embedding:
    """Row lookup ``W[ids]``; backward scatters the gradient into ``dW``."""

    def __init__(self, W: np.ndarray, dW: np.ndarray, accumulate: bool = False) -> None:
        # accumulate: dW already holds another gradient of the same matrix (tied output
        # layer), so backward adds to it instead of overwriting it.
        self.params = [W]
        self.grads = [dW]
        self.accumulate = accumulate
        self.ids: np.ndarray | None = None
        self.scale: np.ndarray | None = None

    def forward(self, ids: np.ndarray, row_scale: np.ndarray | None = None) -> np.ndarray:
        """(T, N) int ids -> (T, N, D) vectors; row_scale (V,) scales each word's vector
        (embedding dropout, model.regularize), the matrix itself untouched."""
        self.ids = ids
        x = self.params[0][ids]  # (T, N, D)
        if row_scale is None:
            self.scale = None
            return x
        self.scale = row_scale[ids][..., None]  # (T, N, 1)
        x *= self.scale
        return x

    def backward(self, dout: np.ndarray) -> None:
        """Add the rows of ``dout`` into the rows of dW they were read from."""
        assert self.ids is not None, "backward before forward"
        dW = self.grads[0]
        if not self.accumulate:
            dW[...] = 0
        D = dW.shape[1]
        if self.scale is not None:
            dout = dout * self.scale
        np.add.at(dW, self.ids.ravel(), dout.reshape(-1, D))  # (T*N, D)


class Dropout:
    """Inverted dropout (Srivastava et al. 2014): keep with prob 1-p, scale by 1/(1-p).

    A fresh mask per element and time step, drawn from the generator passed to forward;
    outside training forward is the identity and backward passes the gradient through.
    """

    def __init__(self, p: float) -> None:
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {p}")
        self.p = p
        self.params: list[np.ndarray] = []
        self.grads: list[np.ndarray] = []
        self.mask: np.ndarray | None = None

    def forward(
        self, x: np.ndarray, train: bool, rng: np.random.Generator | None = None
    ) -> np.ndarray:
        """x * mask in training, x itself otherwise."""
        if not train or self.p == 0.0:
            self.mask = None
            return x
        if rng is None:
            raise ValueError("dropout in training needs a np.random.Generator")
        keep = rng.random(x.shape, dtype=np.float32) >= self.p
        self.mask = keep.astype(x.dtype) * x.dtype.type(1.0 / (1.0 - self.p))
        return x * self.mask

    def backward(self, dout: np.ndarray) -> np.ndarray:
        """dout * mask, or dout unchanged when the last forward did not drop."""
        return dout if self.mask is None else dout * self.mask


class Affine:
    """y = x W + b over (T, N, H) -> (T, N, V).

    With ``transposed`` the stored matrix is (V, H) and used as its transpose: that is
    how the output layer shares the embedding matrix (Press & Wolf 2017, Inan et al.
    2017) without a copy; its gradient is then written into the embedding's buffer.
    """

    def __init__(
        self,
        W: np.ndarray,
        b: np.ndarray,
        dW: np.ndarray,
        db: np.ndarray,
        transposed: bool = False,
    ) -> None:
        self.params = [W, b]
        self.grads = [dW, db]
        self.transposed = transposed
        self.x2: np.ndarray | None = None
        self.in_shape: tuple[int, ...] = ()
        self.buffers = Buffers()

    def weight(self) -> np.ndarray:
        """The (H, V) matrix, a view when tied."""
        W = self.params[0]
        return W.T if self.transposed else W

    def forward(self, x: np.ndarray) -> np.ndarray:
        """(T, N, H) -> (T, N, V)."""
        T, N, H = x.shape
        W, b = self.weight(), self.params[1]
        self.in_shape = x.shape
        self.x2 = x.reshape(T * N, H)  # (T*N, H)
        y = self.buffers.get("y", (T * N, W.shape[1]), x.dtype)
        np.matmul(self.x2, W, out=y)
        y += b
        return y.reshape(T, N, -1)  # (T, N, V)

    def backward(self, dout: np.ndarray) -> np.ndarray:
        """Gradient w.r.t. x; writes dW (or the tied dE) and db."""
        assert self.x2 is not None, "backward before forward"
        dW, db = self.grads
        V = dout.shape[-1]
        d2 = dout.reshape(-1, V)  # (T*N, V)
        if self.transposed:
            np.matmul(d2.T, self.x2, out=dW)  # (V, H)
        else:
            np.matmul(self.x2.T, d2, out=dW)  # (H, V)
        np.sum(d2, axis=0, out=db)
        dx = d2 @ self.weight().T  # (T*N, H)
        return dx.reshape(self.in_shape)  # (T, N, H)


def lstm_cell(
    a: np.ndarray,
    c_prev: np.ndarray,
    c: np.ndarray,
    tc: np.ndarray,
    h: np.ndarray,
    gi: np.ndarray,
) -> None:
    """One step's gates from pre-activations ``a`` (N, 4H), in place; writes c, tanh(c), h.

    Gate order in the 4H axis is the book's f, g, i, o; ``c = f*c_prev + g*i`` and
    ``h = o*tanh(c)``. ``a`` is overwritten with the activations, ``gi`` is scratch.
    """
    H = c.shape[-1]
    f, g, i = a[:, :H], a[:, H : 2 * H], a[:, 2 * H : 3 * H]
    io = a[:, 2 * H :]
    sigmoid(f, out=f)
    np.tanh(g, out=g)
    sigmoid(io, out=io)
    np.multiply(f, c_prev, out=c)
    np.multiply(g, i, out=gi)
    c += gi
    np.tanh(c, out=tc)
    np.multiply(a[:, 3 * H :], tc, out=h)


def lstm_scan(
    A: np.ndarray,
    Wh: np.ndarray,
    h0: np.ndarray,
    c0: np.ndarray,
    cell: Callable[..., None] = lstm_cell,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Run the LSTM recurrence over a window given A = x Wx + b, shape (T, N, 4H).

    A is overwritten with the gate activations (backward needs them); ``cell`` is the
    step's gate function (lstm_cell, the book's gate order, unless inference reorders).
    Returns h_all and c_all of shape (T+1, N, H) (index 0 holds h0, c0) and tanh(c),
    (T, N, H).
    """
    T, N, H4 = A.shape
    H = H4 // 4
    dtype = A.dtype
    h_all = np.empty((T + 1, N, H), dtype=dtype)
    c_all = np.empty((T + 1, N, H), dtype=dtype)
    tc = np.empty((T, N, H), dtype=dtype)
    h_all[0] = h0
    c_all[0] = c0
    hWh = np.empty((N, H4), dtype=dtype)
    gi = np.empty((N, H), dtype=dtype)
    for t in range(T):
        a = A[t]
        np.matmul(h_all[t], Wh, out=hWh)
        a += hWh
        cell(a, c_all[t], c_all[t + 1], tc[t], h_all[t + 1], gi)
    return h_all, c_all, tc


class LSTM:
    """One LSTM layer over a window: one matrix product for all input projections."""

    def __init__(
        self,
        Wx: np.ndarray,
        Wh: np.ndarray,
        b: np.ndarray,
        dWx: np.ndarray,
        dWh: np.ndarray,
        db: np.ndarray,
    ) -> None:
        self.params = [Wx, Wh, b]
        self.grads = [dWx, dWh, db]
        self.cache: tuple[np.ndarray, ...] | None = None
        self.Wh_mask: np.ndarray | None = None
        self.Wh_used: np.ndarray = Wh

    def forward(
        self, xs: np.ndarray, h0: np.ndarray, c0: np.ndarray, Wh_mask: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(T, N, D) inputs and (N, H) initial state -> (T, N, H) outputs, final h, c.

        Wh_mask (H, 4H): the recurrence uses Wh * Wh_mask (DropConnect, model.regularize).
        """
        Wx, Wh, b = self.params
        T, N, D = xs.shape
        A = (xs.reshape(T * N, D) @ Wx).reshape(T, N, -1)  # (T, N, 4H)
        A += b
        self.Wh_mask = Wh_mask
        self.Wh_used = Wh if Wh_mask is None else Wh * Wh_mask
        h_all, c_all, tc = lstm_scan(A, self.Wh_used, h0, c0)
        self.cache = (xs, A, h_all, c_all, tc)
        return h_all[1:], h_all[T], c_all[T]

    def backward(self, dhs: np.ndarray) -> np.ndarray:
        """(T, N, H) output gradient -> (T, N, D) input gradient; writes dWx, dWh, db.

        Truncated BPTT: no gradient flows into the initial state.
        """
        assert self.cache is not None, "backward before forward"
        xs, A, h_all, c_all, tc = self.cache
        Wx = self.params[0]
        Wh = self.Wh_used
        dWx, dWh, db = self.grads
        T, N, H = dhs.shape
        dtype = dhs.dtype
        dA = np.empty_like(A)
        dh = np.zeros((N, H), dtype=dtype)
        dc = np.zeros((N, H), dtype=dtype)
        ds = np.empty((N, H), dtype=dtype)
        tmp = np.empty((N, H), dtype=dtype)
        for t in range(T - 1, -1, -1):
            a, da = A[t], dA[t]
            f, g, i, o = a[:, :H], a[:, H : 2 * H], a[:, 2 * H : 3 * H], a[:, 3 * H :]
            df, dg, di, do = da[:, :H], da[:, H : 2 * H], da[:, 2 * H : 3 * H], da[:, 3 * H :]
            dh += dhs[t]
            # do = dh * tanh(c) * o(1-o)
            np.multiply(dh, tc[t], out=do)
            np.subtract(1, o, out=tmp)
            tmp *= o
            do *= tmp
            # ds = dc + dh * o * (1 - tanh(c)^2)
            np.multiply(tc[t], tc[t], out=tmp)
            np.subtract(1, tmp, out=tmp)
            tmp *= o
            np.multiply(dh, tmp, out=ds)
            ds += dc
            # df = ds * c_prev * f(1-f);  dg = ds * i * (1-g^2);  di = ds * g * i(1-i)
            np.subtract(1, f, out=tmp)
            tmp *= f
            np.multiply(ds, c_all[t], out=df)
            df *= tmp
            np.multiply(g, g, out=tmp)
            np.subtract(1, tmp, out=tmp)
            tmp *= i
            np.multiply(ds, tmp, out=dg)
            np.subtract(1, i, out=tmp)
            tmp *= i
            tmp *= g
            np.multiply(ds, tmp, out=di)
            np.multiply(ds, f, out=dc)
            np.matmul(da, Wh.T, out=dh)
        dA2 = dA.reshape(T * N, -1)  # (T*N, 4H)
        np.matmul(h_all[:-1].reshape(T * N, H).T, dA2, out=dWh)  # (H, 4H)
        if self.Wh_mask is not None:
            dWh *= self.Wh_mask
        np.matmul(xs.reshape(T * N, -1).T, dA2, out=dWx)  # (D, 4H)
        np.sum(dA2, axis=0, out=db)
        return (dA2 @ Wx.T).reshape(T, N, -1)  # (T, N, D)


class SoftmaxCrossEntropy:
    """Mean cross-entropy of softmax(logits) against integer targets, stable for any logits."""

    def __init__(self) -> None:
        self.params: list[np.ndarray] = []
        self.grads: list[np.ndarray] = []
        self.cache: tuple[np.ndarray, np.ndarray] | None = None

    def forward(self, logits: np.ndarray, targets: np.ndarray) -> float:
        """(..., V) logits, (...) targets -> mean over all targets of -log softmax[target].

        Overwrites ``logits`` with the softmax probabilities (backward needs only them).
        """
        V = logits.shape[-1]
        x = logits.reshape(-1, V)  # (M, V)
        t = targets.reshape(-1)  # (M,)
        rows = np.arange(x.shape[0])
        m = x.max(axis=1, keepdims=True)
        # The target's shifted logit in float64: in float32 the difference can overflow.
        picked = x[rows, t].astype(np.float64) - m[:, 0].astype(np.float64)
        with np.errstate(over="ignore"):
            x -= m  # -inf where the gap overflows: exp gives the correct 0
        np.exp(x, out=x)
        s = x.sum(axis=1, keepdims=True)
        # log-sum-exp: log(s) with s >= 1 (the max term is exp(0)), so never log(0).
        loss = float(np.mean(np.log(s[:, 0].astype(np.float64)) - picked))
        x /= s
        self.cache = (x, t)
        return loss

    def backward(self) -> np.ndarray:
        """(M, V) gradient of the mean loss w.r.t. the logits (overwrites the probs)."""
        assert self.cache is not None, "backward before forward"
        y, t = self.cache
        y[np.arange(y.shape[0]), t] -= 1
        y *= y.dtype.type(1.0 / y.shape[0])
        return y
