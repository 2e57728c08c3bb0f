"""The Engine: admission, the calls routes make (score, next_word, generate), and the worker.

The engine admits a request (OverloadedError when queue_size are already in, DrainingError
while shutting down) and queues its work with the Scheduler; one asyncio task asks the
scheduler for a tick, hands it to one dedicated compute thread (numpy releases the GIL inside
BLAS, and one compute thread does not oversubscribe the cores) and delivers the result. A
decode tick of at most INLINE_ROWS streams of a model no bigger than 2x650 runs on the event
loop itself, as the hand-off would cost more than the wait (bench/README.md, "Decisions and
measurements").
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import AsyncGenerator, AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from app.engine.cache import PrefixCache
from app.engine.compute import Computer, Tick, TickResult
from app.engine.errors import (
    DrainingError,
    EngineClosedError,
    OverloadedError,
    RequestTimeoutError,
)
from app.engine.jobs import Job, Row, ScoreJob, Stream
from app.engine.request import EngineStep, GenerationRequest
from app.engine.scheduler import Scheduler
from app.metrics import EngineMetrics
from model.blas import transposed_decode_is_faster
from model.functions import log_softmax
from model.inference import InferenceModel, TokenDetails, score, score_details_batch, step
from model.normalize import Tokenizer
from model.vocab import Vocab
from model.weights import LoadedWeights

logger = logging.getLogger(__name__)

# A decode tick of at most INLINE_ROWS streams, with no scoring forward, runs on the event loop
# when the weights a step reads are at most INLINE_MAX_BYTES (about a millisecond of memory
# traffic): the hand-off to the compute thread and back costs more than blocking the loop.
INLINE_ROWS = 2
INLINE_MAX_BYTES = 64 * 1024 * 1024


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
        # the weights' own normaliser: every text a route reads goes through it
        self.tokenizer = Tokenizer(weights.vocab, weights.normalizer)
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
        zero = self.model.zero_state(1)
        zero.h.flags.writeable = False
        zero.c.flags.writeable = False
        self._computer = Computer(self.model, zero, self.vocab.eos_id, self.vocab.unk_id)
        # Work waiting for the worker; only the event loop touches the scheduler.
        self._sched = Scheduler(self.cache, self.metrics, zero, self.max_batch_size,
                                self.max_batch_tokens)
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
        self._warmup: dict[str, Any] | None = None  # what warmup() ran, once it has

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
        self._sched.fail_all(EngineClosedError("the engine stopped"))
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None

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

    async def _within_timeout(self, fut: asyncio.Future[Any], job: Job) -> Any:
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
        """One scoring forward and one step at two batch sizes, in the compute thread.

        The first products of a thread allocate BLAS buffers and fault in the weights; doing
        them here keeps that off the first request. What ran is reported in stats()["warmup"].
        """
        await self.start()
        eos = self.vocab.eos_id

        def work() -> dict[str, Any]:
            t0 = time.perf_counter()
            rows = []
            for n in (1, 2):
                _, st = score(self.model, [[eos, eos]] * n, [[eos, eos]] * n)
                logits, _ = step(self.model, np.full(n, eos), st)
                if not np.isfinite(log_softmax(logits, axis=1)).all():
                    raise ValueError("the model gives non-finite log-probabilities")
                rows.append(n)
            return {"batch_sizes": rows, "thread": threading.current_thread().name,
                    "seconds": time.perf_counter() - t0}

        assert self._executor is not None
        self._warmup = await asyncio.get_running_loop().run_in_executor(self._executor, work)

    async def score(self, texts: list[list[int]]) -> list[np.ndarray]:
        """Log-probabilities of positions 1.. of each full id sequence ([eos, tokens..., eos?]);
        a sequence of the start token alone has none (an empty array)."""
        if any(len(t) < 1 for t in texts):
            raise ValueError("each sequence needs a start token")
        if any(len(t) < 2 for t in texts):
            some = [i for i, t in enumerate(texts) if len(t) >= 2]
            scored = iter(await self.score([texts[i] for i in some]))
            return [next(scored) if len(t) >= 2 else np.empty(0, np.float32) for t in texts]
        if not texts:
            return []
        job = ScoreJob("score", future=asyncio.get_running_loop().create_future())
        job.rows = [Row(np.asarray(t, dtype=np.int32), job, i) for i, t in enumerate(texts)]
        job.results = [None] * len(texts)
        job.left = len(texts)
        await self._admit("score")
        try:
            self._sched.add_score(job)
            self._wake()
            assert job.future is not None
            out: list[np.ndarray] = await self._within_timeout(job.future, job)
        finally:
            self._sched.unstarted.discard(job)
            self._release()
        self._tokens_scored += sum(len(t) - 1 for t in texts)
        return out

    async def score_details(self, texts: list[list[int]], k: int) -> list[TokenDetails]:
        """Log-probabilities of positions 1.. of each sequence, with each target's rank and
        the k most likely tokens: the texts as one packed forward, not batched with other
        requests (a full distribution is kept a position, CHUNK_ROWS at a time)."""
        if any(len(t) < 1 for t in texts):
            raise ValueError("each sequence needs a start token")
        job = Job("score")
        await self._admit("score")
        try:
            assert self._executor is not None
            fut = asyncio.get_running_loop().run_in_executor(
                self._executor, lambda: score_details_batch(self.model, texts, k))
            out: list[TokenDetails] = await self._within_timeout(fut, job)
        finally:
            self._release()
        self._tokens_scored += sum(len(t) - 1 for t in texts)
        return out

    async def next_word(self, context_ids: list[int]) -> np.ndarray:
        """The (V,) next-token log-distribution after a non-empty context ([eos, tokens...])."""
        if not context_ids:
            raise ValueError("the context needs at least one token (start with <eos>)")
        loop = asyncio.get_running_loop()
        s = Stream(
            "next_word", prompt=np.asarray(context_ids, np.int32), future=loop.create_future()
        )
        await self._admit("next_word")
        try:
            self._sched.add_stream(s)
            self._wake()
            assert s.future is not None
            logp: np.ndarray = await self._within_timeout(s.future, s)
        finally:
            self._release()
        return logp

    async def generate(self, req: GenerationRequest) -> AsyncGenerator[EngineStep, None]:
        """Yield generated tokens; the last step carries its finish_reason.

        A consumer that stops iterating (a client that went away) leaves the batch at the
        next step.
        """
        if req.max_new_tokens <= 0:
            return
        s = Stream.for_generation(req)
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

    async def generate_all(self, req: GenerationRequest) -> list[EngineStep]:
        """generate() run to its end: every step, the last with its finish_reason.

        For answers that are not streamed: the request is woken once at the end instead of
        once a token, which at 32 running generations is 32 task switches a decode step.
        """
        if req.max_new_tokens <= 0:
            return []
        s = Stream.for_generation(req)
        s.future = asyncio.get_running_loop().create_future()
        async with self._running_stream(s):
            steps: list[EngineStep] = await s.future
        return steps

    @contextlib.asynccontextmanager
    async def _running_stream(self, s: Stream) -> AsyncIterator[None]:
        """Admit a generation and queue it; on leaving, a stream not finished (its consumer
        went away, or timed out) leaves the batch at the next tick."""
        await self._admit("generate")
        try:
            self._sched.add_stream(s)
            self._wake()
            yield
        finally:
            if not s.finished:
                s.cancelled = True
                self._wake()
            self._release()

    # ------------------------------------------------------------------ the worker

    async def _worker(self) -> None:
        """Plan a tick, run it in the compute thread, deliver; sleep when there is no work."""
        loop = asyncio.get_running_loop()
        assert self._wakeup is not None
        while True:
            tick: Tick | None = None
            try:
                tick = self._sched.plan()
                if tick is None:
                    self._wakeup.clear()
                    await self._wakeup.wait()
                    await self._fill_window()
                    continue
                if self._inline and not tick.feed and len(tick.decode) <= INLINE_ROWS:
                    result = self._compute(tick)
                else:
                    result = await loop.run_in_executor(self._executor, self._compute, tick)
                self._sched.deliver(tick, result)
                # Let the requests just woken run before the next step: their Python work
                # would otherwise take a core from the step's BLAS threads (bench/README.md).
                await asyncio.sleep(0)
            except asyncio.CancelledError:
                raise
            except Exception as e:
                # A bug must not leave requests waiting forever: fail what the tick held.
                logger.exception("engine step failed")
                if tick is not None:
                    self._sched.fail_tick(tick, e)

    async def _fill_window(self) -> None:
        """After idling: wait up to max_batch_wait_ms for as many requests as the last tick had.

        A client alone (the last tick served one request) never waits; clients that came
        together come back together, so the next batch waits for that many, not for
        max_batch_size, and starts as soon as they are in.
        """
        sched = self._sched
        if self.max_batch_wait_s <= 0 or sched.running:
            return
        assert self._wakeup is not None
        want = min(self.max_batch_size, sched.last_tick_requests)
        deadline = time.perf_counter() + self.max_batch_wait_s
        while len(sched.unstarted) + len(sched.waiting) < want:
            left = deadline - time.perf_counter()
            if left <= 0:
                return
            self._wakeup.clear()
            try:
                async with asyncio.timeout(left):
                    await self._wakeup.wait()
            except TimeoutError:
                return

    def _compute(self, tick: Tick) -> TickResult:
        """The tick's numpy work (compute thread, or the loop for a small decode tick)."""
        return self._computer.compute(tick)

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
            "queued_texts": len(self._sched.score_rows),
            "waiting_streams": len(self._sched.waiting),
            "running_streams": len(self._sched.running),
            "draining": self._draining,
            "requests_served": self._served,
            "tokens_scored": self._tokens_scored,
            "tokens_generated": self._sched.tokens_generated,
            "prompt_tokens_in_decode": self._sched.prompt_tokens_prefilled,
            "batches": dict(self._sched.batches),
            "largest_batch": dict(self._sched.largest),
            "largest_batch_requests": dict(self._sched.largest_requests),
            "cache": self.cache.stats(),
            "warmup": self._warmup,
        }
