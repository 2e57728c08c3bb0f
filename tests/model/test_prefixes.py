"""model.prefixes: the tree of prefixes gives each text the scores it gets alone."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from model.inference import InferenceModel, score
from model.prefixes import score_prefixes
from model.rnnlm import ModelConfig
from tests.model.conftest import TINY_V

V = TINY_V  # the vocabulary of conftest.trained_like


@settings(max_examples=40, deadline=None)
@given(data=st.data(), seed=st.integers(0, 2**16))
def test_prefix_tree_equals_each_sequence_alone(
    model: InferenceModel, data: st.DataObject, seed: int
) -> None:
    """Sequences sharing prefixes, repeated, ending inside another, too short to predict:
    the tree of their prefixes gives each the scores it gets alone from the zero state."""
    r = np.random.default_rng(seed)
    bases = [list(r.integers(0, 3, 12)) for _ in range(3)]  # a tiny alphabet: many shared
    picks = data.draw(st.lists(st.tuples(st.integers(0, 2), st.integers(0, 12),
                                         st.integers(0, 4)), min_size=1, max_size=9))
    seqs = [bases[b][:n] + list(r.integers(0, V, k)) for b, n, k in picks]
    got = score_prefixes(model, seqs)
    for q, lp in zip(seqs, got, strict=True):
        assert lp.dtype == np.float32 and lp.shape == (max(len(q) - 1, 0),)
        if len(q) > 1:
            alone, _ = score(model, [q[:-1]], [q[1:]])
            assert np.allclose(lp, alone[0], atol=1e-5)


@pytest.mark.parametrize("table", [True, False])
def test_prefix_tree_projects_in_chunks_with_and_without_the_input_table(
    trained_like: tuple[ModelConfig, dict[str, np.ndarray]], table: bool,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import model.inference as inf

    m = InferenceModel.from_params(*trained_like, input_table=table)
    r = np.random.default_rng(10)
    seqs = [[0, *r.integers(0, V, n)] for n in (1, 30, 7, 7, 0, 12)]
    seqs.append(list(seqs[2]))  # a repeated line
    want = [score(m, [q[:-1]], [q[1:]])[0][0] if len(q) > 1 else np.empty(0) for q in seqs]
    monkeypatch.setattr(inf, "CHUNK_ROWS", 5)  # a level split across chunks, picks shared
    for lp, w in zip(score_prefixes(m, seqs), want, strict=True):
        assert np.allclose(lp, w, atol=1e-5)
    assert score_prefixes(m, []) == [] and len(score_prefixes(m, [[3]])[0]) == 0


def test_a_long_text_beside_short_ones(model: InferenceModel) -> None:
    """Rows are not padded to the longest: a long text and short ones, each as alone."""
    r = np.random.default_rng(11)
    seqs = [[0, *r.integers(0, V, n)] for n in (3000, 2, 5)]
    for q, lp in zip(seqs, score_prefixes(model, seqs), strict=True):
        alone, _ = score(model, [q[:-1]], [q[1:]])
        assert np.allclose(lp, alone[0], atol=1e-4)
