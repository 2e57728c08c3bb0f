"""Choosing the next token and when to stop: SamplingParams, the sampler, the stopping rule.

Pure functions of their arguments: the history and the generator come in, nothing is kept.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np


@dataclass(frozen=True)
class SamplingParams:
    """How the next token is chosen; sampling only when ``do_sample``, else greedy."""

    do_sample: bool = True
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    typical_p: float | None = None
    repetition_penalty: float | None = None
    ban_unk: bool = True
    # (token id, bias) pairs added to the log-probabilities before choosing (OpenAI's
    # logit_bias): -100 all but bans a token, +100 all but forces it.
    logit_bias: tuple[tuple[int, float], ...] = ()

    def __post_init__(self) -> None:
        if not self.temperature > 0:
            raise ValueError("temperature must be > 0")
        if self.top_k is not None and self.top_k < 1:
            raise ValueError("top_k must be >= 1")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise ValueError("top_p must be in (0, 1]")
        if self.typical_p is not None and not 0 < self.typical_p <= 1:
            raise ValueError("typical_p must be in (0, 1]")
        if self.repetition_penalty is not None and not self.repetition_penalty > 0:
            raise ValueError("repetition_penalty must be > 0")
        if any(i < 0 or not np.isfinite(b) for i, b in self.logit_bias):
            raise ValueError("logit_bias needs token ids >= 0 and finite biases")


_MAX = float(np.finfo(np.float64).max)


def _nucleus(probs: np.ndarray, order: np.ndarray, p: float) -> np.ndarray:
    """The smallest prefix of ``order`` (descending probability) whose mass reaches p."""
    cum = np.cumsum(probs[order])
    n = int(np.searchsorted(cum, p * cum[-1], side="left")) + 1
    return order[: min(n, len(order))]


def choose_next(
    logits: np.ndarray,
    params: SamplingParams,
    rng: np.random.Generator | None,
    history: Sequence[int] = (),
    unk_id: int | None = None,
) -> int:
    """Pick the next token id from one row of logits (V,).

    Order: logit bias, ban <unk>, repetition penalty (CTRL, Keskar et al. 2019: a seen token's logit
    is divided by the penalty when positive, multiplied when negative), then when
    sampling: temperature, top-k, top-p (Holtzman et al. 2020), typical-p (Meister et
    al. 2022), and a draw from ``rng``. Greedy takes the argmax after the ban and penalty.
    """
    x = logits.astype(np.float64)  # a private copy; 10k doubles is cheap
    if params.logit_bias:
        ids, bias = zip(*params.logit_bias, strict=True)
        np.add.at(x, np.asarray(ids, dtype=np.int64), np.asarray(bias, dtype=np.float64))
    if params.ban_unk and unk_id is not None:
        x[unk_id] = -np.inf
    rp = params.repetition_penalty
    if rp is not None and rp != 1.0 and len(history):
        seen = np.unique(np.asarray(history, dtype=np.int64))
        v = x[seen]
        with np.errstate(over="ignore"):  # an extreme penalty saturates, never reaches inf
            x[seen] = np.clip(np.where(v > 0, v / rp, v * rp), -_MAX, _MAX)
    if not params.do_sample:
        return int(np.argmax(x))
    if rng is None:
        raise ValueError("sampling needs a np.random.Generator")
    # Shift first: the best token stays at 0 whatever the temperature, so a tiny one sends
    # the others to -inf instead of sending every finite logit to +-inf.
    with np.errstate(over="ignore"):
        x = (x - x.max()) / params.temperature
    if params.top_k is not None and params.top_k < len(x):
        cand = np.argpartition(-x, params.top_k - 1)[: params.top_k]
    else:
        cand = np.arange(len(x))
    cand = cand[np.isfinite(x[cand])]
    z = x[cand]
    probs = np.exp(z - z.max())
    probs /= probs.sum()
    if (params.top_p is not None and params.top_p < 1.0) or (
        params.typical_p is not None and params.typical_p < 1.0
    ):
        order = np.argsort(-probs, kind="stable")
        if params.top_p is not None and params.top_p < 1.0:
            order = _nucleus(probs, order, params.top_p)
        if params.typical_p is not None and params.typical_p < 1.0:
            # Typical sampling: keep the tokens whose surprisal is closest to the entropy.
            q = probs[order] / probs[order].sum()
            with np.errstate(divide="ignore"):
                logq = np.log(q)
            entropy = -np.sum(q * np.where(q > 0, logq, 0.0))
            by_typ = order[np.argsort(np.abs(-logq - entropy), kind="stable")]
            order = _nucleus(probs, by_typ, params.typical_p)
        cand, probs = cand[order], probs[order]
        probs = probs / probs.sum()
    cum = np.cumsum(probs)
    u = rng.random() * cum[-1]
    return int(cand[min(int(np.searchsorted(cum, u, side="right")), len(cand) - 1)])


@dataclass(frozen=True)
class GenerationStep:
    """One generated token: its id and natural-log probability under the model."""

    id: int
    logprob: float
    # Set on the last token: "eos_token", "stop_sequence" or "length".
    finish_reason: str | None = None


FinishReason = Literal["eos_token", "stop_sequence", "length"]


def stop_reason(
    generated: Sequence[int], max_new_tokens: int, eos_id: int | None,
    stops: Sequence[Sequence[int]],
) -> FinishReason | None:
    """Why generation ends after its last token, or None: eos, then a stop sequence, then length.

    eos_id None: <eos> does not stop it. stops: non-empty token lists the output may end with.
    """
    if eos_id is not None and generated and generated[-1] == eos_id:
        return "eos_token"
    if matched_stop(generated, stops) is not None:
        return "stop_sequence"
    if len(generated) >= max_new_tokens:
        return "length"
    return None


def matched_stop(generated: Sequence[int], stops: Sequence[Sequence[int]]) -> int | None:
    """The index of the first stop sequence the output ends with, or None."""
    for k, x in enumerate(stops):
        if len(x) and len(generated) >= len(x) and list(generated[-len(x) :]) == list(x):
            return k
    return None


def stop_prefix_length(generated: Sequence[int], stops: Sequence[Sequence[int]]) -> int:
    """How many of the last tokens could be the start of a stop sequence: the longest suffix
    of the output that is a proper prefix of one. A stream that leaves stop sequences out
    holds these tokens back until the next tokens decide."""
    best = 0
    for x in stops:
        for n in range(min(len(x) - 1, len(generated)), best, -1):
            if list(generated[-n:]) == list(x[:n]):
                best = n
                break
    return best
