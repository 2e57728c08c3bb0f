"""Perplexity of a model on a corpus (docs/design.md, scoring conventions): the trainer's
validation, ``rnnlm evaluate`` and the four metrics a weights directory records."""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from model.corpus import load_split, resolve_data_dir
from model.inference import InferenceModel, corpus_logprobs
from model.weights import LoadedWeights, load_weights

# The book's eval_perplexity reads 10 rows of 35: it scores ((L - 1) // 350) * 350 targets.
BOOK_ROWS, BOOK_BPTT = 10, 35


def book_perplexity(model: InferenceModel, ids: np.ndarray) -> float:
    """Perplexity with the book's eval_perplexity batching (the trainer's validation)."""
    lp = corpus_logprobs(model, ids, book_batching=True)
    return float(np.exp(-lp.astype(np.float64).mean()))


def score_ids(
    model: InferenceModel, ids: np.ndarray, split: str, book_batching: bool, progress: bool
) -> dict[str, Any]:
    """Perplexity, log-probability and token count of a corpus's ids, with a progress bar."""
    from tqdm import tqdm

    L = len(ids)
    total = ((L - 1) // (BOOK_ROWS * BOOK_BPTT)) * BOOK_ROWS * BOOK_BPTT if book_batching else L - 1
    t0 = time.perf_counter()
    bar: Any
    with tqdm(total=total, desc=f"{split}", unit="tok", disable=not progress,
              file=sys.stderr, dynamic_ncols=True) as bar:
        lp = corpus_logprobs(model, ids, book_batching=book_batching, on_progress=bar.update)
    seconds = time.perf_counter() - t0
    log_prob = float(lp.astype(np.float64).sum())
    n = int(lp.size)
    return {
        "split": split,
        "book_batching": book_batching,
        "perplexity": math.exp(-log_prob / n),
        "log_prob": log_prob,
        "tokens": n,
        "seconds": seconds,
        "tokens_per_second": n / seconds if seconds > 0 else None,
    }


def _load(weights_dir: str | Path, data_dir: str | Path | None
          ) -> tuple[LoadedWeights, InferenceModel, Path]:
    """The weights (checked once), the model built from them and the data folder."""
    w = load_weights(weights_dir)
    return w, InferenceModel.from_params(w.config, w.params), resolve_data_dir(data_dir)


def evaluate_split(
    weights_dir: str | Path,
    data_dir: str | Path | None,
    split: str = "test",
    book_batching: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Perplexity of a weights directory on a PTB split."""
    w, model, data = _load(weights_dir, data_dir)
    ids = load_split(data, split, w.vocab)
    return {"weights": str(weights_dir), **score_ids(model, ids, split, book_batching, progress)}


def all_metrics(
    weights_dir: str | Path, data_dir: str | Path | None, progress: bool = True
) -> dict[str, float]:
    """The four metrics of config.json (weights and each split read once)."""
    w, model, data = _load(weights_dir, data_dir)
    out: dict[str, float] = {}
    for split in ("valid", "test"):
        ids = load_split(data, split, w.vocab)
        for book, suffix in ((False, ""), (True, "_book")):
            r = score_ids(model, ids, split, book, progress)
            out[f"{split}_perplexity{suffix}"] = round(r["perplexity"], 4)
    return out
