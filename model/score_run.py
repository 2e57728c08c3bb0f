"""``rnnlm score``'s local engine: input streams cut into windows, scored in-process or by
worker processes, written in input order with resume, signal-safe stops and a progress bar.

Input lines are read as bytes (only ``\\n`` ends a line) from the files in order, numbered
across them as ``cat`` would join them, and cut into windows of ``window`` lines; a window is
the unit a worker scores (``Scorer.score_lines``) and the unit written and flushed. One
process scores windows on ``threads`` threads (one per CPU by default) sharing one read-only
model, each with one BLAS thread: numpy releases the GIL in its matrix products and
elementwise loops, so a second thread also puts the second core to the LSTM cell and the
softmax, which BLAS threads leave to one core (bench/README.md). ``--workers N`` runs N
processes of one thread instead. At most ``2 x`` (threads or workers) windows are in flight,
so memory stays bounded whatever the input's size, and windows are written in the order they
were read.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import signal
import sys
import time
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import IO, Any

from tqdm import tqdm

from model.scorer import Chunk, InputLineError, ScoreOptions, Scorer

logger = logging.getLogger(__name__)

# Input lines per window (the unit scored together, written and flushed).
WINDOW_LINES = 1024


class ScoreRunError(ValueError):
    """A run that cannot start or go on; the message names the file (and line)."""


@dataclass(frozen=True)
class ScoreRun:
    """One ``rnnlm score`` invocation."""

    weights: Path
    inputs: tuple[str, ...] = ("-",)  # paths; "-" is standard input
    out: Path | None = None  # None: standard output
    options: ScoreOptions = field(default_factory=ScoreOptions)
    workers: int = 1
    threads: int | None = None  # scoring threads of one process; None: one per usable CPU
    resume: bool = False
    progress: bool = True
    window: int = WINDOW_LINES

    def check(self) -> None:
        """A ScoreRunError for flags that do not go together or files that are not there."""
        if self.workers < 1:
            raise ScoreRunError(f"--workers must be at least 1, not {self.workers}")
        if self.threads is not None and self.threads < 1:
            raise ScoreRunError(f"--threads must be at least 1, not {self.threads}")
        if self.workers > 1 and (self.threads or 1) > 1:
            raise ScoreRunError("--threads is for one process: with --workers each worker "
                                "scores on one thread")
        if self.window < 1:
            raise ScoreRunError(f"the window must be at least 1 line, not {self.window}")
        if self.resume and self.out is None:
            raise ScoreRunError("--resume needs --out (the file to continue)")
        if self.inputs.count("-") > 1:
            raise ScoreRunError("standard input (-) can be read only once")
        for name in self.inputs:
            if name == "-":
                continue
            p = Path(name)
            if not p.exists():
                raise ScoreRunError(f"{p}: no such input file")
            if p.is_dir():
                raise ScoreRunError(f"{p}: is a directory, not an input file")
        if self.out is not None and self.out.is_dir():
            raise ScoreRunError(f"{self.out}: is a directory, not an output file")


def _numbered_lines(inputs: tuple[str, ...]) -> Iterator[tuple[int, bytes, str, int]]:
    """(line across all inputs, bytes, file name, line within that file), lazily."""
    n = 0
    for name in inputs:
        f: IO[bytes] = sys.stdin.buffer if name == "-" else open(name, "rb")  # noqa: SIM115
        try:
            for k, raw in enumerate(f, start=1):
                n += 1
                yield n, raw, "<stdin>" if name == "-" else name, k
        finally:
            if f is not sys.stdin.buffer:
                f.close()


def resume_point(out: Path) -> int:
    """The last input line out has a complete output line for (0: none), after cutting off
    a partial last line; a ScoreRunError when out's last complete line is not ours."""
    if not out.exists():
        return 0
    size = out.stat().st_size
    with open(out, "rb+") as f:
        # Find the last two newlines from the end, reading backwards in blocks: the file may
        # be far larger than memory.
        block, pos, tail = 1 << 16, size, b""
        while pos > 0 and tail.count(b"\n") < 2:
            step = min(block, pos)
            pos -= step
            f.seek(pos)
            tail = f.read(step) + tail
        end = tail.rfind(b"\n")
        if end < 0:  # not even one complete line
            f.truncate(0)
            return 0
        cut = pos + end + 1
        if cut < size:
            logger.info("%s: dropping a partial last line (%d bytes)", out, size - cut)
            f.truncate(cut)
        last = tail[tail.rfind(b"\n", 0, end) + 1 : end]
    try:
        line = json.loads(last)["line"]
        if not isinstance(line, int) or line < 1:
            raise TypeError
    except (ValueError, KeyError, TypeError):
        raise ScoreRunError(
            f"{out}: its last line is not an output line of rnnlm score (no \"line\"); "
            "cannot --resume it") from None
    return int(line)


# The scorer each worker process loads once (workers are processes, so this is per process).
_worker_scorer: Scorer | None = None


def _worker_init(weights: str) -> None:
    """Load the weights once per worker, with one BLAS thread, ignoring Ctrl-C (the parent
    decides when to stop)."""
    global _worker_scorer
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    from model.blas import set_num_threads

    set_num_threads(1)
    _worker_scorer = Scorer.load(weights)


def _worker_score(lines: Sequence[tuple[int, bytes]], opts: ScoreOptions,
                  keep_rows: bool = False) -> Chunk:
    """Score one window in a worker."""
    assert _worker_scorer is not None
    return _worker_scorer.score_lines(lines, opts, keep_rows)


class Stopper:
    """SIGINT and SIGTERM set a flag, checked between windows; the old handlers come back."""

    def __init__(self) -> None:
        self.signal: int | None = None
        self._old: dict[int, Any] = {}

    def __enter__(self) -> Stopper:
        for s in (signal.SIGINT, signal.SIGTERM):
            self._old[s] = signal.signal(s, self._handle)
        return self

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signal is not None:  # a second Ctrl-C: stop now
            raise KeyboardInterrupt
        self.signal = signum
        logger.warning("%s: stopping after the current window (again to stop at once)",
                       signal.Signals(signum).name)

    def __exit__(self, *exc: object) -> None:
        for s, h in self._old.items():
            signal.signal(s, h)


def _windows(run: ScoreRun, skip: int, names: dict[int, tuple[str, int]]
             ) -> Iterator[list[tuple[int, bytes]]]:
    """Windows of numbered lines after line ``skip``; names records the input line each file
    begins at, so an error can name the file and its own line."""
    window: list[tuple[int, bytes]] = []
    for n, raw, name, k in _numbered_lines(run.inputs):
        if k == 1:
            names[n] = (name, n - 1)
        if n <= skip:
            continue
        window.append((n, raw))
        if len(window) == run.window:
            yield window
            window = []
    if window:
        yield window


def where(e: InputLineError, names: dict[int, tuple[str, int]]) -> str:
    """'FILE: line K' for an input line number (K counts within FILE)."""
    start = max(n for n in names if n <= e.line)
    name, before = names[start]
    local = e.line - before
    if local == e.line:
        return f"{name}: line {e.line}: {e.message}"
    return f"{name}: line {local} (input line {e.line}): {e.message}"


def scoring_threads(run: ScoreRun) -> int:
    """Threads scoring in this process: --threads, else one per CPU it may use (1 with
    --workers, whose processes are the parallelism)."""
    if run.workers > 1:
        return 1
    if run.threads is not None:
        return run.threads
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (
        os.cpu_count() or 1)


def run_score(run: ScoreRun) -> dict[str, Any]:
    """Score run's inputs into its output; the totals. Raises ScoreRunError (exit status 2)
    for a bad line in stop mode, after writing every earlier line."""
    run.check()
    opts = run.options
    skip = resume_point(run.out) if run.resume and run.out is not None else 0
    if skip:
        logger.info("%s: resuming after input line %d", run.out, skip)
    scorer = Scorer.load(run.weights) if run.workers == 1 else None
    threads = scoring_threads(run)
    out: IO[str]
    if run.out is None:
        out = sys.stdout
    else:
        run.out.parent.mkdir(parents=True, exist_ok=True)
        out = open(run.out, "a" if run.resume else "w", encoding="utf-8")  # noqa: SIM115
    names: dict[int, tuple[str, int]] = {}
    totals = {"texts": 0, "tokens": 0, "errors": 0, "last_line": skip}
    t0 = time.perf_counter()
    bar = tqdm(unit=" texts", file=sys.stderr, disable=not run.progress, dynamic_ncols=True)
    pool: Executor | None = None
    blas_before: int | None = None
    stopped: int | None = None
    failure: str | None = None

    def write(chunk: Chunk) -> bool:
        """Write a scored window; False when the run must end (a bad line in stop mode)."""
        nonlocal failure
        out.write(chunk.text)
        out.flush()
        totals["texts"] += chunk.texts
        totals["tokens"] += chunk.tokens
        totals["errors"] += chunk.errors
        totals["last_line"] = max(totals["last_line"], chunk.last_line)
        dt = time.perf_counter() - t0
        bar.update(chunk.texts + chunk.errors)
        bar.set_postfix_str(f"{totals['tokens']:,} tokens, {totals['tokens'] / dt:,.0f} tok/s")
        if chunk.stop is not None:
            failure = where(chunk.stop, names)
            return False
        return True

    try:
        with Stopper() as stopper:
            windows = _windows(run, skip, names)
            if scorer is not None and threads == 1:
                for w in windows:
                    if not write(scorer.score_lines(w, opts)) or stopper.signal:
                        break
            else:
                if scorer is not None:
                    from model.blas import set_num_threads

                    blas_before = set_num_threads(1)
                    pool = ThreadPoolExecutor(threads, thread_name_prefix="rnnlm-score")
                    n, task = threads, scorer.score_lines
                else:
                    # spawn, not fork: a forked child would inherit the parent's BLAS and
                    # progress-bar threads mid-flight.
                    pool = ProcessPoolExecutor(
                        run.workers, mp_context=multiprocessing.get_context("spawn"),
                        initializer=_worker_init, initargs=(str(run.weights),))
                    n, task = run.workers, _worker_score
                pending: deque[Future[Chunk]] = deque()
                for w in windows:
                    pending.append(pool.submit(task, w, opts))
                    if len(pending) >= 2 * n and (
                            not write(pending.popleft().result()) or stopper.signal):
                        break
                else:
                    while pending:
                        if not write(pending.popleft().result()) or stopper.signal:
                            break
            stopped = stopper.signal
    finally:
        bar.close()
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
        if blas_before is not None:
            from model.blas import set_num_threads

            set_num_threads(blas_before)
        if out is not sys.stdout:
            out.close()
    seconds = time.perf_counter() - t0
    summary = {
        "weights": str(run.weights), "out": str(run.out) if run.out else None,
        **totals, "resumed_after": skip, "seconds": seconds,
        "tokens_per_second": totals["tokens"] / seconds if seconds else None,
        "workers": run.workers, "threads": threads, "status": "finished",
    }
    if failure is not None:
        raise ScoreRunError(failure)
    if stopped is not None:
        summary["status"] = "stopped"
        summary["signal"] = signal.Signals(stopped).name
        logger.warning("stopped by %s after input line %d%s", summary["signal"],
                       totals["last_line"],
                       "; run again with --resume to continue" if run.out else "")
    logger.info("scored %d texts, %d tokens in %.1f s (%.0f tokens/s)%s", totals["texts"],
                totals["tokens"], seconds, summary["tokens_per_second"] or 0,
                f"; {totals['errors']} lines skipped" if totals["errors"] else "")
    return summary

