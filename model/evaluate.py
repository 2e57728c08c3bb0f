"""Perplexity of a model on a corpus (docs/design.md, scoring conventions): the trainer's
validation, ``rnnlm evaluate`` (PTB splits and any text file, one stream or line by line)
and the four metrics a weights directory records."""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from model.corpus import load_split, resolve_data_dir
from model.inference import InferenceModel, corpus_logprobs
from model.normalize import Tokenizer
from model.prefixes import score_prefixes
from model.textfile import encode_file, lines_of
from model.vocab import Vocab
from model.weights import LoadedWeights, load_weights

# Lines scored together by --per-line (through the tree of their prefixes, as rnnlm score does).
PER_LINE_WINDOW = 1024

# The book's eval_perplexity reads 10 rows of 35: it scores ((L - 1) // 350) * 350 targets.
BOOK_ROWS, BOOK_BPTT = 10, 35


def book_perplexity(model: InferenceModel, ids: np.ndarray) -> float:
    """The trainer's validation: the book's eval_perplexity batching, or one stream for a
    text shorter than its 10 x 35."""
    book = len(ids) - 1 >= BOOK_ROWS * BOOK_BPTT
    lp = corpus_logprobs(model, ids, book_batching=book)
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
    return split_metrics(model, {s: load_split(data, s, w.vocab) for s in ("valid", "test")},
                         progress)


def split_metrics(model: InferenceModel, splits: dict[str, np.ndarray], progress: bool = True
                  ) -> dict[str, float]:
    """<split>_perplexity (one stream) and <split>_perplexity_book of each split's ids; the
    book figure is left out for a text shorter than its 10 x 35."""
    out: dict[str, float] = {}
    for split, ids in splits.items():
        for book, suffix in ((False, ""), (True, "_book")):
            if book and len(ids) - 1 < BOOK_ROWS * BOOK_BPTT:
                continue
            r = score_ids(model, ids, split, book, progress)
            out[f"{split}_perplexity{suffix}"] = round(r["perplexity"], 4)
    return out


def text_logprobs(model: InferenceModel, texts: list[list[int]], eos_id: int, eos: bool = True
                  ) -> list[np.ndarray]:
    """Each text's ids scored as the API scores a text: from a zero state fed <eos>, every
    token predicted, and the closing <eos> unless eos is False (an empty text with it off
    gives no log-probability)."""
    return score_prefixes(model, [[eos_id, *t, eos_id] if eos else [eos_id, *t] for t in texts])


def evaluate_file(
    weights_dir: str | Path, path: Path, book_batching: bool = False, per_line: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Perplexity of a weights directory on a text file, normalised as the weights say: one
    stream of its lines (each line with tokens, then <eos>), or every line as a text."""
    w = load_weights(weights_dir)
    model = InferenceModel.from_params(w.config, w.params)
    t0 = time.perf_counter()
    if not per_line:
        ids = encode_file(path, w.vocab, w.normalizer, what="evaluation", progress=progress)
        r = score_ids(model, ids, path.name, book_batching, progress)
        return {"weights": str(weights_dir), "file": str(path), "per_line": False, **r}
    tokenizer = Tokenizer(w.vocab, w.normalizer)
    log_prob, n, lines = 0.0, 0, 0
    batch: list[list[int]] = []

    def flush() -> None:
        nonlocal log_prob, n
        for lp in text_logprobs(model, batch, w.vocab.eos_id):
            log_prob += float(lp.astype(np.float64).sum())
            n += lp.size
        batch.clear()

    for line in lines_of(path, "evaluation"):
        ids_line = tokenizer(line).ids
        if ids_line:
            batch.append(ids_line)
            lines += 1
            if len(batch) >= PER_LINE_WINDOW:
                flush()
    flush()
    if n == 0:
        raise ValueError(f"{path}: no line has tokens after normalisation ({w.normalizer.name})")
    seconds = time.perf_counter() - t0
    return {
        "weights": str(weights_dir), "file": str(path), "per_line": True, "lines": lines,
        "book_batching": False, "perplexity": math.exp(-log_prob / n), "log_prob": log_prob,
        "tokens": n, "seconds": seconds, "tokens_per_second": n / seconds if seconds else None,
    }


LN10 = math.log(10.0)


def text_result(seq: list[int], lp: np.ndarray, unk_id: int) -> dict[str, Any]:
    """A scored text's numbers as /perplexity and rnnlm score give them (docs/design.md):
    seq is [<eos>, tokens..., <eos>?], lp the log-probabilities of seq[1:]."""
    lp64 = lp.astype(np.float64)
    is_oov = np.asarray(seq[1:], dtype=np.int64) == unk_id
    log_prob = float(lp64.sum())
    n = int(lp64.size)
    n_oov = int(is_oov.sum())
    n_in = n - n_oov
    return {
        "perplexity": math.exp(-log_prob / n) if n else None,
        "log_prob": log_prob,
        "log10_prob": log_prob / LN10,
        "num_tokens": n,
        "num_oov": n_oov,
        "perplexity_excl_oov": math.exp(-float(lp64[~is_oov].sum()) / n_in) if n_in else None,
    }


def token_entries(seq: list[int], lp: np.ndarray, vocab: Vocab) -> list[dict[str, Any]]:
    """Each predicted token of a scored text as /perplexity's return_tokens lists it."""
    unk = vocab.unk_id
    return [
        {"token": w, "id": int(i), "logprob": float(v), "oov": i == unk}
        for w, i, v in zip(vocab.decode(seq[1:]), seq[1:], lp.astype(np.float64), strict=True)
    ]
