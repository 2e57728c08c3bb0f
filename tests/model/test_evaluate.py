"""Tests for model.evaluate: the shipped models still score the metrics their config records."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from model.evaluate import all_metrics, book_perplexity, evaluate_split, score_ids
from model.inference import InferenceModel
from model.rnnlm import ModelConfig

WEIGHTS = Path(__file__).resolve().parents[2] / "weights"


def _recorded(name: str) -> dict[str, float]:
    config = WEIGHTS / name / "config.json"
    if not config.is_file():
        pytest.skip(f"{config} is not in this checkout")
    metrics: dict[str, float] = json.loads(config.read_text())["metrics"]
    return metrics


def test_ptb_small_scores_its_four_recorded_metrics(ptb_dir: Path) -> None:
    recorded = _recorded("ptb-small")
    got = all_metrics(WEIGHTS / "ptb-small", ptb_dir, progress=False)
    assert set(got) == {"valid_perplexity", "valid_perplexity_book", "test_perplexity",
                        "test_perplexity_book"}
    for k, v in got.items():
        # recorded to 4 decimals; BLAS kernels move the float32 sums by about 1e-6
        assert abs(v - recorded[k]) < 2e-3, (k, v, recorded[k])


def test_ptb_650_scores_its_recorded_test_perplexity(ptb_dir: Path) -> None:
    recorded = _recorded("ptb-650")
    r = evaluate_split(WEIGHTS / "ptb-650", ptb_dir, "test", progress=False)
    assert r["tokens"] == 82429  # one stream: every token of test after the first
    assert abs(r["perplexity"] - recorded["test_perplexity"]) < 2e-3
    assert round(r["perplexity"], 2) == 76.49


def test_score_ids_is_the_mean_of_the_log_probabilities() -> None:
    rng = np.random.default_rng(0)
    config = ModelConfig(vocab_size=9, wordvec_size=4, hidden_size=4, num_layers=1, tied=True)
    params = {k: rng.normal(0, 0.5, s).astype(np.float32) for k, s in config.param_shapes().items()}
    model = InferenceModel.from_params(config, params)
    ids = rng.integers(0, 9, 800)
    one = score_ids(model, ids, "x", book_batching=False, progress=False)
    book = score_ids(model, ids, "x", book_batching=True, progress=False)
    assert one["tokens"] == 799 and book["tokens"] == (799 // 350) * 350
    assert np.isclose(one["perplexity"], np.exp(-one["log_prob"] / one["tokens"]))
    assert np.isclose(book["perplexity"], book_perplexity(model, ids), rtol=1e-6)
