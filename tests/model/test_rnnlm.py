"""BetterRnnlm: whole-model gradient check, tying, dropout, configs."""

from __future__ import annotations

import numpy as np
import pytest

from model.rnnlm import BetterRnnlm, LSTMState, ModelConfig
from tests.model.test_layers import assert_close_grad, numerical_grad


def _model(tied: bool, dropout: float, dtype: type = np.float64) -> BetterRnnlm:
    cfg = ModelConfig(vocab_size=11, wordvec_size=5, hidden_size=5 if tied else 4,
                      num_layers=2, tied=tied, dropout=dropout)
    m = BetterRnnlm(cfg, rng=np.random.default_rng(0), dtype=dtype)
    r = np.random.default_rng(1)
    for p in m.params.values():
        p += r.standard_normal(p.shape) * 0.3  # move off the book's tiny init
    return m


@pytest.mark.parametrize(("tied", "dropout"), [(True, 0.5), (False, 0.0), (True, 0.0)])
def test_whole_model_gradient(tied: bool, dropout: float) -> None:
    m = _model(tied, dropout)
    r = np.random.default_rng(2)
    xs, ts = r.integers(0, 11, (3, 4)), r.integers(0, 11, (3, 4))
    H = m.config.hidden_size
    state = LSTMState(r.standard_normal((2, 3, H)), r.standard_normal((2, 3, H)))

    def f() -> float:
        # The same seed each call gives the same dropout masks: a fixed mask.
        return m.forward(xs, ts, state, train=True, rng=np.random.default_rng(3))[0]

    f()
    m.backward()
    for name, p in m.params.items():
        assert_close_grad(numerical_grad(f, p), m.grads[name], rtol=1e-5)


def test_tied_weights_are_one_array() -> None:
    m = _model(tied=True, dropout=0.5)
    assert "affine.W" not in m.params
    assert m.affine.params[0] is m.params["embed.W"] is m.embed.params[0]
    assert m.affine.grads[0] is m.grads["embed.W"] is m.embed.grads[0]
    m.params["embed.W"][0, 0] += 1.0  # an update through the dict reaches both uses
    assert m.affine.weight()[0, 0] == m.params["embed.W"][0, 0]


def test_dropout_active_only_in_training() -> None:
    m = _model(tied=True, dropout=0.5, dtype=np.float32)
    xs = np.random.default_rng(4).integers(0, 11, (2, 6))
    a = m.forward(xs, xs, train=True, rng=np.random.default_rng(5))[0]
    b = m.forward(xs, xs, train=True, rng=np.random.default_rng(6))[0]
    c = m.forward(xs, xs, train=False)[0]
    d = m.forward(xs, xs, train=False)[0]
    assert a != b
    assert c == d


def test_book_rnnlm_is_a_config() -> None:
    cfg = ModelConfig(vocab_size=20, wordvec_size=7, hidden_size=9, num_layers=1,
                      tied=False, dropout=0.0)
    m = BetterRnnlm(cfg, rng=np.random.default_rng(0))
    assert sorted(m.params) == ["affine.W", "affine.b", "embed.W", "lstm.0.Wh", "lstm.0.Wx",
                                "lstm.0.b"]
    assert m.params["affine.W"].shape == (9, 20)


def test_book_initialisation() -> None:
    cfg = ModelConfig(vocab_size=2000, wordvec_size=300, hidden_size=300)
    p = BetterRnnlm(cfg, rng=np.random.default_rng(0)).params
    assert p["embed.W"].dtype == np.float32
    assert abs(p["embed.W"].std() - 0.01) < 1e-3
    assert abs(p["lstm.0.Wx"].std() - 1 / np.sqrt(300)) < 2e-3
    assert not p["lstm.1.b"].any() and not p["affine.b"].any()


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="tied"):
        ModelConfig(wordvec_size=100, hidden_size=200, tied=True)
    with pytest.raises(ValueError, match="dropout"):
        ModelConfig(dropout=1.0)
    with pytest.raises(ValueError, match="unknown"):
        ModelConfig.from_dict({"vocab_size": 3, "bogus": 1})
    with pytest.raises(ValueError, match="shape"):
        BetterRnnlm(ModelConfig(10, 4, 4), params={k: np.zeros((1,)) for k in
                                                  ModelConfig(10, 4, 4).param_shapes()})
