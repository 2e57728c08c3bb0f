"""The engine's queue entries: an admitted request (Job), a text fed through the scoring
forward (Row), a scoring request (ScoreJob) and a generation or next-word request (Stream).

Per-request state (the recurrent state of a stream, its generator, history, output queue)
lives in these objects, never on the shared engine.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from app.engine.request import EngineStep, GenerationRequest
from model.rnnlm import LSTMState

# Undelivered tokens a stream may hold before it skips steps: a consumer that stops reading
# (a stalled or departed client) stops its generation within this many tokens.
STREAM_BUFFER = 2


def row_view(state: LSTMState, i: int) -> LSTMState:
    """Stream i of a batch state as (L, 1, H) views (batch states are never written after)."""
    return LSTMState(state.h[:, i : i + 1], state.c[:, i : i + 1])


@dataclass(eq=False)
class Job:
    """One admitted request."""

    kind: str  # "score" | "next_word" | "generate"
    admitted: float = field(default_factory=time.perf_counter)
    started: bool = False
    cancelled: bool = False


@dataclass(eq=False)
class Row:
    """One text fed through the scoring forward: ids s_0..s_{n-1}, predicting s_1..s_{n-1}."""

    ids: np.ndarray  # (n,) int32
    owner: Job
    index: int = 0
    pos: int = 0  # inputs fed so far: state is the state after ids[:pos]
    state: LSTMState | None = None  # None: the zero state
    pieces: list[np.ndarray] = field(default_factory=list)  # log-probs of ids[1 : pos + 1]
    looked_up: bool = False

    @property
    def remaining(self) -> int:
        """Inputs still to feed (every id but the last is an input)."""
        return len(self.ids) - 1 - self.pos

    def logprobs(self) -> np.ndarray:
        """log P(ids[j] | ids[:j]) for j = 1.. (all of them once remaining is 0)."""
        if not self.pieces:
            return np.empty(0, np.float32)
        return self.pieces[0] if len(self.pieces) == 1 else np.concatenate(self.pieces)


@dataclass(eq=False)
class ScoreJob(Job):
    """Texts to score; done when every row is."""

    rows: list[Row] = field(default_factory=list)
    results: list[np.ndarray | None] = field(default_factory=list)
    left: int = 0
    future: asyncio.Future[list[np.ndarray]] | None = None


@dataclass(eq=False)
class Stream(Job):
    """A generation (or a next-word request: one step, no token): holds a batch slot while running.

    The prompt is read by its row (all ids but the last), then each decode step feeds
    ``next_input`` from ``state`` and picks the next token. A short prompt may instead be
    *prefilled in the decode batch* (``in_batch_prefill``): one prompt token a decode step,
    its log-probability read off that step's output. Only the compute thread touches rng,
    history and generated while the stream runs; the event loop reads them after.
    """

    prompt: np.ndarray = field(default_factory=lambda: np.empty(0, np.int32))
    row: Row | None = None
    state: LSTMState | None = None
    next_input: int = 0
    ready: bool = False  # the prompt is read: it steps
    in_batch_prefill: bool = False  # its prompt is read in the decode batch, a token a step
    # generation only
    request: GenerationRequest | None = None
    rng: np.random.Generator | None = None
    history: list[int] = field(default_factory=list)
    generated: list[int] = field(default_factory=list)
    gen_logprobs: list[float] = field(default_factory=list)
    prefill: np.ndarray | None = None
    # Streamed generations get each step through ``out``; the others collect their steps in
    # ``collected`` and get them all through ``future`` at the end (one wake-up a request).
    out: asyncio.Queue[EngineStep | BaseException] | None = None
    collected: list[EngineStep] = field(default_factory=list)
    first_token_at: float = 0.0
    finished: bool = False
    # next-word (the (V,) log-distribution) and collected generations (their steps)
    future: asyncio.Future[Any] | None = None

    @classmethod
    def for_generation(cls, req: GenerationRequest) -> Stream:
        """A generation's stream, not yet admitted."""
        return cls(
            "generate",
            prompt=np.asarray(req.prompt_ids, np.int32),
            request=req,
            rng=np.random.default_rng(req.seed) if req.sampling.do_sample else None,
            history=list(req.prompt_ids),
        )
