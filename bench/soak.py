"""Soak and load: mixed traffic at the engine's capacity against a real rnnlm-serve, on loopback.

Starts ``rnnlm-serve`` itself (the shipped weights/ptb-650, or --weights) on 127.0.0.1 and a
free port, reads the engine's capacity from /info, and runs that many closed-loop clients for
--minutes (default 10) of mixed traffic: /generate, /generate_stream, /perplexity, /next-word,
/tokenize and /health. Every answer is checked (a 200 must hold what its route promises: finite
perplexities >= 1, at most max_new_tokens tokens, a stream ending with its details).

Reports the requests, errors and intended 429s, and p50 / p99 latency per minute (and per
route for the whole run), and the server's RSS (VmRSS) before traffic, after the warm-up and
at the end. Exits 1 when a request failed (any answer but a correct 200 or a 429), when RSS
grew by 10 % or more from the end of the warm-up to the end (net of what the engine's bounded
prefix-state cache gained, as /info reports it), or when the server logged a
traceback or did not stop cleanly on SIGTERM; 2 when the server did not start. The last line
of stdout is one JSON object with every figure.

Run: .venv/bin/python -m bench.soak [--minutes 10] [--weights DIR] [--concurrency N]
(``make soak``; ``--minutes 0.5`` is a smoke run). Only loopback is used.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_WEIGHTS = REPO_ROOT / "weights" / "ptb-650"
PTB_TEST = REPO_ROOT.parent / "shared" / "data" / "ptb" / "ptb.test.txt"
HOST = "127.0.0.1"  # loopback only
DESCRIPTION = "Soak: mixed traffic at the engine's capacity against a real rnnlm-serve."

# Share of each kind of request in the mix.
MIX = {
    "generate": 0.25,
    "generate_stream": 0.15,
    "perplexity": 0.25,
    "next_word": 0.15,
    "tokenize": 0.10,
    "health": 0.10,
}


@dataclass
class Sample:
    """One finished request."""

    t: float  # seconds from the start of traffic to the end of the request
    kind: str
    status: int  # HTTP status, or 0 when no answer came
    latency: float  # seconds
    error: str | None  # what was wrong, when it was an error


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.soak", description=DESCRIPTION)
    p.add_argument("--minutes", type=float, default=10.0, help="traffic duration (default 10)")
    p.add_argument("--weights", type=Path, default=DEFAULT_WEIGHTS, help="weights directory")
    p.add_argument(
        "--concurrency",
        type=int,
        default=None,
        help="closed-loop clients (default: the engine's capacity from /info)",
    )
    p.add_argument(
        "--warmup-s",
        type=float,
        default=None,
        help="traffic before the start RSS is read (default: 10%% of the run, 5-60 s)",
    )
    p.add_argument("--max-rss-growth", type=float, default=0.10, help="allowed RSS growth")
    p.add_argument("--seed", type=int, default=0, help="seed of the traffic mix")
    p.add_argument("--startup-timeout", type=float, default=180.0, help="seconds to get ready")
    return p.parse_args(argv)


# --------------------------------------------------------------------------- the server


def free_port() -> int:
    """A loopback port that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def rss_kib(pid: int) -> int:
    """VmRSS of a process in KiB (0 where /proc has no such process)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def start_server(
    weights: Path, log_path: Path, timeout: float
) -> tuple[subprocess.Popen[bytes], str]:
    """rnnlm-serve on a free loopback port, ready; raises SystemExit(2) when it is not."""
    port = free_port()
    cmd = [sys.executable, "-m", "app", "--host", HOST, "--port", str(port),
           "--weights", str(weights), "--log-level", "warning"]  # fmt: skip
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with log_path.open("wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO_ROOT)
    url = f"http://{HOST}:{port}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            break
        try:
            if httpx.get(url + "/health/ready", timeout=5).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    stop_server(proc)
    print(log_path.read_text(errors="replace")[-4000:], file=sys.stderr)
    print(f"rnnlm-serve did not become ready within {timeout:.0f} s", file=sys.stderr)
    raise SystemExit(2)


def stop_server(proc: subprocess.Popen[bytes]) -> int | None:
    """SIGTERM, then SIGKILL after 30 s; the exit status (None if it had to be killed)."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            return proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            return None
    return proc.returncode


# --------------------------------------------------------------------------- traffic


def load_sentences(weights: Path, rng: random.Random) -> list[str]:
    """PTB test sentences when the shared data is there, else random vocabulary words."""
    if PTB_TEST.is_file():
        lines = [ln.strip() for ln in PTB_TEST.read_text(encoding="utf-8").splitlines()]
        return [ln for ln in lines if ln]
    words = [w for w in (weights / "vocab.txt").read_text(encoding="utf-8").split() if "<" not in w]
    return [" ".join(rng.choices(words, k=rng.randint(3, 25))) for _ in range(2000)]


class Traffic:
    """Builds random requests of each kind and checks their answers."""

    def __init__(self, sentences: list[str], seed: int) -> None:
        self.sentences = sentences
        self.rng = random.Random(seed)

    def text(self, max_words: int = 40) -> str:
        words = self.rng.choice(self.sentences).split()
        return " ".join(words[: self.rng.randint(1, max_words)])

    def generate_params(self) -> dict[str, Any]:
        r = self.rng
        params: dict[str, Any] = {"max_new_tokens": r.randint(1, 40), "details": True}
        if r.random() < 0.7:
            params.update(do_sample=True, seed=r.randrange(2**32), temperature=r.uniform(0.5, 1.5))
            if r.random() < 0.5:
                params["top_k"] = r.randint(1, 50)
            if r.random() < 0.5:
                params["top_p"] = r.uniform(0.5, 0.99)
        if r.random() < 0.2:
            params["stop"] = [self.rng.choice(["the", "of the", "N"])]
        if r.random() < 0.2:
            params["repetition_penalty"] = r.uniform(1.0, 1.5)
        return params

    def request(self, kind: str) -> tuple[str, str, dict[str, Any] | None]:
        """(method, path, JSON body) of a random request of this kind."""
        r = self.rng
        if kind in ("generate", "generate_stream"):
            params = self.generate_params()
            if kind == "generate_stream":
                params.pop("details")
            return "POST", "/" + kind, {"inputs": self.text(30), "parameters": params}
        if kind == "perplexity":
            texts = [self.text() for _ in range(r.randint(1, 8))]
            return "POST", "/perplexity", {"texts": texts, "return_tokens": r.random() < 0.3}
        if kind == "next_word":
            body: dict[str, Any] = {"context": self.text(30), "top_k": r.randint(1, 20)}
            if r.random() < 0.5:
                body["targets"] = r.sample(self.text(10).split(), 1)
            return "POST", "/next-word", body
        if kind == "tokenize":
            return "POST", "/tokenize", {"text": self.text(60)}
        return "GET", "/health", None


def check_answer(kind: str, body: dict[str, Any] | None, status: int, text: str) -> str | None:
    """None when a 200 holds what its route promises, else what is wrong."""
    try:
        if kind == "generate_stream":
            events = [json.loads(ln[5:]) for ln in text.splitlines() if ln.startswith("data:")]
            if not events or any(e.get("error") for e in events):
                return f"stream error: {text[-300:]}"
            last = events[-1].get("details") or {}
            max_new = body["parameters"]["max_new_tokens"] if body else 0
            if last.get("generated_tokens") != len(events) or len(events) > max_new:
                return f"stream of {len(events)} events, details {last}"
            return None
        data = json.loads(text)
        if kind == "generate":
            n = data["details"]["generated_tokens"]
            if not 1 <= n <= body["parameters"]["max_new_tokens"]:  # type: ignore[index]
                return f"{n} tokens generated"
        elif kind == "perplexity":
            ppls = [res["perplexity"] for res in data["results"]]
            if not all(math.isfinite(p) and p >= 1.0 for p in ppls):
                return f"perplexities {ppls}"
        elif kind == "next_word":
            if not data["predictions"]:
                return "no predictions"
        elif kind == "tokenize":
            if data["num_tokens"] != len(data["ids"]):
                return "num_tokens != len(ids)"
        elif data.get("status") != "ready":
            return f"health {data}"
    except (ValueError, KeyError, TypeError) as e:
        return f"malformed answer ({type(e).__name__}: {e}): {text[:300]}"
    return None


async def one_request(client: httpx.AsyncClient, traffic: Traffic, kind: str) -> tuple[int, str]:
    """Send one request; (status, body text)."""
    method, path, body = traffic.request(kind)
    if kind == "generate_stream":
        async with client.stream(method, path, json=body) as response:
            text = (await response.aread()).decode("utf-8", errors="replace")
            status = response.status_code
    else:
        response = await client.request(method, path, json=body)
        status, text = response.status_code, response.text
    if status == 200:
        problem = check_answer(kind, body, status, text)
        if problem:
            raise ValueError(problem)
    return status, text


async def worker(
    client: httpx.AsyncClient,
    traffic: Traffic,
    t0: float,
    deadline: float,
    samples: list[Sample],
) -> None:
    """A closed-loop client: one request after another until the deadline."""
    kinds, weights = list(MIX), list(MIX.values())
    while time.monotonic() < deadline:
        kind = traffic.rng.choices(kinds, weights)[0]
        start = time.monotonic()
        error: str | None = None
        status = 0
        try:
            status, text = await one_request(client, traffic, kind)
            if status not in (200, 429):
                error = f"HTTP {status}: {text[:300]}"
        except (httpx.HTTPError, ValueError) as e:
            error = f"{type(e).__name__}: {e}"
        end = time.monotonic()
        samples.append(Sample(end - t0, kind, status, end - start, error))
        if status == 429:
            await asyncio.sleep(0.05)  # what Retry-After asks, shortened


async def rss_sampler(pid: int, t0: float, deadline: float, out: list[tuple[float, int]]) -> None:
    """The server's RSS every 5 s."""
    while time.monotonic() < deadline:
        out.append((time.monotonic() - t0, rss_kib(pid)))
        await asyncio.sleep(5.0)


async def cache_bytes(client: httpx.AsyncClient) -> int:
    """Bytes held by the engine's prefix-state cache (0 for an engine without one)."""
    try:
        engine = (await client.get("/info")).json().get("engine", {})
    except (httpx.HTTPError, ValueError):
        return 0
    cache = engine.get("cache")
    return int(cache.get("bytes", 0)) if isinstance(cache, dict) else 0


@dataclass
class Memory:
    """RSS (KiB) and the engine's state-cache bytes at the end of the warm-up and at the end."""

    rss_start: int = 0
    rss_end: int = 0
    cache_start: int = 0
    cache_end: int = 0


async def run_traffic(
    url: str, pid: int, concurrency: int, seconds: float, warmup_s: float, traffic: Traffic
) -> tuple[list[Sample], list[tuple[float, int]], Memory]:
    """Run the mix; the samples, the RSS series, and the memory after warm-up and at the end."""
    samples: list[Sample] = []
    memory = Memory()
    series: list[tuple[float, int]] = []
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=120.0, limits=limits) as client:
        t0 = time.monotonic()
        deadline = t0 + seconds
        workers = [
            asyncio.create_task(worker(client, traffic, t0, deadline, samples))
            for _ in range(concurrency)
        ]
        sampler = asyncio.create_task(rss_sampler(pid, t0, deadline, series))
        await asyncio.sleep(min(warmup_s, seconds))
        memory.rss_start, memory.cache_start = rss_kib(pid), await cache_bytes(client)
        await asyncio.gather(*workers)
        memory.rss_end, memory.cache_end = rss_kib(pid), await cache_bytes(client)
        sampler.cancel()
    return samples, series, memory


# --------------------------------------------------------------------------- report


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0-100) by the nearest-rank method; nan for no values."""
    if not values:
        return math.nan
    s = sorted(values)
    return s[min(len(s) - 1, max(0, math.ceil(q / 100 * len(s)) - 1))]


def per_minute(samples: list[Sample], seconds: float) -> list[dict[str, Any]]:
    """Requests, errors, 429s and latency percentiles for each minute of traffic."""
    buckets: dict[int, list[Sample]] = defaultdict(list)
    for s in samples:
        buckets[min(int(s.t // 60), max(0, math.ceil(seconds / 60) - 1))].append(s)
    rows = []
    for minute in sorted(buckets):
        ss = buckets[minute]
        lat = [s.latency for s in ss if s.error is None and s.status == 200]
        rows.append(
            {
                "minute": minute + 1,
                "requests": len(ss),
                "errors": sum(s.error is not None for s in ss),
                "overloaded_429": sum(s.status == 429 for s in ss),
                "p50_ms": round(percentile(lat, 50) * 1000, 1),
                "p99_ms": round(percentile(lat, 99) * 1000, 1),
            }
        )
    return rows


def per_kind(samples: list[Sample]) -> dict[str, dict[str, Any]]:
    """Requests and latency percentiles of each kind of request over the whole run."""
    out = {}
    for kind in MIX:
        ss = [s for s in samples if s.kind == kind]
        lat = [s.latency for s in ss if s.error is None and s.status == 200]
        out[kind] = {
            "requests": len(ss),
            "errors": sum(s.error is not None for s in ss),
            "p50_ms": round(percentile(lat, 50) * 1000, 1),
            "p99_ms": round(percentile(lat, 99) * 1000, 1),
        }
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    seconds = args.minutes * 60.0
    warmup_s = args.warmup_s if args.warmup_s is not None else min(60.0, max(5.0, 0.1 * seconds))
    log_dir = Path(tempfile.mkdtemp(prefix="rnnlm-soak-"))
    log_path = log_dir / "server.log"
    print(f"soak: {args.minutes:g} min of mixed traffic on {args.weights}; log {log_path}")
    proc, url = start_server(args.weights, log_path, args.startup_timeout)
    try:
        info = httpx.get(url + "/info", timeout=30).json()
        engine = info.get("engine", {})
        # Capacity: the streams the engine steps together (a batching engine), else its threads.
        capacity = int(engine.get("max_batch_size") or engine.get("threads") or 4)
        queue_size = int(engine.get("queue_size") or capacity)
        concurrency = args.concurrency or min(capacity, queue_size)
        rss_idle = rss_kib(proc.pid)
        print(
            f"server {url} pid {proc.pid}: engine {engine.get('kind', '?')}, capacity "
            f"{capacity}, queue {queue_size}; {concurrency} clients; warm-up {warmup_s:.0f} s"
        )
        traffic = Traffic(load_sentences(args.weights, random.Random(args.seed)), args.seed)
        samples, series, memory = asyncio.run(
            run_traffic(url, proc.pid, concurrency, seconds, warmup_s, traffic)
        )
        ready_after = httpx.get(url + "/health/ready", timeout=30).status_code == 200
        alive_after = proc.poll() is None
    finally:
        exit_status = stop_server(proc)
    log = log_path.read_text(encoding="utf-8", errors="replace")
    tracebacks = log.count("Traceback")

    errors = [s for s in samples if s.error is not None]
    minutes = per_minute(samples, seconds)
    rss_start, rss_end = memory.rss_start, memory.rss_end
    growth = (rss_end - rss_start) / rss_start if rss_start else math.nan
    # The prefix-state cache fills up to its configured size (state_cache_mb) by design:
    # growth is judged net of what it gained.
    cache_gain_kib = (memory.cache_end - memory.cache_start) / 1024
    net_growth = (rss_end - rss_start - cache_gain_kib) / rss_start if rss_start else math.nan
    statuses = Counter(s.status for s in samples)
    failures = []
    if errors:
        failures.append(f"{len(errors)} failed requests")
    if not (net_growth < args.max_rss_growth):
        failures.append(
            f"RSS grew {net_growth:+.1%} net of the state cache (limit {args.max_rss_growth:.0%})"
        )
    if tracebacks:
        failures.append(f"{tracebacks} tracebacks in the server log")
    if not (ready_after and alive_after):
        failures.append("the server was not ready after the run")
    if exit_status != 0:
        failures.append(f"the server exited with {exit_status} on SIGTERM")

    print(f"\n{'minute':>6} {'requests':>9} {'errors':>7} {'429':>5} {'p50 ms':>9} {'p99 ms':>9}")
    for row in minutes:
        print(
            f"{row['minute']:>6} {row['requests']:>9} {row['errors']:>7} "
            f"{row['overloaded_429']:>5} {row['p50_ms']:>9.1f} {row['p99_ms']:>9.1f}"
        )
    kinds = per_kind(samples)
    print(f"\n{'route':>16} {'requests':>9} {'errors':>7} {'p50 ms':>9} {'p99 ms':>9}")
    for kind, row in kinds.items():
        print(
            f"{kind:>16} {row['requests']:>9} {row['errors']:>7} {row['p50_ms']:>9.1f} "
            f"{row['p99_ms']:>9.1f}"
        )
    rate = len(samples) / seconds if seconds else 0.0
    print(
        f"\n{len(samples)} requests ({rate:.1f}/s), {len(errors)} errors, "
        f"{statuses.get(429, 0)} intended 429s; RSS idle {rss_idle / 1024:.1f} MiB, "
        f"start (after warm-up) {rss_start / 1024:.1f} MiB, end {rss_end / 1024:.1f} MiB "
        f"({growth:+.1%}; {net_growth:+.1%} net of the state cache's "
        f"{cache_gain_kib / 1024:+.1f} MiB); server exit {exit_status}, {tracebacks} tracebacks"
    )
    for e in errors[:10]:
        print(f"  error: {e.kind} at {e.t:.1f} s: {e.error}")
    print("PASS" if not failures else "FAIL: " + "; ".join(failures))
    summary = {
        "bench": "soak",
        "minutes": args.minutes,
        "weights": str(args.weights),
        "engine": engine,
        "concurrency": concurrency,
        "warmup_s": warmup_s,
        "requests": len(samples),
        "requests_per_s": round(rate, 2),
        "errors": len(errors),
        "error_examples": [asdict(e) for e in errors[:10]],
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
        "per_minute": minutes,
        "per_route": kinds,
        "latency_p99_ms_overall": round(
            percentile([s.latency for s in samples if s.error is None and s.status == 200], 99)
            * 1000,
            1,
        ),
        "rss_kib": {"idle": rss_idle, "start": rss_start, "end": rss_end},
        "rss_growth": round(growth, 4) if math.isfinite(growth) else None,
        "state_cache_bytes": {"start": memory.cache_start, "end": memory.cache_end},
        "rss_growth_net_of_cache": round(net_growth, 4) if math.isfinite(net_growth) else None,
        "rss_series_kib": series,
        "server_exit": exit_status,
        "server_tracebacks": tracebacks,
        "load_avg": os.getloadavg(),
        "median_latency_ms": round(
            statistics.median([s.latency for s in samples] or [math.nan]) * 1000, 1
        ),
        "passed": not failures,
        "failures": failures,
    }
    print(json.dumps(summary))
    return 0 if not failures else 1


if __name__ == "__main__":
    raise SystemExit(main())
