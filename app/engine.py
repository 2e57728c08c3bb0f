"""The engine: the one read-only model behind the routes, run off the event loop.

Routes make one call each: ``score``, ``next_word`` or ``generate``. This version runs the
pure functions of ``model.inference`` in worker threads (numpy releases the GIL in its
kernels), a generation one token per thread call, so the event loop never waits on the CPU
and a client that stops reading stops the generation. The engine holds no request state:
the recurrent state, the random generator and the history live in each call's frame.
A batching engine can replace the internals behind the same methods.
"""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, ParamSpec, TypeVar

import anyio
import anyio.to_thread
import numpy as np

from model.checkpoint import LoadedWeights
from model.functions import logsumexp
from model.inference import (
    GenerationStep,
    InferenceModel,
    LSTMState,
    SamplingParams,
    choose_next,
    next_logprobs,
    score,
    step,
)
from model.vocab import Vocab

logger = logging.getLogger(__name__)

P = ParamSpec("P")
R = TypeVar("R")

# Padded positions (rows x longest row) scored in one batch: bounds the (T, N, 4H) activations
# of a request whose texts differ widely in length; typical requests fit in one batch.
PAD_BUDGET = 16_384


class OverloadedError(Exception):
    """More requests are admitted than the queue holds."""


@dataclass(frozen=True, eq=False)
class EngineStep(GenerationStep):
    """A generated token, with the extras a route may ask for."""

    # The top_n most likely (id, logprob) pairs of this step's distribution, best first.
    top_tokens: tuple[tuple[int, float], ...] = ()
    # On the first step only, when asked: log P of prompt tokens 1.. given those before.
    prefill_logprobs: np.ndarray | None = None


def _groups(lengths: Sequence[int], budget: int) -> list[list[int]]:
    """Indices grouped by length so each group's rows x longest row stays within budget."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    groups: list[list[int]] = []
    current: list[int] = []
    for i in order:
        # lengths ascend, so lengths[i] is the longest row of current + [i]
        if current and (len(current) + 1) * lengths[i] > budget:
            groups.append(current)
            current = []
        current.append(i)
    if current:
        groups.append(current)
    return groups


def _top(logp: np.ndarray, n: int) -> tuple[tuple[int, float], ...]:
    """The n largest entries of a log-distribution as (id, logprob), best first."""
    if n <= 0:
        return ()
    n = min(n, logp.shape[0])
    idx = np.argpartition(-logp, n - 1)[:n]
    idx = idx[np.argsort(-logp[idx], kind="stable")]
    return tuple((int(i), float(logp[i])) for i in idx)


class Engine:
    """The served model and vocabulary; async methods that run the math in worker threads."""

    def __init__(
        self,
        weights: LoadedWeights,
        queue_size: int = 256,
        threads: int | None = None,
    ) -> None:
        self.weights = weights
        self.vocab: Vocab = weights.vocab
        self.model = InferenceModel.from_params(weights.config, weights.params)
        self.queue_size = queue_size
        # A pool of its own, sized to the cores: more threads would only contend for them.
        self.threads = threads or max(2, min(8, os.cpu_count() or 2))
        self._limiter = anyio.CapacityLimiter(self.threads)
        # Aggregate counters only (never per-request state); updated on the event loop.
        self._in_flight = 0
        self._served = 0
        self._tokens_scored = 0
        self._tokens_generated = 0
        self._idle = anyio.Event()
        self._idle.set()

    # --- plumbing

    async def _run(self, fn: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
        """Run fn in the engine's worker threads."""
        if kwargs:
            return await anyio.to_thread.run_sync(
                lambda: fn(*args, **kwargs), limiter=self._limiter
            )
        return await anyio.to_thread.run_sync(fn, *args, limiter=self._limiter)

    @asynccontextmanager
    async def _admit(self) -> AsyncIterator[None]:
        """Count a request in; refuse it when queue_size are already in."""
        if self._in_flight >= self.queue_size:
            raise OverloadedError(
                f"{self._in_flight} requests are in progress (queue_size {self.queue_size})"
            )
        self._in_flight += 1
        self._idle = anyio.Event() if self._in_flight == 1 else self._idle
        try:
            yield
        finally:
            self._in_flight -= 1
            self._served += 1
            if self._in_flight == 0:
                self._idle.set()

    @property
    def in_flight(self) -> int:
        """Requests inside the engine now."""
        return self._in_flight

    async def wait_idle(self, timeout: float) -> bool:
        """Wait until no request is inside the engine, at most timeout seconds; True if idle."""
        with anyio.move_on_after(timeout):
            await self._idle.wait()
        return self._in_flight == 0

    # --- the calls routes make

    async def warmup(self) -> None:
        """One forward pass and one step, so the first request pays no first-call costs."""
        eos = self.vocab.eos_id

        def work() -> None:
            _, state = next_logprobs(self.model, [[eos, eos]])
            step(self.model, np.array([eos]), state)
            score(self.model, [[eos, eos]], [[eos, eos]])

        await self._run(work)

    async def score(self, texts: list[list[int]]) -> list[np.ndarray]:
        """Log-probabilities of positions 1.. of each full id sequence ([eos, tokens..., eos?])."""
        if any(len(t) < 2 for t in texts):
            raise ValueError("each sequence needs a start token and at least one target")
        async with self._admit():
            out = await self._run(self._score, texts)
        self._tokens_scored += sum(len(t) - 1 for t in texts)
        return out

    def _score(self, texts: list[list[int]]) -> list[np.ndarray]:
        """Score texts in length-sorted padded batches of at most PAD_BUDGET positions."""
        out: list[np.ndarray] = [np.empty(0, np.float32)] * len(texts)
        for group in _groups([len(t) - 1 for t in texts], PAD_BUDGET):
            inputs = [texts[i][:-1] for i in group]
            targets = [texts[i][1:] for i in group]
            lps, _ = score(self.model, inputs, targets)
            for i, lp in zip(group, lps, strict=True):
                out[i] = lp
        return out

    async def next_word(self, context_ids: list[int]) -> np.ndarray:
        """The (V,) next-token log-distribution after a non-empty context ([eos, tokens...])."""
        async with self._admit():
            logp, _ = await self._run(next_logprobs, self.model, [context_ids])
        return logp[0]

    async def generate(
        self,
        prompt_ids: list[int],
        max_new_tokens: int,
        params: SamplingParams,
        seed: int | None,
        stop_at_eos: bool = True,
        stop_sequences: Sequence[Sequence[int]] = (),
        *,
        top_n_tokens: int = 0,
        prefill_logprobs: bool = False,
    ) -> AsyncGenerator[EngineStep, None]:
        """Yield generated tokens after a non-empty prompt ([eos, tokens...]).

        The last step carries its finish_reason; a consumer that stops iterating (a client
        that went away) stops the generation at the next token.
        """
        if not prompt_ids:
            raise ValueError("the prompt needs at least one token (start with <eos>)")
        rng = np.random.default_rng(seed) if params.do_sample else None
        stops = [list(s) for s in stop_sequences if len(s)]
        history = list(prompt_ids)
        generated: list[int] = []
        async with self._admit():
            logp, state, prefill = await self._run(self._prefill, prompt_ids, prefill_logprobs)
            for n in range(max_new_tokens):
                token, lp, top, reason, logp, state = await self._run(
                    self._advance,
                    logp,
                    state,
                    params,
                    rng,
                    history,
                    generated,
                    stops,
                    stop_at_eos,
                    n == max_new_tokens - 1,
                    top_n_tokens,
                )
                self._tokens_generated += 1
                yield EngineStep(token, lp, reason, top, prefill if n == 0 else None)
                if reason is not None:
                    return

    def _prefill(
        self, prompt: list[int], with_logprobs: bool
    ) -> tuple[np.ndarray, LSTMState, np.ndarray | None]:
        """Read the prompt: the first next-token log-distribution, the state, prompt logprobs."""
        if not with_logprobs or len(prompt) == 1:
            logp, state = next_logprobs(self.model, [prompt])
            prefill = np.empty(0, np.float32) if with_logprobs else None
            return logp[0], state, prefill
        # Scoring all but the last token gives their logprobs and the state before the last.
        lps, state = score(self.model, [prompt[:-1]], [prompt[1:]])
        logits, state = step(self.model, np.array([prompt[-1]]), state)
        return logits[0] - logsumexp(logits[0]), state, lps[0]

    def _advance(
        self,
        logp: np.ndarray,
        state: LSTMState,
        params: SamplingParams,
        rng: np.random.Generator | None,
        history: list[int],
        generated: list[int],
        stops: list[list[int]],
        stop_at_eos: bool,
        last: bool,
        top_n: int,
    ) -> tuple[int, float, tuple[tuple[int, float], ...], str | None, np.ndarray, LSTMState]:
        """Choose one token; unless it ends the generation, step the model past it."""
        token = choose_next(logp, params, rng, history, self.vocab.unk_id)
        history.append(token)
        generated.append(token)
        reason: str | None = None
        if stop_at_eos and token == self.vocab.eos_id:
            reason = "eos_token"
        elif any(generated[-len(s) :] == s for s in stops):
            reason = "stop_sequence"
        elif last:
            reason = "length"
        lp, top = float(logp[token]), _top(logp, top_n)
        if reason is None:
            logits, state = step(self.model, np.array([token]), state)
            logp = logits[0] - logsumexp(logits[0])
        return token, lp, top, reason, logp, state

    def stats(self) -> dict[str, Any]:
        """Engine settings and counters for /info."""
        return {
            "kind": "threaded",
            "threads": self.threads,
            "queue_size": self.queue_size,
            "in_flight": self._in_flight,
            "requests_served": self._served,
            "tokens_scored": self._tokens_scored,
            "tokens_generated": self._tokens_generated,
        }
