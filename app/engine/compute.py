"""The compute thread's work for one tick: one scoring forward and one decode step, in numpy.

A Tick is what the scheduler planned; compute() returns a TickResult and touches nothing but
the tick's own rows and streams (their prompt rows, generators and histories), so the event
loop may plan and deliver around it.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import cast

import numpy as np

from app.engine.jobs import Row, Stream, row_view
from model.functions import log_softmax
from model.inference import InferenceModel, LSTMState, score, step
from model.sampling import choose_next, stop_reason


@dataclass
class Pick:
    """What a decode step chose for one generation."""

    token: int
    logprob: float
    top: tuple[tuple[int, float], ...]
    reason: str | None


@dataclass
class Tick:
    """The work of one tick: rows to feed (with chunk lengths) and streams to step."""

    feed: list[tuple[Row, int]]
    decode: list[Stream]


@dataclass
class TickResult:
    """The compute thread's answer to a tick."""

    feed_logprobs: list[np.ndarray] = field(default_factory=list)
    feed_state: LSTMState | None = None
    decode_logp: np.ndarray | None = None  # (N, V)
    decode_state: LSTMState | None = None
    picks: list[Pick | None] = field(default_factory=list)  # None: no token (next-word, prefill)
    prompts_read: list[Row] = field(default_factory=list)  # in-batch prefills done, to cache
    prefilled: int = 0  # prompt tokens read in the decode batch
    seconds: float = 0.0


@dataclass(frozen=True, eq=False)
class Computer:
    """The read-only things a tick's numpy work needs: the model, the zero state, two ids."""

    model: InferenceModel
    zero: LSTMState  # (L, 1, H) read-only
    eos_id: int
    unk_id: int

    def compute(self, tick: Tick) -> TickResult:
        """The tick's numpy work: one scoring forward, one decode step."""
        t0 = time.perf_counter()
        res = TickResult()
        if tick.feed:
            inputs = [row.ids[row.pos : row.pos + c] for row, c in tick.feed]
            targets = [row.ids[row.pos + 1 : row.pos + c + 1] for row, c in tick.feed]
            state = LSTMState.stack([row.state or self.zero for row, _ in tick.feed])
            # id arrays act as sequences of ints here (score pads them with one slice copy)
            res.feed_logprobs, res.feed_state = score(
                self.model,
                cast("Sequence[Sequence[int]]", inputs),
                cast("Sequence[Sequence[int]]", targets),
                state,
            )
        if tick.decode:
            self._decode(tick, res)
        res.seconds = time.perf_counter() - t0
        return res

    def _decode(self, tick: Tick, res: TickResult) -> None:
        """One batched decode step; each generation picks its token or reads its prompt's next."""
        streams = tick.decode
        ids = np.array([s.next_input for s in streams], dtype=np.int64)
        state = LSTMState.stack([s.state or self.zero for s in streams])
        logits, res.decode_state = step(self.model, ids, state)
        res.decode_logp = log_softmax(logits, axis=1)  # (N, V)
        res.picks = [None] * len(streams)
        for i, s in enumerate(streams):
            if s.kind != "generate":
                continue
            if s.in_batch_prefill:
                self._read_prompt_token(s, res.decode_logp[i], res.decode_state, i, res)
            else:
                res.picks[i] = self._pick(s, res.decode_logp[i])

    def _read_prompt_token(
        self, s: Stream, logp: np.ndarray, state: LSTMState, r: int, res: TickResult
    ) -> None:
        """An in-batch prefill step: keep the log-prob of the prompt's next token, the id it
        feeds next; at the prompt's end the stream turns ready."""
        row = s.row
        assert row is not None
        token = int(row.ids[row.pos + 1])
        row.pieces.append(logp[token : token + 1].copy())
        row.pos += 1
        res.prefilled += 1
        if row.remaining == 0:  # the state is the one after ids[:-1], as a fed row leaves it
            row.state = row_view(state, r)
            s.prefill = row.logprobs()
            s.in_batch_prefill, s.ready, s.row = False, True, None
            res.prompts_read.append(row)
        s.next_input = token

    def _pick(self, s: Stream, logp: np.ndarray) -> Pick:
        """Choose a generation's next token with its own parameters, generator and history."""
        req = s.request
        assert req is not None
        token = choose_next(logp, req.sampling, s.rng, s.history, self.unk_id)
        s.history.append(token)
        s.generated.append(token)
        reason = stop_reason(s.generated, req.max_new_tokens,
                             self.eos_id if req.stop_at_eos else None, req.stop_sequences)
        return Pick(token, float(logp[token]), top_logprobs(logp, req.top_n_tokens), reason)


def top_logprobs(logp: np.ndarray, n: int) -> tuple[tuple[int, float], ...]:
    """The n largest entries of a log-distribution as (id, logprob), best first."""
    if n <= 0:
        return ()
    n = min(n, logp.shape[0])
    idx = np.argpartition(-logp, n - 1)[:n]
    idx = idx[np.argsort(-logp[idx], kind="stable")]
    return tuple((int(i), float(logp[i])) for i in idx)
