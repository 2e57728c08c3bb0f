"""The engine: one worker that batches every client's numpy work, as TGI and vLLM do for GPUs.

Routes make one call each: ``score``, ``next_word`` or ``generate``. The engine admits a
request (OverloadedError when queue_size are already in, DrainingError while shutting down)
and queues its work; one asyncio task groups the queued work of all clients into *ticks* and
hands each tick to one dedicated compute thread (numpy releases the GIL inside BLAS, and one
compute thread does not oversubscribe the cores); a decode tick of one or two streams of a
model no bigger than 2x650 runs on the event loop itself, as the hand-off would cost more than
the wait. A tick is at most:

- one scoring forward: texts to score and prompts and contexts to read, from any requests,
  padded into one ``model.inference.score`` call of at most max_batch_size rows and
  max_batch_tokens positions; a longer text is fed in chunks over several ticks (its state
  carries over), so running generations keep stepping in between;
- one decode step (continuous batching): every running generation, and every next-word request
  whose context is read, advances one token in one batched ``step`` and one output projection;
  then each row picks its token with its own SamplingParams, np.random.Generator, history and
  stop sequences. New generations join at the next tick, finished ones leave at once, and one
  whose consumer went away leaves at the next tick. A short prompt (at most RIDE_TOKENS
  to read) joining while others decode rides in the decode batch: one of its tokens a
  step, its log-probs read off the step's output, so no separate forward is run for it
  and the batch is never held up by a forward of prompts.

Prefix-state cache: an LSTM's state is a few kilobytes whatever the context, so the engine
keeps an LRU, bounded in bytes, of read-only copies of states and log-probs keyed by token ids;
a request whose ids extend a cached key runs only the new tokens. It is the one structure that
requests share; nothing in it is modified in place. Per-request state (the recurrent state of
a stream, its generator, history, output queue) lives in that request's own objects.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import logging
import time
from collections import Counter, OrderedDict, deque
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np

from app.metrics import EngineMetrics
from model.blas import transposed_decode_is_faster
from model.checkpoint import LoadedWeights
from model.functions import log_softmax
from model.inference import (
    GenerationStep,
    InferenceModel,
    LSTMState,
    SamplingParams,
    choose_next,
    score,
    step,
)
from model.vocab import Vocab

logger = logging.getLogger(__name__)

# Undelivered tokens a stream may hold before it skips steps: a consumer that stops reading
# (a stalled or departed client) stops its generation within this many tokens.
STREAM_BUFFER = 2
# Prompt tokens still to read, at most, for a prompt to ride in a running decode batch (one
# token a step) rather than be read by a scoring forward of its own.
RIDE_TOKENS = 16
# Bookkeeping bytes counted per cache entry besides its arrays (dict slot, objects).
ENTRY_OVERHEAD = 256
# A decode tick of at most INLINE_ROWS streams, with no scoring forward, runs on the event loop
# itself when the weights a step reads are at most INLINE_MAX_BYTES (about a millisecond of
# memory traffic): the hand-off to the compute thread and back cost about 50 us a step, 20 %
# of a ptb-small token and 5 % of a ptb-650 one, and blocking the loop that long is harmless.
INLINE_ROWS = 2
INLINE_MAX_BYTES = 64 * 1024 * 1024


class OverloadedError(Exception):
    """More requests are admitted than the queue holds (answered 429)."""


class DrainingError(Exception):
    """The server is shutting down and takes no new work (answered 503)."""


class RequestTimeoutError(TimeoutError):
    """A request took longer than request_timeout_s, its queue time included (answered 504)."""


class EngineClosedError(RuntimeError):
    """The engine stopped while the request was queued or running."""


@dataclass(frozen=True, eq=False)
class EngineStep(GenerationStep):
    """A generated token, with the extras a route may ask for."""

    # The top_n most likely (id, logprob) pairs of this step's distribution, best first.
    top_tokens: tuple[tuple[int, float], ...] = ()
    # On the first step only, when asked: log P of prompt tokens 1.. given those before.
    prefill_logprobs: np.ndarray | None = None


def _top(logp: np.ndarray, n: int) -> tuple[tuple[int, float], ...]:
    """The n largest entries of a log-distribution as (id, logprob), best first."""
    if n <= 0:
        return ()
    n = min(n, logp.shape[0])
    idx = np.argpartition(-logp, n - 1)[:n]
    idx = idx[np.argsort(-logp[idx], kind="stable")]
    return tuple((int(i), float(logp[i])) for i in idx)


def _frozen(a: np.ndarray) -> np.ndarray:
    """A read-only copy."""
    out = np.array(a, copy=True)
    out.flags.writeable = False
    return out


def _row_view(state: LSTMState, i: int) -> LSTMState:
    """Stream i of a batch state as (L, 1, H) views (batch states are never written after)."""
    return LSTMState(state.h[:, i : i + 1], state.c[:, i : i + 1])


# --------------------------------------------------------------------------- prefix cache


@dataclass(frozen=True, eq=False)
class CacheEntry:
    """A cached prefix: ids s_0..s_{k-1}, the state after s_0..s_{k-2}, log P(s_j | s_<j), j >= 1.

    The state is the one *before* the key's last token, so a text extending the key feeds
    s_{k-1} onwards: exactly the new tokens' count, and every log-prob comes out of one
    scoring forward.
    """

    key: bytes  # the ids as int32 bytes
    state: LSTMState  # (L, 1, H) read-only
    logprobs: np.ndarray  # (length - 1,) read-only
    nbytes: int

    @property
    def length(self) -> int:
        """k, the number of ids in the key."""
        return len(self.key) // 4


# Multiplier of the polynomial prefix hash (odd, so its powers never vanish mod 2**64).
_HASH_BASE = np.uint64(0x9E3779B97F4A7C15)


class PrefixCache:
    """LRU of prefix states bounded in bytes, keyed by token ids; used from the event loop only.

    Entries are found by (length, polynomial hash of the ids): one vectorised pass hashes
    every prefix of a text, so a lookup costs a dict probe per distinct cached key length
    (and one byte comparison on a hit), however long the keys are.
    """

    def __init__(self, capacity_bytes: int) -> None:
        self.capacity_bytes = max(0, int(capacity_bytes))
        self._entries: OrderedDict[tuple[int, int], CacheEntry] = OrderedDict()
        self._lengths: list[int] = []  # distinct key lengths, ascending
        self._length_count: Counter[int] = Counter()
        self._powers = np.ones(1, np.uint64)
        self.nbytes = 0
        self.hits = 0
        self.misses = 0
        self.tokens_saved = 0
        self.evictions = 0

    def __len__(self) -> int:
        return len(self._entries)

    def _prefix_hashes(self, ids: np.ndarray, n: int) -> np.ndarray:
        """h[k-1] = sum_{i<k} (ids[i] + 1) * BASE**i mod 2**64, for k = 1..n."""
        if len(self._powers) < n:
            size = max(n, 2 * len(self._powers))
            steps = np.full(size, _HASH_BASE, np.uint64)
            steps[0] = 1
            self._powers = np.cumprod(steps, dtype=np.uint64)  # wraps mod 2**64, as meant
        terms = (ids[:n].astype(np.uint64) + np.uint64(1)) * self._powers[:n]
        return np.cumsum(terms, dtype=np.uint64)

    def lookup(self, ids: np.ndarray, max_length: int) -> CacheEntry | None:
        """The longest entry whose key is ids[:k] for some 2 <= k <= max_length (counted)."""
        found: CacheEntry | None = None
        top = bisect.bisect_right(self._lengths, max_length)
        if self.capacity_bytes and top:
            hashes = self._prefix_hashes(ids, self._lengths[top - 1])
            for k in reversed(self._lengths[:top]):
                if k < 2:
                    break
                slot = (k, int(hashes[k - 1]))
                entry = self._entries.get(slot)
                if entry is not None and entry.key == ids[:k].tobytes():
                    self._entries.move_to_end(slot)
                    found = entry
                    break
        if found is None:
            self.misses += 1
        else:
            self.hits += 1
            self.tokens_saved += found.length - 1
        return found

    def insert(self, ids: np.ndarray, state: LSTMState, logprobs: np.ndarray) -> None:
        """Keep read-only copies of a prefix's state and log-probs; evict the least recent."""
        k = len(ids)
        if not self.capacity_bytes or k < 2:
            return
        key = np.asarray(ids, np.int32).tobytes()
        slot = (k, int(self._prefix_hashes(ids, k)[-1]))
        old = self._entries.get(slot)
        if old is not None:
            if old.key == key:
                self._entries.move_to_end(slot)
                return
            self._remove(slot)  # a hash collision: the newer text wins the slot
        nbytes = state.nbytes + logprobs.nbytes + len(key) + ENTRY_OVERHEAD
        if nbytes > self.capacity_bytes:
            return
        while self.nbytes + nbytes > self.capacity_bytes:
            self._remove(next(iter(self._entries)))
            self.evictions += 1
        st = LSTMState(_frozen(state.h), _frozen(state.c))
        self._entries[slot] = CacheEntry(key, st, _frozen(logprobs.astype(np.float32)), nbytes)
        self.nbytes += nbytes
        if self._length_count[k] == 0:
            bisect.insort(self._lengths, k)
        self._length_count[k] += 1

    def _remove(self, slot: tuple[int, int]) -> None:
        """Drop one entry."""
        entry = self._entries.pop(slot)
        self.nbytes -= entry.nbytes
        k = entry.length
        self._length_count[k] -= 1
        if self._length_count[k] == 0:
            del self._length_count[k]
            self._lengths.pop(bisect.bisect_left(self._lengths, k))

    def entries(self) -> list[CacheEntry]:
        """The entries, least recently used first (read-only objects)."""
        return list(self._entries.values())

    def stats(self) -> dict[str, Any]:
        """Counters for /info."""
        return {
            "entries": len(self._entries),
            "bytes": self.nbytes,
            "capacity_bytes": self.capacity_bytes,
            "hits": self.hits,
            "misses": self.misses,
            "tokens_saved": self.tokens_saved,
            "evictions": self.evictions,
        }


# --------------------------------------------------------------------------- queued work


@dataclass(eq=False)
class _Job:
    """One admitted request."""

    kind: str  # "score" | "next_word" | "generate"
    admitted: float = field(default_factory=time.perf_counter)
    started: bool = False
    cancelled: bool = False


@dataclass(eq=False)
class _Row:
    """One text fed through the scoring forward: ids s_0..s_{n-1}, predicting s_1..s_{n-1}."""

    ids: np.ndarray  # (n,) int32
    owner: _Job
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
class _ScoreJob(_Job):
    """Texts to score; done when every row is."""

    rows: list[_Row] = field(default_factory=list)
    results: list[np.ndarray | None] = field(default_factory=list)
    left: int = 0
    future: asyncio.Future[list[np.ndarray]] | None = None


@dataclass(eq=False)
class _Stream(_Job):
    """A generation (or a next-word request: one step, no token): holds a batch slot while running.

    The prompt is read by its row (all ids but the last), then each decode step feeds
    ``next_input`` from ``state`` and picks the next token. Only the compute thread touches
    rng, history and generated while the stream runs; the event loop reads them after.
    """

    prompt: np.ndarray = field(default_factory=lambda: np.empty(0, np.int32))
    row: _Row | None = None
    state: LSTMState | None = None
    next_input: int = 0
    ready: bool = False  # the prompt is read: it steps
    riding: bool = False  # its prompt is read in the decode batch, a token a step
    # generation only
    max_new_tokens: int = 0
    params: SamplingParams = field(default_factory=SamplingParams)
    rng: np.random.Generator | None = None
    stop_at_eos: bool = True
    stops: list[list[int]] = field(default_factory=list)
    top_n: int = 0
    want_prefill: bool = False
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


@dataclass
class _Pick:
    """What a decode step chose for one generation."""

    token: int
    logprob: float
    top: tuple[tuple[int, float], ...]
    reason: str | None


@dataclass
class _Tick:
    """The work of one tick: rows to feed (with chunk lengths) and streams to step."""

    feed: list[tuple[_Row, int]]
    decode: list[_Stream]


@dataclass
class _TickResult:
    """The compute thread's answer to a tick."""

    feed_logprobs: list[np.ndarray] = field(default_factory=list)
    feed_state: LSTMState | None = None
    decode_logp: np.ndarray | None = None  # (N, V)
    decode_state: LSTMState | None = None
    picks: list[_Pick | None] = field(default_factory=list)  # None: no token (next-word, riding)
    prompts_read: list[_Row] = field(default_factory=list)  # riding prompts read, to cache
    ridden: int = 0  # prompt tokens read in the decode batch
    seconds: float = 0.0


# --------------------------------------------------------------------------- the engine


class Engine:
    """The served model, its batching worker and its prefix-state cache."""

    def __init__(
        self,
        weights: LoadedWeights,
        queue_size: int = 256,
        *,
        max_batch_size: int = 32,
        max_batch_wait_ms: float = 2.0,
        max_batch_tokens: int = 1024,
        state_cache_mb: float = 64.0,
        request_timeout_s: float | None = None,
        metrics: EngineMetrics | None = None,
    ) -> None:
        self.weights = weights
        self.vocab: Vocab = weights.vocab
        self.model = InferenceModel.from_params(
            weights.config, weights.params, decode_transposed=transposed_decode_is_faster()
        )
        self.queue_size = queue_size
        self.max_batch_size = max(1, int(max_batch_size))
        self.max_batch_wait_s = max(0.0, float(max_batch_wait_ms)) / 1000.0
        self.max_batch_tokens = max(1, int(max_batch_tokens))
        self.request_timeout_s = request_timeout_s
        self.metrics = metrics if metrics is not None else EngineMetrics()
        self.cache = PrefixCache(int(state_cache_mb * 1024 * 1024))
        self._inline = self.model.step_nbytes <= INLINE_MAX_BYTES
        self._zero = self.model.zero_state(1)
        self._zero.h.flags.writeable = False
        self._zero.c.flags.writeable = False
        # Work waiting for the worker; only the event loop touches these.
        self._score_rows: deque[_Row] = deque()
        self._waiting: deque[_Stream] = deque()
        self._running: list[_Stream] = []
        self._unstarted: set[_ScoreJob] = set()  # scoring requests not fed yet (queue gauge)
        self._executor: ThreadPoolExecutor | None = None
        self._task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wakeup: asyncio.Event | None = None
        self._idle: asyncio.Event | None = None
        self._draining = False
        self._closed = False
        # Aggregate counters only (never per-request state); updated on the event loop.
        self._in_flight = 0
        self._served = 0
        self._tokens_scored = 0
        self._tokens_generated = 0
        self._batches: Counter[str] = Counter()
        self._largest: Counter[str] = Counter()
        self._largest_requests: Counter[str] = Counter()
        self._prompt_tokens_ridden = 0  # prompt tokens read in decode batches
        self._last_tick_requests = 1  # distinct requests in the last tick: the next one's aim

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Start the worker on the running event loop (idempotent; calls start it lazily too)."""
        loop = asyncio.get_running_loop()
        if self._task is not None and not self._task.done() and self._loop is loop:
            return
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rnnlm-engine")
        self._loop = loop
        self._wakeup = asyncio.Event()
        self._idle = asyncio.Event()
        if self._in_flight == 0:
            self._idle.set()
        self._closed = False
        self._task = loop.create_task(self._worker(), name="rnnlm-engine")

    async def aclose(self) -> None:
        """Stop the worker; requests still queued or running fail with EngineClosedError."""
        self._closed = True
        task, self._task = self._task, None
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        error = EngineClosedError("the engine stopped")
        for row in self._score_rows:
            self._fail(row.owner, error)
        for s in [*self._waiting, *self._running]:
            self._fail(s, error)
        self._score_rows.clear()
        self._waiting.clear()
        self._running.clear()
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None
        self._update_gauges()

    def drain(self) -> None:
        """Take no new work (DrainingError); what is admitted runs to its end."""
        self._draining = True

    @property
    def draining(self) -> bool:
        """True once drain() was called."""
        return self._draining

    @property
    def in_flight(self) -> int:
        """Requests inside the engine now (queued or running)."""
        return self._in_flight

    async def wait_idle(self, timeout: float) -> bool:
        """Wait until no request is inside the engine, at most timeout seconds; True if idle."""
        if self._in_flight == 0:
            return True
        if self._idle is None:
            return False
        try:
            async with asyncio.timeout(timeout):
                await self._idle.wait()
        except TimeoutError:
            pass
        return self._in_flight == 0

    async def _admit(self, kind: str) -> None:
        """Count a request in, or refuse it: draining (503) or queue full (429)."""
        if self._draining:
            self.metrics.rejected.labels("draining").inc()
            raise DrainingError("the server is shutting down and takes no new requests")
        if self._in_flight >= self.queue_size:
            self.metrics.rejected.labels("overloaded").inc()
            raise OverloadedError(
                f"{self._in_flight} requests are in progress (queue_size {self.queue_size})"
            )
        await self.start()
        self._in_flight += 1
        assert self._idle is not None
        self._idle.clear()
        self.metrics.in_flight.set(self._in_flight)

    def _release(self) -> None:
        """Count a request out."""
        self._in_flight -= 1
        self._served += 1
        self.metrics.in_flight.set(self._in_flight)
        if self._in_flight == 0 and self._idle is not None:
            self._idle.set()

    def _wake(self) -> None:
        if self._wakeup is not None:
            self._wakeup.set()

    async def _within_timeout(self, fut: asyncio.Future[Any], job: _Job) -> Any:
        """Await a job's future; past request_timeout_s, cancel the job (RequestTimeoutError)."""
        try:
            if self.request_timeout_s is None:
                return await fut
            async with asyncio.timeout(self.request_timeout_s):
                return await fut
        except TimeoutError as e:
            job.cancelled = True
            self.metrics.rejected.labels("timeout").inc()
            raise RequestTimeoutError(
                f"the request took longer than request_timeout_s ({self.request_timeout_s} s)"
            ) from e
        finally:
            if not fut.done():
                job.cancelled = True
                fut.cancel()

    # ------------------------------------------------------------------ the calls routes make

    async def warmup(self) -> None:
        """One scoring forward and one step at two batch sizes, in the compute thread."""
        await self.start()
        eos = self.vocab.eos_id

        def work() -> None:
            for n in (1, 2):
                _, st = score(self.model, [[eos, eos]] * n, [[eos, eos]] * n)
                logits, _ = step(self.model, np.full(n, eos), st)
                log_softmax(logits, axis=1)

        assert self._executor is not None
        await asyncio.get_running_loop().run_in_executor(self._executor, work)

    async def score(self, texts: list[list[int]]) -> list[np.ndarray]:
        """Log-probabilities of positions 1.. of each full id sequence ([eos, tokens..., eos?])."""
        if any(len(t) < 2 for t in texts):
            raise ValueError("each sequence needs a start token and at least one target")
        if not texts:
            return []
        job = _ScoreJob("score", future=asyncio.get_running_loop().create_future())
        job.rows = [_Row(np.asarray(t, dtype=np.int32), job, i) for i, t in enumerate(texts)]
        job.results = [None] * len(texts)
        job.left = len(texts)
        await self._admit("score")
        try:
            self._score_rows.extend(job.rows)
            self._unstarted.add(job)
            self._update_gauges()
            self._wake()
            assert job.future is not None
            out: list[np.ndarray] = await self._within_timeout(job.future, job)
        finally:
            self._unstarted.discard(job)
            self._release()
        self._tokens_scored += sum(len(t) - 1 for t in texts)
        return out

    async def next_word(self, context_ids: list[int]) -> np.ndarray:
        """The (V,) next-token log-distribution after a non-empty context ([eos, tokens...])."""
        if not context_ids:
            raise ValueError("the context needs at least one token (start with <eos>)")
        loop = asyncio.get_running_loop()
        s = _Stream(
            "next_word", prompt=np.asarray(context_ids, np.int32), future=loop.create_future()
        )
        await self._admit("next_word")
        try:
            self._waiting.append(s)
            self._update_gauges()
            self._wake()
            assert s.future is not None
            logp: np.ndarray = await self._within_timeout(s.future, s)
        finally:
            self._release()
        return logp

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
        that went away) leaves the batch at the next step.
        """
        s = self._new_stream(prompt_ids, max_new_tokens, params, seed, stop_at_eos,
                             stop_sequences, top_n_tokens, prefill_logprobs)
        if max_new_tokens <= 0:
            return
        out: asyncio.Queue[EngineStep | BaseException] = asyncio.Queue()
        s.out = out
        async with self._running_stream(s):
            while True:
                item = await out.get()
                self._wake()  # room in its buffer again: the stream may step
                if isinstance(item, BaseException):
                    raise item
                yield item
                if item.finish_reason is not None:
                    return

    async def generate_all(
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
    ) -> list[EngineStep]:
        """generate() run to its end: every step, the last with its finish_reason.

        For answers that are not streamed: the request is woken once at the end instead of
        once a token, which at 32 running generations is 32 task switches a decode step.
        """
        s = self._new_stream(prompt_ids, max_new_tokens, params, seed, stop_at_eos,
                             stop_sequences, top_n_tokens, prefill_logprobs)
        if max_new_tokens <= 0:
            return []
        s.future = asyncio.get_running_loop().create_future()
        async with self._running_stream(s):
            steps: list[EngineStep] = await s.future
        return steps

    @contextlib.asynccontextmanager
    async def _running_stream(self, s: _Stream) -> AsyncIterator[None]:
        """Admit a generation and queue it; on leaving, a stream not finished (its consumer
        went away, or timed out) leaves the batch at the next tick."""
        await self._admit("generate")
        try:
            self._waiting.append(s)
            self._update_gauges()
            self._wake()
            yield
        finally:
            if not s.finished:
                s.cancelled = True
                self._wake()
            self._release()

    def _new_stream(
        self,
        prompt_ids: list[int],
        max_new_tokens: int,
        params: SamplingParams,
        seed: int | None,
        stop_at_eos: bool,
        stop_sequences: Sequence[Sequence[int]],
        top_n_tokens: int,
        prefill_logprobs: bool,
    ) -> _Stream:
        """A generation's stream, not yet admitted (ValueError on an empty prompt)."""
        if not prompt_ids:
            raise ValueError("the prompt needs at least one token (start with <eos>)")
        return _Stream(
            "generate",
            prompt=np.asarray(prompt_ids, np.int32),
            max_new_tokens=max_new_tokens,
            params=params,
            rng=np.random.default_rng(seed) if params.do_sample else None,
            stop_at_eos=stop_at_eos,
            stops=[list(x) for x in stop_sequences if len(x)],
            top_n=top_n_tokens,
            want_prefill=prefill_logprobs,
            history=list(prompt_ids),
        )

    # ------------------------------------------------------------------ the worker

    async def _worker(self) -> None:
        """Plan a tick, run it in the compute thread, deliver; sleep when there is no work."""
        loop = asyncio.get_running_loop()
        assert self._wakeup is not None
        while True:
            tick: _Tick | None = None
            try:
                tick = self._plan()
                if tick is None:
                    self._wakeup.clear()
                    await self._wakeup.wait()
                    await self._fill_window()
                    continue
                if self._inline and not tick.feed and len(tick.decode) <= INLINE_ROWS:
                    result = self._compute(tick)
                else:
                    result = await loop.run_in_executor(self._executor, self._compute, tick)
                self._deliver(tick, result)
                # Let the requests just woken run before the next step: their Python work
                # would otherwise take a core from the step's two BLAS threads. In-process,
                # 32 generations went from 4,555-4,771 to 5,170-5,507 tok/s with this.
                await asyncio.sleep(0)
            except asyncio.CancelledError:
                raise
            except Exception as e:
                # A bug must not leave requests waiting forever: fail what the tick held.
                logger.exception("engine step failed")
                if tick is not None:
                    self._fail_tick(tick, e)

    async def _fill_window(self) -> None:
        """After idling: wait up to max_batch_wait_ms for as many requests as the last tick had.

        A client alone (the last tick served one request) never waits; clients that came
        together come back together, so the next batch waits for that many, not for
        max_batch_size, and starts as soon as they are in.
        """
        if self.max_batch_wait_s <= 0 or self._running:
            return
        assert self._wakeup is not None
        want = min(self.max_batch_size, self._last_tick_requests)
        deadline = time.perf_counter() + self.max_batch_wait_s
        while len(self._unstarted) + len(self._waiting) < want:
            left = deadline - time.perf_counter()
            if left <= 0:
                return
            self._wakeup.clear()
            try:
                async with asyncio.timeout(left):
                    await self._wakeup.wait()
            except TimeoutError:
                return

    def _start_row(self, row: _Row) -> None:
        """First look at a row: start it from the longest cached prefix of its ids."""
        row.looked_up = True
        if len(row.ids) < 2:
            return
        entry = self.cache.lookup(row.ids, len(row.ids))
        if entry is None:
            self.metrics.cache_misses.inc()
            return
        self.metrics.cache_hits.inc()
        self.metrics.cache_tokens_saved.inc(entry.length - 1)
        row.pos = entry.length - 1
        row.state = entry.state
        row.pieces = [entry.logprobs]

    def _mark_started(self, job: _Job) -> None:
        """Observe a request's queue time at its first forward."""
        if not job.started:
            job.started = True
            if isinstance(job, _ScoreJob):
                self._unstarted.discard(job)
            self.metrics.queue_time.labels(job.kind).observe(time.perf_counter() - job.admitted)

    def _plan(self) -> _Tick | None:
        """Choose the next tick's work; rows whose text is all cached finish here, unfed."""
        # Streams take free batch slots in arrival order.
        while self._waiting and len(self._running) < self.max_batch_size:
            s = self._waiting.popleft()
            if s.cancelled:
                self._drop(s)
                continue
            self._running.append(s)
            s.row = _Row(s.prompt, s)
        # Rows to feed: running streams' prompts first (they hold slots), then scoring texts.
        # A short generation prompt rides in the decode batch when there is one.
        decoding = any(s.ready for s in self._running)
        rows: list[_Row] = []
        for s in list(self._running):
            if s.cancelled:
                self._drop(s)
                continue
            if s.ready or s.riding or s.row is None:
                continue
            if not s.row.looked_up:
                self._start_row(s.row)
            if s.row.remaining == 0:
                self._row_done(s.row)
            elif decoding and s.kind == "generate" and s.row.remaining <= RIDE_TOKENS:
                s.riding = True
                s.state = s.row.state
                s.next_input = int(s.row.ids[s.row.pos])
                self._mark_started(s)
            elif len(rows) < self.max_batch_size:
                rows.append(s.row)
        while self._score_rows and len(rows) < self.max_batch_size:
            row = self._score_rows[0]
            if row.owner.cancelled:
                self._score_rows.popleft()
                continue
            if not row.looked_up:
                self._start_row(row)
            if row.remaining == 0:
                self._score_rows.popleft()
                self._row_done(row)
                continue
            rows.append(row)
            self._score_rows.popleft()
        decode = [
            s
            for s in self._running
            if (s.ready or s.riding)
            and not s.cancelled
            and (s.out is None or s.out.qsize() < STREAM_BUFFER)
        ]
        self._update_gauges()
        if not rows and not decode:
            return None
        chunk = max(1, self.max_batch_tokens // max(1, len(rows)))
        feed = [(row, min(row.remaining, chunk)) for row in rows]
        for row, _ in feed:
            self._mark_started(row.owner)
        return _Tick(feed, decode)

    def _compute(self, tick: _Tick) -> _TickResult:
        """The tick's numpy work (compute thread): one scoring forward, one decode step."""
        t0 = time.perf_counter()
        res = _TickResult()
        if tick.feed:
            inputs = [row.ids[row.pos : row.pos + c] for row, c in tick.feed]
            targets = [row.ids[row.pos + 1 : row.pos + c + 1] for row, c in tick.feed]
            state = LSTMState.stack([row.state or self._zero for row, _ in tick.feed])
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

    def _decode(self, tick: _Tick, res: _TickResult) -> None:
        """One batched decode step; each generation picks its token or reads its prompt's
        next one (compute thread)."""
        streams = tick.decode
        ids = np.array([s.next_input for s in streams], dtype=np.int64)
        state = LSTMState.stack([s.state or self._zero for s in streams])
        logits, res.decode_state = step(self.model, ids, state)
        res.decode_logp = log_softmax(logits, axis=1)  # (N, V)
        res.picks = [None] * len(streams)
        for i, s in enumerate(streams):
            if s.kind != "generate":
                continue
            if s.riding:
                self._read_prompt_token(s, res.decode_logp[i], res.decode_state, i, res)
            else:
                res.picks[i] = self._pick(s, res.decode_logp[i])

    def _read_prompt_token(
        self, s: _Stream, logp: np.ndarray, state: LSTMState, r: int, res: _TickResult
    ) -> None:
        """A riding stream's step: keep the log-prob of its prompt's next token, the id it
        feeds next; at the prompt's end it turns ready (compute thread)."""
        row = s.row
        assert row is not None
        token = int(row.ids[row.pos + 1])
        row.pieces.append(logp[token : token + 1].copy())
        row.pos += 1
        res.ridden += 1
        if row.remaining == 0:  # the state is the one after ids[:-1]: as _row_done leaves it
            row.state = _row_view(state, r)
            s.prefill = row.logprobs()
            s.riding, s.ready, s.row = False, True, None
            res.prompts_read.append(row)
        s.next_input = token

    def _pick(self, s: _Stream, logp: np.ndarray) -> _Pick:
        """Choose a generation's next token with its own parameters, generator and history."""
        token = choose_next(logp, s.params, s.rng, s.history, self.vocab.unk_id)
        s.history.append(token)
        s.generated.append(token)
        reason: str | None = None
        if s.stop_at_eos and token == self.vocab.eos_id:
            reason = "eos_token"
        elif any(s.generated[-len(x) :] == x for x in s.stops):
            reason = "stop_sequence"
        elif len(s.generated) >= s.max_new_tokens:
            reason = "length"
        return _Pick(token, float(logp[token]), _top(logp, s.top_n), reason)

    def _deliver(self, tick: _Tick, res: _TickResult) -> None:
        """Hand the tick's results to their requests (event loop)."""
        m = self.metrics
        m.forward_time.observe(res.seconds)
        owners = {id(row.owner) for row, _ in tick.feed}
        self._last_tick_requests = max(1, len(owners | {id(s) for s in tick.decode}))
        if tick.feed:
            self._count_batch("score", len(tick.feed), len(owners))
            m.tokens_fed.labels("score").inc(sum(c for _, c in tick.feed))
            assert res.feed_state is not None
            unfinished: list[_Row] = []
            for i, ((row, c), lp) in enumerate(zip(tick.feed, res.feed_logprobs, strict=True)):
                if row.owner.cancelled:
                    continue
                row.pieces.append(lp)
                row.pos += c
                row.state = _row_view(res.feed_state, i)
                if row.remaining == 0:
                    self._row_done(row)
                elif row.owner.kind == "score":
                    unfinished.append(row)
            self._score_rows.extendleft(reversed(unfinished))  # their next chunks go first
        if tick.decode:
            for row in res.prompts_read:
                self.cache.insert(row.ids, row.state or self._zero, row.logprobs())
            self._count_batch("decode", len(tick.decode), len(tick.decode))
            m.tokens_fed.labels("decode").inc(len(tick.decode))
            self._prompt_tokens_ridden += res.ridden
            assert res.decode_state is not None
            assert res.decode_logp is not None
            for i, s in enumerate(tick.decode):
                if s.cancelled:
                    self._drop(s)
                    continue
                if s.kind == "next_word":
                    assert s.future is not None
                    if not s.future.done():
                        s.future.set_result(res.decode_logp[i].copy())
                    self._finish(s)
                    continue
                pick = res.picks[i]
                new_state = _row_view(res.decode_state, i)
                if pick is None:  # it read a prompt token (next_input is the next one)
                    s.state = new_state
                    continue
                s.gen_logprobs.append(pick.logprob)
                first = len(s.gen_logprobs) == 1
                if first:
                    s.first_token_at = time.perf_counter()
                    m.time_to_first_token.observe(s.first_token_at - s.admitted)
                self._tokens_generated += 1
                out = EngineStep(pick.token, pick.logprob, pick.reason, pick.top,
                                 s.prefill if first and s.want_prefill else None)
                if s.out is not None:
                    s.out.put_nowait(out)
                else:
                    s.collected.append(out)
                    if pick.reason is not None and s.future is not None and not s.future.done():
                        s.future.set_result(s.collected)
                if pick.reason is None:
                    s.state, s.next_input = new_state, pick.token
                    continue
                # The whole text (prompt + generated) is a prefix a follow-up may extend.
                if s.prefill is not None:
                    ids = np.concatenate([s.prompt, np.asarray(s.generated, np.int32)])
                    lps = np.concatenate([s.prefill, np.asarray(s.gen_logprobs, np.float32)])
                    self.cache.insert(ids, new_state, lps)
                if len(s.generated) > 1:
                    m.time_per_token.observe(
                        (time.perf_counter() - s.first_token_at) / (len(s.generated) - 1)
                    )
                self._finish(s)
        self._update_gauges()

    def _row_done(self, row: _Row) -> None:
        """A row is fed to its end: cache its text, then resolve or move on its request."""
        lps = row.logprobs()
        state = row.state or self._zero
        if len(row.ids) >= 2:
            self.cache.insert(row.ids, state, lps)
        owner = row.owner
        if isinstance(owner, _ScoreJob):
            owner.results[row.index] = lps
            owner.left -= 1
            if owner.left == 0 and owner.future is not None and not owner.future.done():
                owner.future.set_result([r for r in owner.results if r is not None])
        elif isinstance(owner, _Stream):
            self._mark_started(owner)
            owner.prefill = lps
            owner.state = state
            owner.next_input = int(row.ids[-1])
            owner.ready = True
            owner.row = None

    def _count_batch(self, kind: str, n: int, requests: int) -> None:
        """Record a forward of n streams from that many distinct requests."""
        self.metrics.batch_size.labels(kind).observe(n)
        self._batches[kind] += 1
        self._largest[kind] = max(self._largest[kind], n)
        self._largest_requests[kind] = max(self._largest_requests[kind], requests)

    def _finish(self, s: _Stream) -> None:
        """A stream is done: it leaves the batch."""
        s.finished = True
        if s in self._running:
            self._running.remove(s)

    def _drop(self, s: _Stream) -> None:
        """A stream whose consumer went away leaves the batch."""
        s.finished = True
        if s in self._running:
            self._running.remove(s)
        if s.future is not None and not s.future.done():
            s.future.cancel()

    def _fail(self, job: _Job, error: BaseException) -> None:
        """Hand an error to a request."""
        fut = job.future if isinstance(job, _ScoreJob | _Stream) else None
        if fut is not None and not fut.done():
            fut.set_exception(error)
        if isinstance(job, _Stream):
            job.finished = True
            if job.out is not None:
                job.out.put_nowait(error)
            if job in self._running:
                self._running.remove(job)

    def _fail_tick(self, tick: _Tick, error: Exception) -> None:
        """A tick's compute failed: its requests get the error, the engine goes on."""
        for job in {id(r.owner): r.owner for r, _ in tick.feed}.values():
            job.cancelled = True
            self._fail(job, error)
        for s in tick.decode:
            self._fail(s, error)
        self._update_gauges()

    def _update_gauges(self) -> None:
        queued = len(self._waiting) + len(self._unstarted)
        self.metrics.queue_size.set(queued)
        self.metrics.running.set(len(self._running))
        self.metrics.cache_bytes.set(self.cache.nbytes)
        self.metrics.cache_entries.set(len(self.cache))

    def stats(self) -> dict[str, Any]:
        """Engine settings and counters for /info."""
        return {
            "kind": "batching",
            "max_batch_size": self.max_batch_size,
            "max_batch_wait_ms": self.max_batch_wait_s * 1000.0,
            "max_batch_tokens": self.max_batch_tokens,
            "decode_layout": "W.T @ x.T" if self.model.decode_transposed else "x @ W",
            "queue_size": self.queue_size,
            "in_flight": self._in_flight,
            "queued_texts": len(self._score_rows),
            "waiting_streams": len(self._waiting),
            "running_streams": len(self._running),
            "draining": self._draining,
            "requests_served": self._served,
            "tokens_scored": self._tokens_scored,
            "tokens_generated": self._tokens_generated,
            "prompt_tokens_in_decode": self._prompt_tokens_ridden,
            "batches": dict(self._batches),
            "largest_batch": dict(self._largest),
            "largest_batch_requests": dict(self._largest_requests),
            "cache": self.cache.stats(),
        }
