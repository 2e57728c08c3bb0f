"""The scheduler: plans each tick from the queued work of all clients and delivers its results.

Event loop only. A tick is at most one scoring forward (texts to score and prompts and
contexts to read, from any requests, in one ``model.inference.score`` call of at most
max_batch_size rows and max_batch_tokens positions; a longer text is fed in chunks over
several ticks, its state carried over) and one decode step (continuous batching: every
running generation, and every next-word request whose context is read, advances one token;
new generations join at the next tick, finished ones leave at once, and one whose consumer
went away leaves at the next tick).

*In-batch prefill*: a short prompt (at most DECODE_PREFILL_TOKENS still to read) that joins
while others decode is read inside the decode batch, one token a step, its log-probs read
off the step's output, so the batch is never held up by a forward of prompts.
"""

from __future__ import annotations

import time
from collections import Counter, deque

import numpy as np

from app.engine.cache import PrefixCache
from app.engine.compute import Tick, TickResult
from app.engine.jobs import STREAM_BUFFER, Job, Row, ScoreJob, Stream, row_view
from app.engine.request import EngineStep
from app.metrics import EngineMetrics
from model.rnnlm import LSTMState

# Prompt tokens still to read, at most, for a prompt to be prefilled in the decode batch
# (one token a step) rather than by a scoring forward of its own.
DECODE_PREFILL_TOKENS = 16


class Scheduler:
    """The queues (scoring rows, waiting and running streams) and the tick planning around them."""

    def __init__(
        self,
        cache: PrefixCache,
        metrics: EngineMetrics,
        zero: LSTMState,
        max_batch_size: int,
        max_batch_tokens: int,
    ) -> None:
        self.cache = cache
        self.metrics = metrics
        self.zero = zero
        self.max_batch_size = max_batch_size
        self.max_batch_tokens = max_batch_tokens
        self.score_rows: deque[Row] = deque()
        self.waiting: deque[Stream] = deque()
        self.running: list[Stream] = []
        self.unstarted: set[ScoreJob] = set()  # scoring requests not fed yet (queue gauge)
        # Aggregate counters only (never per-request state).
        self.tokens_generated = 0
        self.batches: Counter[str] = Counter()
        self.largest: Counter[str] = Counter()
        self.largest_requests: Counter[str] = Counter()
        self.prompt_tokens_prefilled = 0  # prompt tokens read in decode batches
        self.last_tick_requests = 1  # distinct requests in the last tick: the next one's aim

    def add_score(self, job: ScoreJob) -> None:
        """Queue a scoring request's rows."""
        self.score_rows.extend(job.rows)
        self.unstarted.add(job)
        self.update_gauges()

    def add_stream(self, s: Stream) -> None:
        """Queue a generation or next-word request for a batch slot."""
        self.waiting.append(s)
        self.update_gauges()

    def fail_all(self, error: BaseException) -> None:
        """Hand error to every queued or running request and empty the queues."""
        for row in self.score_rows:
            self.fail(row.owner, error)
        for s in [*self.waiting, *self.running]:
            self.fail(s, error)
        self.score_rows.clear()
        self.waiting.clear()
        self.running.clear()
        self.update_gauges()

    def start_row(self, row: Row) -> None:
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

    def mark_started(self, job: Job) -> None:
        """Observe a request's queue time at its first forward."""
        if not job.started:
            job.started = True
            if isinstance(job, ScoreJob):
                self.unstarted.discard(job)
            self.metrics.queue_time.labels(job.kind).observe(time.perf_counter() - job.admitted)

    def plan(self) -> Tick | None:
        """Choose the next tick's work; rows whose text is all cached finish here, unfed."""
        # Streams take free batch slots in arrival order.
        while self.waiting and len(self.running) < self.max_batch_size:
            s = self.waiting.popleft()
            if s.cancelled:
                self.drop(s)
                continue
            self.running.append(s)
            s.row = Row(s.prompt, s)
        # Rows to feed: running streams' prompts first (they hold slots), then scoring texts.
        # A short generation prompt is prefilled in the decode batch when there is one.
        decoding = any(s.ready for s in self.running)
        rows: list[Row] = []
        for s in list(self.running):
            if s.cancelled:
                self.drop(s)
                continue
            if s.ready or s.in_batch_prefill or s.row is None:
                continue
            if not s.row.looked_up:
                self.start_row(s.row)
            if s.row.remaining == 0:
                self.row_done(s.row)
            elif decoding and s.kind == "generate" and s.row.remaining <= DECODE_PREFILL_TOKENS:
                s.in_batch_prefill = True
                s.state = s.row.state
                s.next_input = int(s.row.ids[s.row.pos])
                self.mark_started(s)
            elif len(rows) < self.max_batch_size:
                rows.append(s.row)
        while self.score_rows and len(rows) < self.max_batch_size:
            row = self.score_rows[0]
            if row.owner.cancelled:
                self.score_rows.popleft()
                continue
            if not row.looked_up:
                self.start_row(row)
            if row.remaining == 0:
                self.score_rows.popleft()
                self.row_done(row)
                continue
            rows.append(row)
            self.score_rows.popleft()
        decode = [
            s
            for s in self.running
            if (s.ready or s.in_batch_prefill)
            and not s.cancelled
            and (s.out is None or s.out.qsize() < STREAM_BUFFER)
        ]
        self.update_gauges()
        if not rows and not decode:
            return None
        chunk = max(1, self.max_batch_tokens // max(1, len(rows)))
        feed = [(row, min(row.remaining, chunk)) for row in rows]
        for row, _ in feed:
            self.mark_started(row.owner)
        return Tick(feed, decode)

    def deliver(self, tick: Tick, res: TickResult) -> None:
        """Hand the tick's results to their requests (event loop)."""
        m = self.metrics
        m.forward_time.observe(res.seconds)
        owners = {id(row.owner) for row, _ in tick.feed}
        self.last_tick_requests = max(1, len(owners | {id(s) for s in tick.decode}))
        if tick.feed:
            self.count_batch("score", len(tick.feed), len(owners))
            m.tokens_fed.labels("score").inc(sum(c for _, c in tick.feed))
            assert res.feed_state is not None
            unfinished: list[Row] = []
            for i, ((row, c), lp) in enumerate(zip(tick.feed, res.feed_logprobs, strict=True)):
                if row.owner.cancelled:
                    continue
                row.pieces.append(lp)
                row.pos += c
                row.state = row_view(res.feed_state, i)
                if row.remaining == 0:
                    self.row_done(row)
                elif row.owner.kind == "score":
                    unfinished.append(row)
            self.score_rows.extendleft(reversed(unfinished))  # their next chunks go first
        if tick.decode:
            for row in res.prompts_read:
                self.cache.insert(row.ids, row.state or self.zero, row.logprobs())
            self.count_batch("decode", len(tick.decode), len(tick.decode))
            m.tokens_fed.labels("decode").inc(len(tick.decode))
            self.prompt_tokens_prefilled += res.prefilled
            assert res.decode_state is not None
            assert res.decode_logp is not None
            for i, s in enumerate(tick.decode):
                if s.cancelled:
                    self.drop(s)
                    continue
                if s.kind == "next_word":
                    assert s.future is not None
                    if not s.future.done():
                        s.future.set_result(res.decode_logp[i].copy())
                    self.finish(s)
                    continue
                pick = res.picks[i]
                new_state = row_view(res.decode_state, i)
                if pick is None:  # it read a prompt token (next_input is the next one)
                    s.state = new_state
                    continue
                s.gen_logprobs.append(pick.logprob)
                first = len(s.gen_logprobs) == 1
                if first:
                    s.first_token_at = time.perf_counter()
                    m.time_to_first_token.observe(s.first_token_at - s.admitted)
                self.tokens_generated += 1
                want_prefill = s.request is not None and s.request.prefill_logprobs
                out = EngineStep(pick.token, pick.logprob, pick.reason, pick.top,
                                 s.prefill if first and want_prefill else None)
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
                self.finish(s)
        self.update_gauges()

    def row_done(self, row: Row) -> None:
        """A row is fed to its end: cache its text, then resolve or move on its request."""
        lps = row.logprobs()
        state = row.state or self.zero
        if len(row.ids) >= 2:
            self.cache.insert(row.ids, state, lps)
        owner = row.owner
        if isinstance(owner, ScoreJob):
            owner.results[row.index] = lps
            owner.left -= 1
            if owner.left == 0 and owner.future is not None and not owner.future.done():
                owner.future.set_result([r for r in owner.results if r is not None])
        elif isinstance(owner, Stream):
            self.mark_started(owner)
            owner.prefill = lps
            owner.state = state
            owner.next_input = int(row.ids[-1])
            owner.ready = True
            owner.row = None

    def count_batch(self, kind: str, n: int, requests: int) -> None:
        """Record a forward of n streams from that many distinct requests."""
        self.metrics.batch_size.labels(kind).observe(n)
        self.batches[kind] += 1
        self.largest[kind] = max(self.largest[kind], n)
        self.largest_requests[kind] = max(self.largest_requests[kind], requests)

    def finish(self, s: Stream) -> None:
        """A stream is done: it leaves the batch."""
        s.finished = True
        if s in self.running:
            self.running.remove(s)

    def drop(self, s: Stream) -> None:
        """A stream whose consumer went away leaves the batch."""
        s.finished = True
        if s in self.running:
            self.running.remove(s)
        if s.future is not None and not s.future.done():
            s.future.cancel()

    def fail(self, job: Job, error: BaseException) -> None:
        """Hand an error to a request."""
        fut = job.future if isinstance(job, ScoreJob | Stream) else None
        if fut is not None and not fut.done():
            fut.set_exception(error)
        if isinstance(job, Stream):
            job.finished = True
            if job.out is not None:
                job.out.put_nowait(error)
            if job in self.running:
                self.running.remove(job)

    def fail_tick(self, tick: Tick, error: Exception) -> None:
        """A tick's compute failed: its requests get the error, the engine goes on."""
        for job in {id(r.owner): r.owner for r, _ in tick.feed}.values():
            job.cancelled = True
            self.fail(job, error)
        for s in tick.decode:
            self.fail(s, error)
        self.update_gauges()

    def update_gauges(self) -> None:
        queued = len(self.waiting) + len(self.unstarted)
        self.metrics.queue_size.set(queued)
        self.metrics.running.set(len(self.running))
        self.metrics.cache_bytes.set(self.cache.nbytes)
        self.metrics.cache_entries.set(len(self.cache))

