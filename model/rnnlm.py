"""ModelConfig and BetterRnnlm (Deep Learning from Scratch 2, 6.5): the training model.

Embedding -> Dropout -> [LSTM -> Dropout] x L -> Affine (tied to the embedding) -> softmax,
after Zaremba et al. 2014 ("Recurrent Neural Network Regularization") with the weight
tying of Press & Wolf 2017 and Inan et al. 2017. The book's plain ``Rnnlm`` is the same
class with ``num_layers=1, tied=False, dropout=0``. A ``Regularization`` (model.regularize)
swaps in AWD-LSTM's training-time regularisation; what is served stays the same.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from model.layers import LSTM, Affine, Dropout, Embedding, SoftmaxCrossEntropy
from model.regularize import (
    EmbeddingDropout,
    LockedDropout,
    Penalty,
    Regularization,
    WeightDrop,
    activation_penalty,
)


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of a BetterRnnlm; the defaults are the book's 2x650 tied model."""

    vocab_size: int = 10000
    wordvec_size: int = 650
    hidden_size: int = 650
    num_layers: int = 2
    tied: bool = True
    dropout: float = 0.5

    def __post_init__(self) -> None:
        for name in ("vocab_size", "wordvec_size", "hidden_size", "num_layers"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.tied and self.wordvec_size != self.hidden_size:
            raise ValueError(
                "tied weights need wordvec_size == hidden_size, got "
                f"{self.wordvec_size} and {self.hidden_size}"
            )
        if not 0.0 <= float(self.dropout) < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")

    def to_dict(self) -> dict[str, Any]:
        """Plain dict for config.json."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        """Inverse of to_dict; unknown keys are an error."""
        unknown = set(d) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown model config keys: {sorted(unknown)}")
        return cls(**d)

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        """The name and shape of every parameter array, in docs/design.md's naming."""
        V, D, H = self.vocab_size, self.wordvec_size, self.hidden_size
        shapes: dict[str, tuple[int, ...]] = {"embed.W": (V, D)}
        for k in range(self.num_layers):
            n_in = D if k == 0 else H
            shapes[f"lstm.{k}.Wx"] = (n_in, 4 * H)
            shapes[f"lstm.{k}.Wh"] = (H, 4 * H)
            shapes[f"lstm.{k}.b"] = (4 * H,)
        if not self.tied:
            shapes["affine.W"] = (H, V)
        shapes["affine.b"] = (V,)
        return shapes


@dataclass(frozen=True)
class LSTMState:
    """Recurrent state of every layer: h and c of shape (L, N, H)."""

    h: np.ndarray
    c: np.ndarray

    @classmethod
    def zeros(
        cls, config: ModelConfig, batch_size: int, dtype: np.dtype | type = np.float32
    ) -> LSTMState:
        """The zero state the model starts every stream from."""
        shape = (config.num_layers, batch_size, config.hidden_size)
        return cls(np.zeros(shape, dtype=dtype), np.zeros(shape, dtype=dtype))

    @property
    def batch_size(self) -> int:
        """N, the number of streams."""
        return int(self.h.shape[1])

    def select(self, rows: np.ndarray | list[int]) -> LSTMState:
        """A new state holding only the given streams (copies)."""
        return LSTMState(self.h[:, rows].copy(), self.c[:, rows].copy())

    @classmethod
    def stack(cls, states: list[LSTMState]) -> LSTMState:
        """Concatenate states along the stream axis."""
        return cls(
            np.concatenate([s.h for s in states], axis=1),
            np.concatenate([s.c for s in states], axis=1),
        )

    @property
    def nbytes(self) -> int:
        """Memory held by the two arrays."""
        return int(self.h.nbytes + self.c.nbytes)


def init_params(
    config: ModelConfig, rng: np.random.Generator, dtype: np.dtype | type = np.float32
) -> dict[str, np.ndarray]:
    """The book's initialisation: embedding N(0,1)/100, W randn/sqrt(fan_in), biases 0."""
    params: dict[str, np.ndarray] = {}
    for name, shape in config.param_shapes().items():
        if name == "embed.W":
            w = rng.standard_normal(shape) / 100.0
        elif name.endswith(".b"):
            w = np.zeros(shape)
        else:
            w = rng.standard_normal(shape) / np.sqrt(shape[0])
        params[name] = w.astype(dtype)
    return params


class BetterRnnlm:
    """The training model: forward with loss, backward into named gradient buffers."""

    def __init__(
        self,
        config: ModelConfig,
        params: dict[str, np.ndarray] | None = None,
        rng: np.random.Generator | None = None,
        dtype: np.dtype | type = np.float32,
        reg: Regularization | None = None,
    ) -> None:
        self.config = config
        if params is None:
            params = init_params(config, rng or np.random.default_rng(), dtype)
        shapes = config.param_shapes()
        if set(params) != set(shapes):
            raise ValueError(f"parameter names {sorted(params)} != expected {sorted(shapes)}")
        for name, shape in shapes.items():
            if params[name].shape != shape:
                raise ValueError(f"{name}: shape {params[name].shape} != expected {shape}")
        self.params = params
        self.grads = {k: np.zeros_like(v) for k, v in params.items()}
        p, g = self.params, self.grads
        self.embed = Embedding(p["embed.W"], g["embed.W"], accumulate=config.tied)
        self.set_regularization(reg)
        self.lstms = [
            LSTM(
                p[f"lstm.{k}.Wx"], p[f"lstm.{k}.Wh"], p[f"lstm.{k}.b"],
                g[f"lstm.{k}.Wx"], g[f"lstm.{k}.Wh"], g[f"lstm.{k}.b"],
            )
            for k in range(config.num_layers)
        ]
        if config.tied:
            # One array, two uses: the output layer reads the embedding matrix transposed
            # and writes its gradient into the embedding's buffer, which the embedding's
            # backward then adds to.
            self.affine = Affine(
                p["embed.W"], p["affine.b"], g["embed.W"], g["affine.b"], transposed=True
            )
        else:
            self.affine = Affine(p["affine.W"], p["affine.b"], g["affine.W"], g["affine.b"])
        self.loss_layer = SoftmaxCrossEntropy()

    def set_regularization(self, reg: Regularization | None) -> None:
        """The book's dropout (None) or AWD-LSTM's regularisation for training forwards."""
        config = self.config
        self.reg = reg
        self.dropouts: list[Dropout] | list[LockedDropout]
        if reg is None:
            self.dropouts = [Dropout(config.dropout) for _ in range(config.num_layers + 1)]
        else:
            rates = [reg.dropout_input, *[reg.dropout_hidden] * (config.num_layers - 1),
                     reg.dropout_output]
            self.dropouts = [LockedDropout(p) for p in rates]
        self.embed_drop = EmbeddingDropout(reg.dropout_embedding if reg else 0.0)
        self.weight_drop = WeightDrop(reg.weight_drop if reg else 0.0)
        self.penalty: Penalty | None = None  # AR/TAR of the last training forward

    @property
    def dtype(self) -> np.dtype:
        """Float type of the parameters."""
        return self.params["embed.W"].dtype

    def _hidden(
        self,
        xs: np.ndarray,
        state: LSTMState | None,
        train: bool,
        rng: np.random.Generator | None,
    ) -> tuple[np.ndarray, LSTMState]:
        """(N, T) ids -> top-layer outputs (T, N, H) after dropout, and the final state."""
        N = xs.shape[0]
        if state is None:
            state = LSTMState.zeros(self.config, N, self.dtype)
        dt = self.dtype
        row_scale = self.embed_drop.mask(self.config.vocab_size, train, rng, dt)
        x = self.embed.forward(np.ascontiguousarray(xs.T), row_scale)  # (T, N, D)
        x = self.dropouts[0].forward(x, train, rng)
        hs, cs = [], []
        raw = x
        for k, lstm in enumerate(self.lstms):
            mask = self.weight_drop.mask(lstm.params[1].shape, train, rng, dt)
            raw, h, c = lstm.forward(x, state.h[k], state.c[k], mask)  # (T, N, H)
            x = self.dropouts[k + 1].forward(raw, train, rng)
            hs.append(h)
            cs.append(c)
        reg = self.reg
        self.penalty = None
        if train and reg is not None and (reg.ar_alpha or reg.tar_beta):
            self.penalty = activation_penalty(x, raw, reg.ar_alpha, reg.tar_beta)
        return x, LSTMState(np.stack(hs), np.stack(cs))

    def forward(
        self,
        xs: np.ndarray,
        ts: np.ndarray,
        state: LSTMState | None = None,
        train: bool = True,
        rng: np.random.Generator | None = None,
    ) -> tuple[float, LSTMState]:
        """Mean cross-entropy of (N, T) targets given (N, T) inputs, and the final state.

        Dropout is active only when ``train`` (its masks come from ``rng``). With AR/TAR on,
        backward() differentiates the cross-entropy plus ``self.penalty.loss``.
        """
        x, new_state = self._hidden(xs, state, train, rng)
        logits = self.affine.forward(x)  # (T, N, V)
        loss = self.loss_layer.forward(logits, np.ascontiguousarray(ts.T))
        return loss, new_state

    def logits(self, xs: np.ndarray, state: LSTMState | None = None) -> np.ndarray:
        """(N, T) ids -> (N, T, V) logits with dropout off, from ``state`` (zero if None)."""
        x, _ = self._hidden(xs, state, train=False, rng=None)
        return self.affine.forward(x).transpose(1, 0, 2).copy()  # (N, T, V)

    def backward(self) -> None:
        """Fill ``self.grads`` for the last forward (the mean loss)."""
        dout = self.loss_layer.backward()
        dx = self.affine.backward(dout)
        top = len(self.lstms) - 1
        pen = self.penalty
        if pen is not None and pen.d_dropped is not None:
            dx += pen.d_dropped
        for k in range(top, -1, -1):
            dx = self.dropouts[k + 1].backward(dx)
            if k == top and pen is not None and pen.d_raw is not None:
                dx = dx + pen.d_raw
            dx = self.lstms[k].backward(dx)
        dx = self.dropouts[0].backward(dx)
        self.embed.backward(dx)
