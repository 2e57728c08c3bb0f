"""Load benchmark: a batched and an unbatched rnnlm-serve under 1 to 64 concurrent clients.

Starts two loopback servers from the same weights: one batched (RNNLM_MAX_BATCH_SIZE=32), one
unbatched (RNNLM_MAX_BATCH_SIZE=1: requests are served one after another). Each scenario (an
endpoint and a number of concurrent async httpx clients, each sending its next request when
the last is answered) runs in --rounds rounds that alternate between the two servers (so a
drift in this shared machine's speed weighs on both alike), bounded in requests and in time,
and prints requests/s, tokens/s (scored or generated) and p50/p95/p99 latency over all rounds.
/perplexity sends single PTB test sentences; /generate sends the first words of one as the
prompt, max_new_tokens 50, stop_at_eos false (greedy).

Targets (a 2x650 model, `--model 650`): at 32 /generate clients the batched server's tokens/s
is at least 5x the unbatched one's; /perplexity p99 latency at 8 clients is at most 1.5x the
single-client latency (p50); no errors. Run it on a quiet machine: it warns when other
processes use the CPUs.

  python -m bench.load                 # the shipped weights/ptb-650, every scenario
  python -m bench.load --model 650     # random 2x650 weights (written to a temp dir)
  python -m bench.load --quick         # < 3 min: /generate at 1 and 32 clients; the last
                                       # line is the batched/unbatched tokens/s at 32
  python -m bench.load --smoke         # seconds: a tiny model, tiny counts (timings mean nothing)
  python -m bench.load --server-cpus 0,1 --client-cpus 2-5
                                       # servers on 2 CPUs, the load clients on 4 others
                                       # (Linux, a machine with more than 2 CPUs)

On a 2-CPU machine the load clients and the servers' HTTP work share the two cores the decode
step's two BLAS threads need; --server-cpus and --client-cpus keep them apart where there are
more, as a load test from another machine would.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from app.config import DEFAULT_WEIGHTS
from app.engine import Engine, GenerationRequest
from model.blas import set_num_threads, transposed_decode_is_faster
from model.corpus import DATA_DIR_ENV, PTB_FILES, build_vocab
from model.functions import log_softmax
from model.inference import InferenceModel, SamplingParams, score, step
from model.rnnlm import ModelConfig
from model.vocab import Vocab
from model.weights import LoadedWeights, load_weights, save_weights

REPO_ROOT = Path(__file__).resolve().parent.parent
SHARED_PTB = REPO_ROOT.parent / "shared" / "data" / "ptb"
GEN_TOKENS = 50
TARGET_GEN_RATIO = 5.0  # batched / unbatched generated tokens/s at 32 clients
TARGET_P99_RATIO = 1.5  # /perplexity p99 at 8 clients / p50 at 1 client (batched)


# --------------------------------------------------------------------------- inputs


def find_data_dir(flag: str | None) -> Path | None:
    """--data-dir, else $RNNLM_DATA_DIR, else ../shared/data/ptb; None when absent."""
    path = Path(flag or os.environ.get(DATA_DIR_ENV, "") or SHARED_PTB)
    if all((path / name).is_file() for name in PTB_FILES.values()):
        return path
    print(f"note: PTB not found at {path} (pass --data-dir or set {DATA_DIR_ENV}); "
          "sending random words of the vocabulary instead")
    return None


def sentences(data_dir: Path | None, vocab: Vocab, n: int = 3000) -> list[str]:
    """PTB test sentences (lines of ptb.test.txt), or random word strings without the data."""
    if data_dir is not None:
        lines = (data_dir / PTB_FILES["test"]).read_text(encoding="utf-8").splitlines()
        out = [" ".join(ln.split()) for ln in lines if len(ln.split()) >= 3]
        if out:
            return out
    rng = np.random.default_rng(0)
    words = [w for w in vocab.id_to_word if not w.startswith("<")]
    return [" ".join(rng.choice(words, int(k))) for k in rng.integers(5, 40, n)]


def default_vocab(data_dir: Path | None) -> Vocab:
    """The shipped model's vocabulary, else the PTB one, else 10,000 made-up words."""
    with contextlib.suppress(Exception):
        return load_weights(DEFAULT_WEIGHTS).vocab
    if data_dir is not None:
        return build_vocab(data_dir)
    return Vocab(["<eos>", "<unk>", *(f"w{i}" for i in range(9998))])


def random_weights(hidden: int, vocab: Vocab, out: Path) -> Path:
    """A random tied 2 x hidden model, scaled like a trained one (peaked distributions)."""
    cfg = ModelConfig(len(vocab), hidden, hidden, 2, True, 0.5)
    rng = np.random.default_rng(0)
    params: dict[str, np.ndarray] = {}
    for name, shape in cfg.param_shapes().items():
        if name == "embed.W":
            w = rng.standard_normal(shape) * (8.0 / np.sqrt(hidden))
        elif name == "affine.b":
            w = rng.standard_normal(shape)
        elif name.endswith(".b"):
            w = rng.standard_normal(shape) * 0.1
        else:
            w = rng.standard_normal(shape) / np.sqrt(shape[0])
        params[name] = w.astype(np.float32)
    return save_weights(out, cfg, params, vocab, dtype="float32")


# --------------------------------------------------------------------------- servers


@dataclass
class Server:
    """An rnnlm-serve subprocess."""

    name: str
    url: str
    process: subprocess.Popen[bytes]
    log: Path


def parse_cpus(spec: str) -> frozenset[int]:
    """A CPU list as taskset takes it ("0,1", "2-5", "0-1,4") -> the CPU numbers."""
    cpus: set[int] = set()
    try:
        for part in spec.split(","):
            first, dash, last = part.strip().partition("-")
            lo, hi = int(first), int(last if dash else first)
            if lo < 0 or hi < lo:
                raise ValueError(part)
            cpus.update(range(lo, hi + 1))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a CPU list like 0,1 or 2-5: {spec!r}") from None
    return frozenset(cpus)


@contextlib.contextmanager
def on_cpus(cpus: frozenset[int] | None, blas: bool = False) -> Iterator[None]:
    """Run this process and those it starts on these CPUs only (None: as it is)."""
    # With blas, OpenBLAS also uses one thread per CPU, as a server started on them does
    # (OpenBLAS counts the CPUs a process may use when it loads).
    if cpus is None:
        yield
        return
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, cpus)
    threads = set_num_threads(len(cpus)) if blas else None
    try:
        yield
    finally:
        if threads is not None:
            set_num_threads(threads)
        os.sched_setaffinity(0, before)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def serve(name: str, weights: Path, batch_size: int, log_dir: Path,
          cpus: frozenset[int] | None = None) -> Iterator[Server]:
    """Start rnnlm-serve on a loopback port with the given batch size (on `cpus` when given);
    stop it after."""
    port = _free_port()
    env = {
        **os.environ,
        "RNNLM_WEIGHTS": str(weights),
        "RNNLM_MAX_BATCH_SIZE": str(batch_size),
        "RNNLM_QUEUE_SIZE": "4096",
        "RNNLM_REQUEST_TIMEOUT_S": "900",
        "RNNLM_MAX_NEW_TOKENS": str(max(GEN_TOKENS, 512)),
        "RNNLM_DRAIN_SECONDS": "0",
        "RNNLM_LOG_LEVEL": "warning",
    }
    log = log_dir / f"{name}.log"
    cmd = [sys.executable, "-m", "app", "--host", "127.0.0.1", "--port", str(port)]
    with log.open("wb") as f, on_cpus(cpus):
        proc = subprocess.Popen(cmd, env=env, stdout=f, stderr=subprocess.STDOUT, cwd=REPO_ROOT)
    server = Server(name, f"http://127.0.0.1:{port}", proc, log)
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"{name} server did not start:\n{log.read_text()[-3000:]}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(server.url + "/health/ready", timeout=2).status_code == 200:
                    break
            time.sleep(0.2)
        yield server
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


# --------------------------------------------------------------------------- load


@dataclass
class Result:
    """One scenario on one server."""

    server: str
    endpoint: str
    clients: int
    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)
    tokens: int = 0
    errors: int = 0
    first_error: str = ""
    server_cpu_s: float = 0.0  # CPU time of the server process (all its threads)
    client_cpu_s: float = 0.0  # CPU time of this process, which runs the load clients

    def pct(self, q: float) -> float:
        """Latency percentile q in ms (nan without answers)."""
        return float(np.percentile(self.latencies, q)) * 1e3 if self.latencies else float("nan")

    @property
    def rps(self) -> float:
        return len(self.latencies) / self.seconds if self.seconds else 0.0

    @property
    def tps(self) -> float:
        return self.tokens / self.seconds if self.seconds else 0.0

    def cpu_ms(self, seconds: float) -> float:
        """CPU milliseconds a request (nan without answers)."""
        n = len(self.latencies) + self.errors
        return seconds / n * 1e3 if n else float("nan")

    def add(self, other: Result) -> None:
        """Fold another round of the same scenario into this one."""
        self.seconds += other.seconds
        self.latencies += other.latencies
        self.tokens += other.tokens
        self.errors += other.errors
        self.first_error = self.first_error or other.first_error
        self.server_cpu_s += other.server_cpu_s
        self.client_cpu_s += other.client_cpu_s

    def row(self) -> list[str]:
        return [self.server, self.endpoint, str(self.clients), str(len(self.latencies)),
                str(self.errors), f"{self.seconds:.1f}", f"{self.rps:.1f}", f"{self.tps:.0f}",
                f"{self.pct(50):.0f}", f"{self.pct(95):.0f}", f"{self.pct(99):.0f}",
                f"{self.cpu_ms(self.server_cpu_s):.1f}", f"{self.cpu_ms(self.client_cpu_s):.1f}"]

    def as_dict(self) -> dict[str, Any]:
        return {"server": self.server, "endpoint": self.endpoint, "clients": self.clients,
                "requests": len(self.latencies), "errors": self.errors,
                "seconds": round(self.seconds, 3), "requests_per_s": round(self.rps, 2),
                "tokens_per_s": round(self.tps, 1), "p50_ms": round(self.pct(50), 1),
                "p95_ms": round(self.pct(95), 1), "p99_ms": round(self.pct(99), 1),
                "server_cpu_ms_per_request": round(self.cpu_ms(self.server_cpu_s), 2),
                "client_cpu_ms_per_request": round(self.cpu_ms(self.client_cpu_s), 2),
                "first_error": self.first_error or None}


def prompt_words(text: str) -> list[str]:
    """A /generate prompt: the first five words of a sentence."""
    return text.split()[:5]


def body_of(endpoint: str, text: str, max_new: int) -> dict[str, Any]:
    """A request: one sentence to score, or its first five words as a prompt."""
    if endpoint == "/perplexity":
        return {"text": text}
    return {"inputs": " ".join(prompt_words(text)),
            "parameters": {"max_new_tokens": max_new, "stop_at_eos": False, "details": True}}


def tokens_of(endpoint: str, answer: dict[str, Any]) -> int:
    """Tokens scored or generated by an answer."""
    if endpoint == "/perplexity":
        return int(answer["aggregate"]["num_tokens"])
    return int(answer["details"]["generated_tokens"])


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process and all its threads so far (Linux; else 0)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0.0
    # utime and stime are fields 14 and 15 of stat(5), 12 and 13 after "(comm) state"
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def drive(server: Server, endpoint: str, clients: int, texts: list[str], total: int,
                limit_s: float, max_new: int, stagger_s: float = 0.0) -> Result:
    """`clients` concurrent clients, each sending its next request when answered, until
    `total` requests are sent or limit_s has passed. Client i starts i/clients of stagger_s
    late, as independent users do: started together, equal generations would finish
    together in waves, and the server would idle while a whole wave crosses HTTP."""
    res = Result(server.name, endpoint, clients)
    issued = 0

    async def client(i: int, http: httpx.AsyncClient) -> None:
        nonlocal issued
        await asyncio.sleep(stagger_s * i / clients)
        async with http:
            while issued < total and time.perf_counter() < deadline:
                text = texts[issued % len(texts)]
                issued += 1
                t0 = time.perf_counter()
                try:
                    r = await http.post(endpoint, json=body_of(endpoint, text, max_new))
                    ok = r.status_code == 200
                    if ok:
                        res.tokens += tokens_of(endpoint, r.json())
                    elif not res.first_error:
                        res.first_error = f"{r.status_code} {r.text[:200]}"
                except httpx.HTTPError as e:
                    ok = False
                    res.first_error = res.first_error or repr(e)
                if ok:
                    res.latencies.append(time.perf_counter() - t0)
                else:
                    res.errors += 1

    # One connection per client, as separate users have: clients sharing one pool of 64
    # connections spent about 6 ms of CPU a request in it, on the server's cores. Made before
    # the clock starts: each builds an SSL context, tens of ms of CPU.
    https = [httpx.AsyncClient(base_url=server.url, timeout=600) for _ in range(clients)]
    server_cpu, client_cpu = process_cpu_s(server.process.pid), time.process_time()
    start = time.perf_counter()
    deadline = start + limit_s
    await asyncio.gather(*(client(i, http) for i, http in enumerate(https)))
    res.seconds = time.perf_counter() - start
    res.server_cpu_s = process_cpu_s(server.process.pid) - server_cpu
    res.client_cpu_s = time.process_time() - client_cpu
    return res


async def warm(server: Server, texts: list[str], max_new: int) -> None:
    """A few requests of each kind before timing (first-call costs, caches of the process)."""
    async with httpx.AsyncClient(base_url=server.url, timeout=600) as http:
        for endpoint in ("/perplexity", "/generate"):
            await asyncio.gather(*(http.post(endpoint, json=body_of(endpoint, t, max_new))
                                   for t in texts[-4:]))


# --------------------------------------------------------------------------- floor


def forward_floor(loaded: LoadedWeights, texts: list[str], batch: int = 8,
                  rounds: int = 40) -> tuple[float, float]:
    """Median in-process seconds of one scoring forward of 1 sentence and of `batch` sentences.

    Their ratio bounds /perplexity p99(8 clients) / p50(1 client) from below: with no HTTP or
    Python cost at all, 8 clients that arrive together wait for one forward of 8 sentences.
    """
    model = InferenceModel.from_params(loaded.config, loaded.params)
    eos = loaded.vocab.eos_id
    seqs = [[eos, *loaded.vocab.encode(t.split()), eos] for t in texts[: rounds * batch]]
    one, many = [], []
    for r in range(rounds):
        group = seqs[r * batch : (r + 1) * batch]
        t0 = time.perf_counter()
        for sq in group:  # the same sentences, one forward each: the per-sentence average
            score(model, [sq[:-1]], [sq[1:]])
        t1 = time.perf_counter()
        score(model, [sq[:-1] for sq in group], [sq[1:] for sq in group])
        t2 = time.perf_counter()
        one.append((t1 - t0) / batch)
        many.append(t2 - t1)
    return statistics.median(one), statistics.median(many)


def decode_ceiling(loaded: LoadedWeights, streams: int = 32, steps: int = 60) -> float:
    """In-process tokens/s of greedy decode steps at `streams` over those at batch 1.

    It bounds the batched / unbatched /generate ratio from above: with no HTTP or Python
    cost at all, a server can batch no better than the model's step does.
    """
    model = InferenceModel.from_params(loaded.config, loaded.params,
                                       decode_transposed=transposed_decode_is_faster())

    def rate(n: int) -> float:
        state, ids, times = model.zero_state(n), np.zeros(n, np.int64), []
        for _ in range(steps):
            t0 = time.perf_counter()
            logits, state = step(model, ids, state)
            ids = log_softmax(logits, axis=1).argmax(axis=1)
            times.append(time.perf_counter() - t0)
        return n / statistics.median(times)

    return rate(streams) / rate(1)


def engine_ratio(loaded: LoadedWeights, texts: list[str], streams: int = 32, per_stream: int = 16,
                 max_new: int = GEN_TOKENS, stagger_s: float = 0.5) -> tuple[float, float]:
    """In-process tokens/s of the engine itself, batched and with max_batch_size 1.

    The load's /generate scenario without HTTP: `streams` closed-loop greedy generations of
    the same prompts. Between the model's step (decode_ceiling) and the servers, it shows what
    the engine's own Python (planning, picking, delivering, prompts read in the batch) costs.
    """
    eos = loaded.vocab.eos_id
    prompts = [[eos, *loaded.vocab.encode(prompt_words(t))] for t in texts[: streams * per_stream]]
    greedy = SamplingParams(do_sample=False)

    async def rate(batch_size: int, total: int) -> float:
        engine = Engine(loaded, 4 * streams, max_batch_size=batch_size)
        await engine.warmup()
        issued = tokens = 0

        async def client(i: int) -> None:
            nonlocal issued, tokens
            await asyncio.sleep(stagger_s * i / streams)  # staggered as the HTTP clients are
            while issued < total:
                prompt = prompts[issued % len(prompts)]
                issued += 1
                req = GenerationRequest.of(prompt, max_new, greedy, None, False)
                steps = await engine.generate_all(req)
                tokens += len(steps)  # not `tokens += len(await ...)`: that reads tokens first

        start = time.perf_counter()
        await asyncio.gather(*(client(i) for i in range(streams)))
        seconds = time.perf_counter() - start
        await engine.aclose()
        return tokens / seconds

    batched = asyncio.run(rate(streams, streams * per_stream))
    unbatched = asyncio.run(rate(1, 2 * streams))
    return batched, unbatched


# --------------------------------------------------------------------------- report


def cpu_others(seconds: float = 0.5) -> float:
    """Percent of all CPU time other processes used over a short idle wait (Linux)."""
    def ticks() -> tuple[int, int]:
        try:
            v = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
        except (OSError, ValueError):
            return 0, 1
        return v[0] + v[1] + v[2] + v[5] + v[6], sum(v)

    b0, t0 = ticks()
    time.sleep(seconds)
    b1, t1 = ticks()
    return 100.0 * (b1 - b0) / max(t1 - t0, 1)


def cpu_list(cpus: frozenset[int] | None) -> str:
    """A CPU set for the report ("any" when not pinned)."""
    return ",".join(map(str, sorted(cpus))) if cpus else "any"


def print_table(results: list[Result]) -> None:
    head = ["server", "endpoint", "clients", "ok", "errors", "s", "req/s", "tok/s", "p50 ms",
            "p95 ms", "p99 ms", "srv cpu ms/req", "cli cpu ms/req"]
    rows = [head, *(r.row() for r in results)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
    for n, row in enumerate(rows):
        print("  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)), flush=True)
        if n == 0:
            print("  ".join("-" * w for w in widths))


def find(results: list[Result], server: str, endpoint: str, clients: int) -> Result | None:
    return next((r for r in results if (r.server, r.endpoint, r.clients) ==
                 (server, endpoint, clients)), None)


def main(argv: list[str] | None = None) -> int:
    """Entry point."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true",
                      help="< 3 min: /generate only, 1 and 32 clients, fewer requests")
    mode.add_argument("--smoke", action="store_true",
                      help="seconds: a tiny random model and tiny counts (checks the script)")
    p.add_argument("--model", choices=["shipped", "650"], default="shipped",
                   help="the shipped weights/ptb-650 (default) or random 2x650 weights")
    p.add_argument("--weights", help="serve this weights directory instead")
    p.add_argument("--data-dir", help=f"PTB folder (default ${DATA_DIR_ENV} or "
                   "../shared/data/ptb)")
    p.add_argument("--clients", help="comma-separated client counts (default 1,8,32,64)")
    p.add_argument("--endpoints", help="comma-separated endpoints (default /perplexity,/generate)")
    p.add_argument("--time-limit", type=float, help="seconds per scenario and server")
    p.add_argument("--batch-size", type=int, default=32, help="the batched server's batch size")
    p.add_argument("--per-client", type=int,
                   help="requests per client (default /perplexity 25, /generate 20, or 16 "
                   "with --quick), within --time-limit")
    p.add_argument("--rounds", type=int,
                   help="rounds per scenario, alternating the servers (default 3, 2 with "
                   "--quick, 1 with --smoke)")
    p.add_argument("--stagger", type=float, default=0.5,
                   help="seconds over which the clients of a /generate scenario start "
                   "(default 0.5; 0 starts them together)")
    p.add_argument("--server-cpus", type=parse_cpus, metavar="LIST",
                   help="run the servers and the in-process figures on these CPUs (0,1 or 0-1)")
    p.add_argument("--client-cpus", type=parse_cpus, metavar="LIST",
                   help="run the load clients on these CPUs (2-5)")
    args = p.parse_args(argv)
    if args.server_cpus or args.client_cpus:
        if not hasattr(os, "sched_setaffinity"):
            p.error("--server-cpus and --client-cpus need Linux")
        usable = os.sched_getaffinity(0)
        pinned = (("--server-cpus", args.server_cpus), ("--client-cpus", args.client_cpus))
        for flag, cpus in pinned:
            if cpus and not cpus <= usable:
                p.error(f"{flag}: CPUs {sorted(cpus - usable)} are not among this process's "
                        f"{sorted(usable)}")
        if args.server_cpus and args.client_cpus and args.server_cpus & args.client_cpus:
            print(f"WARNING: the servers and the clients share CPUs "
                  f"{sorted(args.server_cpus & args.client_cpus)}")
    server_cpus, client_cpus = args.server_cpus, args.client_cpus

    clients = [1, 32] if args.quick else [1, 4] if args.smoke else [1, 8, 32, 64]
    if args.clients:
        clients = [int(c) for c in args.clients.split(",")]
    endpoints = ["/generate"] if args.quick else ["/perplexity", "/generate"]
    if args.endpoints:
        endpoints = [e if e.startswith("/") else "/" + e for e in args.endpoints.split(",")]
    limit_s = args.time_limit or (10.0 if args.smoke else 30.0 if args.quick else 60.0)
    rounds = max(1, args.rounds or (1 if args.smoke else 2 if args.quick else 3))
    max_new = 10 if args.smoke else GEN_TOKENS

    def total(endpoint: str, n: int) -> int:
        if args.smoke:
            return 2 * n
        if args.per_client:
            return args.per_client * n
        # enough answers for a p99 worth the name, and enough rounds per client that the
        # ramp at the start and the stragglers at the end weigh little in tokens/s
        if endpoint == "/perplexity":
            return max(200, 25 * n)
        # 50 tokens each: at 6 a client, the ramp and the drain of the last wave took a
        # quarter of a 32-client run, so the batched figure measured mostly a part-full batch
        return max(10, 16 * n) if args.quick else max(24, 20 * n)

    others = cpu_others()
    if others > 10:
        print(f"WARNING: other processes use {others:.0f}% of the CPUs (a training run?): "
              "timings will be slow and noisy; compare ratios only on a quiet machine")
    data_dir = find_data_dir(args.data_dir)
    with tempfile.TemporaryDirectory(prefix="rnnlm-load-") as tmp:
        tmp_dir = Path(tmp)
        if args.weights:
            weights = Path(args.weights)
        elif args.smoke:
            weights = random_weights(32, default_vocab(data_dir), tmp_dir / "smoke-2x32")
        elif args.model == "650":
            weights = random_weights(650, default_vocab(data_dir), tmp_dir / "random-2x650")
        else:
            weights = DEFAULT_WEIGHTS
        loaded = load_weights(weights)
        cfg = loaded.config
        texts = sentences(data_dir, loaded.vocab)
        print(f"model {cfg.num_layers}x{cfg.hidden_size} V={cfg.vocab_size} ({weights}); "
              f"clients {clients}; {len(texts)} test sentences; at most {limit_s:.0f} s per "
              "scenario and server", flush=True)
        if server_cpus or client_cpus:
            print(f"CPUs: servers {cpu_list(server_cpus)}, load clients {cpu_list(client_cpus)}",
                  flush=True)
        results: list[Result] = []
        # per scenario, the batched / unbatched tokens/s of each round
        paired: dict[tuple[str, int], list[float]] = {}
        with (serve("batched", weights, args.batch_size, tmp_dir, server_cpus) as batched,
              serve("unbatched", weights, 1, tmp_dir, server_cpus) as unbatched):
            info = httpx.get(batched.url + "/info", timeout=30).json()
            print("blas:", json.dumps(info.get("blas")), flush=True)
            for server in (batched, unbatched):
                with on_cpus(client_cpus):
                    asyncio.run(warm(server, texts, max_new))
            rng = np.random.default_rng(0)
            for endpoint in endpoints:
                for n in clients:
                    # the same requests for both servers, a fresh slice per scenario
                    start = int(rng.integers(0, len(texts)))
                    batch = texts[start:] + texts[:start]
                    stagger = args.stagger if endpoint == "/generate" else 0.0
                    per_round = max(1, -(-total(endpoint, n) // rounds))
                    both = {s.name: Result(s.name, endpoint, n) for s in (batched, unbatched)}
                    ratios = paired.setdefault((endpoint, n), [])
                    for r in range(rounds):
                        texts_r = batch[r * per_round:] + batch[: r * per_round]
                        got: dict[str, Result] = {}
                        for server in (batched, unbatched)[:: 1 if r % 2 == 0 else -1]:
                            with on_cpus(client_cpus):
                                got[server.name] = asyncio.run(drive(
                                    server, endpoint, n, texts_r, per_round, limit_s / rounds,
                                    max_new, stagger))
                            both[server.name].add(got[server.name])
                            time.sleep(0.5)  # let the idle BLAS threads stop spinning
                        if got["unbatched"].tps:
                            ratios.append(got["batched"].tps / got["unbatched"].tps)
                    results += [both["batched"], both["unbatched"]]
                    print(f"  done: {endpoint} x {n} clients", flush=True)
        print()
        print_table(results)
        print()
        errors = sum(r.errors for r in results)
        for r in results:
            if r.first_error:
                print(f"first error on {r.server} {r.endpoint} x {r.clients}: {r.first_error}")
        summary: dict[str, Any] = {"errors": errors}
        n_gen = 32 if 32 in clients else max(clients)
        gb, gu = find(results, "batched", "/generate", n_gen), find(
            results, "unbatched", "/generate", n_gen)
        ratio = gb.tps / gu.tps if gb and gu and gu.tps else float("nan")
        if gb and gu:
            per = paired.get(("/generate", n_gen), [])
            summary["generate_tokens_per_s_ratio"] = {
                "clients": n_gen, "ratio": round(ratio, 2), "target": TARGET_GEN_RATIO,
                "rounds": [round(x, 2) for x in per]}
            verdict = "ok" if ratio >= TARGET_GEN_RATIO else "MISS"
            spread = f" [{min(per):.2f}-{max(per):.2f} over {len(per)} rounds]" if per else ""
            print(f"/generate x {n_gen}: batched {gb.tps:.0f} tok/s, unbatched {gu.tps:.0f} "
                  f"tok/s: {ratio:.2f}x{spread} (target >= {TARGET_GEN_RATIO:g}x with 2x650) "
                  f"{verdict}")
            with on_cpus(server_cpus, blas=True):
                ceiling = decode_ceiling(loaded, n_gen)
            summary["generate_tokens_per_s_ratio"]["ceiling"] = round(ceiling, 2)
            print(f"  ceiling: in-process, a decode step of {n_gen} streams yields {ceiling:.2f}x "
                  "the tokens/s of one stream before any HTTP cost")
            with on_cpus(server_cpus, blas=True):
                eb, eu = engine_ratio(loaded, texts, n_gen, max_new=max_new,
                                      stagger_s=args.stagger)
            summary["generate_tokens_per_s_ratio"]["engine"] = round(eb / eu, 2)
            print(f"  engine: in-process, without HTTP, {n_gen} generations batched make "
                  f"{eb:.0f} tok/s against {eu:.0f} one at a time: {eb / eu:.2f}x")
            cores = len(server_cpus) if server_cpus else os.cpu_count() or 1
            share = gb.client_cpu_s / gb.seconds / cores * 100 if gb.seconds else float("nan")
            apart = bool(server_cpus and client_cpus and not server_cpus & client_cpus)
            where = ("ran on CPUs apart from the server's" if apart else
                     f"took {share:.0f}% of the {cores} cores the server computes on")
            print(f"  CPU a request, batched: server {gb.cpu_ms(gb.server_cpu_s):.1f} ms, load "
                  f"clients {gb.cpu_ms(gb.client_cpu_s):.1f} ms; the clients {where}")
        p1 = find(results, "batched", "/perplexity", 1)
        p8 = find(results, "batched", "/perplexity", 8)
        if p1 and p8 and p1.latencies and p8.latencies:
            single = statistics.median(p1.latencies) * 1e3
            lat = p8.pct(99) / single
            with on_cpus(server_cpus, blas=True):
                f1, f8 = forward_floor(loaded, texts)
            summary["perplexity_p99_8_over_single"] = {
                "ratio": round(lat, 2), "target": TARGET_P99_RATIO,
                "forward_1_ms": round(f1 * 1e3, 2), "forward_8_ms": round(f8 * 1e3, 2),
                "floor": round(f8 / f1, 2)}
            print(f"/perplexity: p99 at 8 clients {p8.pct(99):.0f} ms, single client "
                  f"{single:.0f} ms: {lat:.2f}x (target <= {TARGET_P99_RATIO:g}x) "
                  f"{'ok' if lat <= TARGET_P99_RATIO else 'MISS'}")
            print(f"  floor: in-process, one forward of 8 sentences takes {f8 * 1e3:.1f} ms "
                  f"against {f1 * 1e3:.1f} ms for one: {f8 / f1:.2f}x before any HTTP cost")
        print(f"errors: {errors} ({'ok' if errors == 0 else 'MISS'})")
        summary["results"] = [r.as_dict() for r in results]
        summary["model"] = f"{cfg.num_layers}x{cfg.hidden_size}"
        summary["others_cpu_pct"] = round(others, 1)
        summary["cpus"] = {"servers": sorted(server_cpus) if server_cpus else None,
                           "clients": sorted(client_cpus) if client_cpus else None}
        if args.quick:
            print(json.dumps(summary))
            print(f"batched/unbatched generated tokens/s at {n_gen} clients: {ratio:.2f}")
        else:
            print(json.dumps(summary))
    return 1 if errors else 0


if __name__ == "__main__":
    raise SystemExit(main())
