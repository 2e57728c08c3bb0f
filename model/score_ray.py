"""``rnnlm score --engine ray``: the same scorer (``model.scorer``) as a Ray Data actor pool,
for inputs and outputs beyond one machine; and ``score_dataset`` for a Ray pipeline of one's own.

The input files are cut into byte ranges at line starts by one counting pass on the driver,
so every read task knows the number of its first line; a Ray Data ``Datasource`` reads each
range into blocks of ``(line, raw)`` rows. ``map_batches`` hands windows of rows to a fixed
pool of actors, each holding the weights once and one BLAS thread, which return each row's
finished JSON line. With ``--out FILE`` the driver writes them in input order
(``preserve_order``), exactly as the local engine does, resumable the same way; with
``--out-dir DIR`` Ray's write tasks write part files (JSON lines, or Parquet) in parallel.
Needs the optional extra: ``pip install 'rnnlm-service[ray]'``.
"""

from __future__ import annotations

import functools
import json
import logging
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from tqdm import tqdm

from model.score_run import WINDOW_LINES, ScoreRunError, Stopper, resume_point, where
from model.scorer import InputLineError, ScoreOptions, Scorer

logger = logging.getLogger(__name__)

# A read task's share of an input file, and the rows of one block it yields.
RANGE_BYTES = 16 << 20
BLOCK_ROWS = 8192


def _ray() -> Any:
    """The ray module, or a ScoreRunError saying how to install it."""
    try:
        import ray
        import ray.data
    except ImportError:
        raise ScoreRunError(
            "--engine ray needs Ray Data: pip install 'rnnlm-service[ray]'") from None
    return ray


@dataclass(frozen=True)
class LineRange:
    """Bytes [start, end) of a file, which begin at input line first_line."""

    path: str
    start: int
    end: int
    first_line: int


def plan_ranges(inputs: tuple[str, ...], target: int = RANGE_BYTES, block: int = 1 << 20
                ) -> tuple[list[LineRange], dict[int, tuple[str, int]]]:
    """Each input cut at line starts every ~target bytes, lines numbered across the inputs
    (as the local engine numbers them); and where each file begins, for error messages."""
    ranges: list[LineRange] = []
    names: dict[int, tuple[str, int]] = {}
    line = 1  # the number of the next line to begin
    for name in inputs:
        names[line] = (name, line - 1)
        start, first, pos, last = 0, line, 0, b"\n"
        with open(name, "rb") as f:
            while data := f.read(block):
                nl = data.rfind(b"\n")
                line += data.count(b"\n")
                pos += len(data)
                last = data[-1:]
                if nl >= 0 and pos - start >= target:
                    cut = pos - len(data) + nl + 1  # after the block's last newline
                    ranges.append(LineRange(name, start, cut, first))
                    start, first = cut, line
        if pos > start:
            ranges.append(LineRange(name, start, pos, first))
        if last != b"\n":
            line += 1  # a last line without its newline is a line too
    return ranges, names


def _read_range(r: LineRange, skip: int) -> Iterator[Any]:
    """The (line, raw) rows of a range after input line skip, as Arrow tables."""
    lines: list[int] = []
    raws: list[bytes] = []
    with open(r.path, "rb") as f:
        f.seek(r.start)
        n, pos = r.first_line, r.start
        for raw in f:
            if pos >= r.end:
                break
            pos += len(raw)
            if n > skip:
                lines.append(n)
                raws.append(raw)
            n += 1
            if len(lines) == BLOCK_ROWS:
                yield _rows(lines, raws)
                lines, raws = [], []
    if lines:
        yield _rows(lines, raws)


def _rows(lines: list[int], raws: list[bytes]) -> Any:
    """An Arrow table of (line, raw) rows."""
    import pyarrow as pa

    return pa.table({"line": pa.array(lines, pa.int64()), "raw": pa.array(raws, pa.binary())})


def _datasource(ranges: list[LineRange], skip: int) -> Any:
    """A Ray Data Datasource with one read task per range."""
    from ray.data.block import BlockMetadata
    from ray.data.datasource import Datasource, ReadTask

    class LineRanges(Datasource):
        """Input files as (line, raw) rows, one read task per LineRange."""

        def estimate_inmemory_data_size(self) -> int:
            return sum(r.end - r.start for r in ranges)

        def get_read_tasks(self, parallelism: int, per_task_row_limit: int | None = None,
                           data_context: Any = None) -> list[Any]:
            return [
                ReadTask(functools.partial(_read_range, r, skip),
                         BlockMetadata(num_rows=None, size_bytes=r.end - r.start,
                                       exec_stats=None, input_files=(r.path,)),
                         per_task_row_limit=per_task_row_limit)
                for r in ranges
                if r.end > r.start
            ]

    return LineRanges()


class ScoreActor:
    """A Ray actor: the weights loaded once, one BLAS thread, windows of rows scored."""

    def __init__(self, weights: str, options: ScoreOptions, raise_on_stop: bool) -> None:
        from model.blas import set_num_threads

        set_num_threads(1)
        self.scorer = Scorer.load(weights)
        self.options = options
        self.raise_on_stop = raise_on_stop

    def __call__(self, batch: dict[str, Any]) -> dict[str, list[Any]]:
        lines = list(zip(batch["line"].tolist(), batch["raw"].tolist(), strict=True))
        chunk = self.scorer.score_lines(lines, self.options)
        texts = chunk.text.splitlines()  # json.dumps escapes newlines: one line a row
        rows = [json.loads(t)["line"] for t in texts]
        stops = [""] * len(texts)
        if chunk.stop is not None:
            if self.raise_on_stop:
                raise chunk.stop
            rows.append(chunk.stop.line)
            texts.append("")
            stops.append(chunk.stop.message)
        return {"line": rows, "json": texts, "stop": stops}


@dataclass(frozen=True)
class RayRun:
    """One ``rnnlm score --engine ray`` invocation."""

    weights: Path
    inputs: tuple[str, ...]
    out: Path | None = None
    out_dir: Path | None = None
    out_format: str = "jsonl"  # of the part files in out_dir: jsonl or parquet
    options: ScoreOptions = field(default_factory=ScoreOptions)
    address: str | None = None  # None: start a local Ray with this machine's CPUs
    actors: int | None = None  # None: one per CPU of the cluster
    resume: bool = False
    progress: bool = True
    window: int = WINDOW_LINES

    def check(self) -> None:
        """A ScoreRunError for what Ray cannot do here."""
        if "-" in self.inputs:
            raise ScoreRunError("--engine ray reads files (its read tasks may run on any "
                                "node), not standard input")
        for name in self.inputs:
            if not Path(name).is_file():
                raise ScoreRunError(f"{name}: no such input file")
        if (self.out is None) == (self.out_dir is None):
            raise ScoreRunError("--engine ray writes --out FILE (in input order) or "
                                "--out-dir DIR (part files): give one")
        if self.resume and self.out is None:
            raise ScoreRunError("--resume needs --out (the file to continue)")
        if self.out_format not in ("jsonl", "parquet"):
            raise ScoreRunError(f"--out-format must be jsonl or parquet, not {self.out_format}")
        if self.actors is not None and self.actors < 1:
            raise ScoreRunError(f"--workers must be at least 1, not {self.actors}")


def _part_sink(path: str, fmt: str) -> Any:
    """A Ray Data datasink writing each block's JSON lines as one part file."""
    from ray.data.datasource import BlockBasedFileDatasink

    class PartSink(BlockBasedFileDatasink):
        """Part files of finished output lines (JSON lines), or of their rows (Parquet)."""

        def __init__(self) -> None:
            super().__init__(path, file_format=fmt)

        def write_block_to_file(self, block: Any, file: Any) -> None:
            texts = block.to_arrow().column("json").to_pylist()
            if fmt == "jsonl":
                file.write("".join(t + "\n" for t in texts).encode("utf-8"))
                return
            import pyarrow as pa
            import pyarrow.parquet as pq

            pq.write_table(pa.Table.from_pylist([json.loads(t) for t in texts]), file)

    return PartSink()


def run_ray(run: RayRun) -> dict[str, Any]:
    """Score run's inputs on Ray Data; the totals (as run_score's)."""
    run.check()
    ray = _ray()
    skip = resume_point(run.out) if run.resume and run.out is not None else 0
    t0 = time.perf_counter()
    ranges, names = plan_ranges(run.inputs, RANGE_BYTES)
    if not ray.is_initialized():
        ray.init(address=run.address, include_dashboard=False, log_to_driver=False,
                 runtime_env={"env_vars": {"OPENBLAS_NUM_THREADS": "1"}})
    started = time.perf_counter() - t0
    ctx = ray.data.DataContext.get_current()
    ctx.execution_options.preserve_order = True
    ctx.enable_progress_bars = False
    ctx.raise_original_map_exception = True  # an actor's InputLineError, not a wrapper
    actors = run.actors or max(1, int(ray.cluster_resources().get("CPU", 1)))
    # Reading a range is light: its tasks take no CPU from the actors, which hold them all
    # (otherwise a pool as large as the cluster leaves the reads waiting for ever).
    ds = ray.data.read_datasource(_datasource(ranges, skip), num_cpus=0).map_batches(
        ScoreActor, fn_constructor_args=(str(run.weights), run.options, run.out is None),
        batch_size=run.window, batch_format="numpy", concurrency=actors, num_cpus=1,
    )
    totals = {"texts": 0, "tokens": 0, "errors": 0, "last_line": skip}
    stopped: int | None = None
    if run.out_dir is not None:
        try:
            ds.write_datasink(_part_sink(str(run.out_dir), run.out_format))
        except Exception as e:  # Ray wraps the actor's error; name the line as locally
            cause = _input_error(e)
            if cause is None:
                raise
            raise ScoreRunError(where(cause, names)) from None
    else:
        assert run.out is not None
        stopped = _write_in_order(ds, run, names, totals, t0)
    seconds = time.perf_counter() - t0
    summary: dict[str, Any] = {
        "weights": str(run.weights), "out": str(run.out) if run.out else None,
        "out_dir": str(run.out_dir) if run.out_dir else None, **totals,
        "resumed_after": skip, "seconds": seconds, "ray_start_seconds": started,
        "tokens_per_second": totals["tokens"] / seconds if seconds and run.out else None,
        "actors": actors, "engine": "ray", "status": "finished",
    }
    if stopped is not None:
        import signal

        summary["status"] = "stopped"
        summary["signal"] = signal.Signals(stopped).name
        logger.warning("stopped by %s after input line %d; run again with --resume to "
                       "continue", summary["signal"], totals["last_line"])
    logger.info("ray: %d actors, started in %.1f s; %s in %.1f s", actors, started,
                f"scored {totals['texts']} texts, {totals['tokens']} tokens" if run.out
                else f"wrote part files to {run.out_dir}", seconds)
    return summary


def _input_error(e: BaseException | None) -> InputLineError | None:
    """The InputLineError inside Ray's wrapping of an actor's exception, if any."""
    seen: set[int] = set()
    while e is not None and id(e) not in seen:
        if isinstance(e, InputLineError):
            return e
        seen.add(id(e))
        e = getattr(e, "cause", None) or e.__cause__ or e.__context__
    return None


def _write_in_order(ds: Any, run: RayRun, names: dict[int, tuple[str, int]],
                    totals: dict[str, int], t0: float) -> int | None:
    """Write the scored rows to run.out in input order; the signal that stopped it, if any."""
    assert run.out is not None
    run.out.parent.mkdir(parents=True, exist_ok=True)
    bar = tqdm(unit=" texts", file=sys.stderr, disable=not run.progress, dynamic_ncols=True)
    out: IO[str] = open(run.out, "a" if run.resume else "w", encoding="utf-8")  # noqa: SIM115
    failure: str | None = None
    try:
        with Stopper() as stopper:
            for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
                texts, stops = batch["json"].tolist(), batch["stop"].tolist()
                lines = batch["line"].tolist()
                good = []
                for n, t, s in zip(lines, texts, stops, strict=True):
                    if s:
                        failure = where(InputLineError(n, s), names)
                        break
                    good.append(t)
                out.write("".join(t + "\n" for t in good))
                out.flush()
                for t in good:
                    r = json.loads(t)
                    if "error" in r:
                        totals["errors"] += 1
                    else:
                        totals["texts"] += 1
                        totals["tokens"] += r["num_tokens"]
                if good:
                    totals["last_line"] = json.loads(good[-1])["line"]
                bar.update(len(good))
                dt = time.perf_counter() - t0
                bar.set_postfix_str(f"{totals['tokens']:,} tokens, "
                                    f"{totals['tokens'] / dt:,.0f} tok/s")
                if failure is not None or stopper.signal:
                    break
            stopped = stopper.signal
    finally:
        bar.close()
        out.close()
    if failure is not None:
        raise ScoreRunError(failure)
    return stopped


def score_dataset(ds: Any, weights: str | Path, field: str = "text", eos: bool = True,
                  return_tokens: bool = False, actors: int | None = None) -> Any:
    """A Ray Dataset with /perplexity's numbers added to each row, scoring its text column.

    For a pipeline of one's own: ``ds = ray.data.read_parquet(...)``, then
    ``score_dataset(ds, "weights/ptb-650", field="text")`` and any further step (a filter by
    perplexity, a write). The weights are loaded once per actor; ``actors`` is the pool size
    (default: one per CPU of the cluster).
    """
    ray = _ray()
    n = actors or max(1, int(ray.cluster_resources().get("CPU", 1)))
    return ds.map_batches(DatasetScorer, fn_constructor_args=(str(weights), field, eos,
                                                              return_tokens),
                          batch_format="pyarrow", concurrency=n, num_cpus=1)


class DatasetScorer:
    """A Ray actor for score_dataset: a text column in, the number columns added."""

    def __init__(self, weights: str, field: str, eos: bool, return_tokens: bool) -> None:
        from model.blas import set_num_threads

        set_num_threads(1)
        self.scorer = Scorer.load(weights)
        self.field, self.eos, self.return_tokens = field, eos, return_tokens

    def __call__(self, table: Any) -> Any:
        import pyarrow as pa

        texts = table.column(self.field).to_pylist()
        results = self.scorer.score(texts, eos=self.eos, return_tokens=self.return_tokens)
        for name in results[0] if results else ():
            table = table.append_column(name, pa.array([r[name] for r in results]))
        return table
