"""Shared helpers of the benchmarks: models, the torch twin, BLAS facts, interleaved timing.

PyTorch is imported only here, lazily, and only by the benchmarks: it is never a
dependency of the service or its tests. Timing follows /work/shared/PERFORMANCE.md: the
machine is noisy, so numpy and torch run in interleaved rounds (round-robin, the order
rotated each round) and each figure is the median of the round medians, with the
[min-max] over all samples.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from model.corpus import DATA_DIR_ENV, PTB_FILES, build_vocab, split_path
from model.rnnlm import ModelConfig
from model.vocab import Vocab

REPO_ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"
BOOK_PKL = SHARED_DATA / "book" / "Rnnlm.pkl"
TORCH_PIN = "torch==2.13.0"
# OpenBLAS cores that reach this machine's GEMM peak (PERFORMANCE.md: Zen maps to Haswell);
# a wrong one (e.g. OPENBLAS_CORETYPE=Prescott) is up to 6x slower.
GOOD_CORES = ("haswell", "zen")
AVX512_CORES = ("skylakex", "cooperlake", "sapphirerapids")  # fine where the CPU has AVX-512


# --------------------------------------------------------------------------- torch
def require_torch() -> Any:
    """Import torch, or exit with the install command (torch is a benchmark-only tool)."""
    try:
        import torch
    except ImportError:
        print(
            "PyTorch is not installed in this environment. The benchmarks compare against it\n"
            "and it is never a dependency of the service, so use a separate venv:\n"
            "  python3 -m venv .venv-bench\n"
            f"  .venv-bench/bin/pip install {TORCH_PIN} threadpoolctl\n"
            "  .venv-bench/bin/pip install -c constraints.txt -e .\n"
            "(pin the version: an unpinned `pip install torch` pulls a multi-GB CUDA build)",
            file=sys.stderr,
        )
        raise SystemExit(2) from None
    return torch


def gate_columns(H: int) -> np.ndarray:
    """Columns of our 4H axis (f, g, i, o) in PyTorch's order (i, f, g, o)."""
    return np.concatenate([np.arange(H) + k * H for k in (2, 0, 1, 3)])


def build_torch_lm(
    config: ModelConfig,
    params: Mapping[str, np.ndarray],
    dropout: float = 0.0,
    dtype: Any = None,
) -> Any:
    """The same model in PyTorch with a copy of ``params``; time-major like ours."""
    # Embedding -> Dropout -> nn.LSTM(L layers, dropout between) -> Dropout -> Linear tied
    # to the embedding. model(ids (T, N), (h0, c0)) -> top outputs (T, N, H) and the state;
    # model.out is the output layer.
    torch = require_torch()
    from torch import nn

    V, D, H, L = config.vocab_size, config.wordvec_size, config.hidden_size, config.num_layers

    class TorchRnnlm(nn.Module):
        """BetterRnnlm in PyTorch's most favourable standard modules."""

        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Embedding(V, D)
            self.drop = nn.Dropout(dropout)
            # nn.LSTM's own dropout acts between its layers, which is where ours is.
            self.lstm = nn.LSTM(D, H, num_layers=L, dropout=dropout if L > 1 else 0.0)
            self.out = nn.Linear(H, V)
            if config.tied:
                self.out.weight = self.embed.weight

        def forward(self, ids: Any, state: Any = None) -> tuple[Any, Any]:
            x = self.drop(self.embed(ids))  # (T, N, D)
            y, state = self.lstm(x, state)  # (T, N, H)
            return self.drop(y), state

    m = TorchRnnlm().to(dtype or torch.float32)  # .to keeps the tied Parameter shared
    cols = gate_columns(H)

    def t(a: np.ndarray) -> Any:
        return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float64))

    with torch.no_grad():
        m.embed.weight.copy_(t(params["embed.W"]))
        for k in range(L):
            getattr(m.lstm, f"weight_ih_l{k}").copy_(t(params[f"lstm.{k}.Wx"][:, cols].T))
            getattr(m.lstm, f"weight_hh_l{k}").copy_(t(params[f"lstm.{k}.Wh"][:, cols].T))
            getattr(m.lstm, f"bias_ih_l{k}").copy_(t(params[f"lstm.{k}.b"][cols]))
            # Our one bias sits in b_ih; b_hh stays 0 and frozen, so clipping sees the
            # same gradients as ours (a trained b_hh would duplicate b_ih's gradient).
            getattr(m.lstm, f"bias_hh_l{k}").zero_()
            getattr(m.lstm, f"bias_hh_l{k}").requires_grad_(False)
        if not config.tied:
            m.out.weight.copy_(t(params["affine.W"].T))
        m.out.bias.copy_(t(params["affine.b"]))
    assert m.out.weight is m.embed.weight or not config.tied
    return m


def torch_as_ours(m: Any, config: ModelConfig, grad: bool = False) -> dict[str, np.ndarray]:
    """The torch model's parameters (or their gradients) in our names, shapes and gate order."""
    H, L = config.hidden_size, config.num_layers
    cols = gate_columns(H)

    def get(p: Any) -> np.ndarray:
        return (p.grad if grad else p).detach().cpu().numpy()

    def ours(torch_w: np.ndarray) -> np.ndarray:
        w = np.empty((torch_w.shape[1], 4 * H), dtype=torch_w.dtype)  # (in, 4H)
        w[:, cols] = torch_w.T
        return w

    out = {"embed.W": get(m.embed.weight)}
    for k in range(L):
        out[f"lstm.{k}.Wx"] = ours(get(getattr(m.lstm, f"weight_ih_l{k}")))
        out[f"lstm.{k}.Wh"] = ours(get(getattr(m.lstm, f"weight_hh_l{k}")))
        b = np.empty(4 * H, dtype=out["embed.W"].dtype)
        b[cols] = get(getattr(m.lstm, f"bias_ih_l{k}"))
        if not grad:  # our one bias is b_ih + b_hh
            b[cols] += get(getattr(m.lstm, f"bias_hh_l{k}"))
        out[f"lstm.{k}.b"] = b
    if not config.tied:
        out["affine.W"] = get(m.out.weight).T.copy()
    out["affine.b"] = get(m.out.bias)
    return out


def set_threads(n: int | None, torch: Any) -> None:
    """Limit numpy's BLAS and torch to n threads (None: leave the libraries' defaults)."""
    if n is None:
        return
    torch.set_num_threads(n)
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        print(f"note: threadpoolctl is missing, so numpy keeps its threads; set "
              f"OPENBLAS_NUM_THREADS={n} before starting instead")
        return
    threadpool_limits(limits=n, user_api="blas")


# --------------------------------------------------------------------------- models
def random_params(config: ModelConfig, seed: int = 0) -> dict[str, np.ndarray]:
    """Random float32 weights scaled like a trained model (peaked next-word distributions)."""
    # The book's initialisation gives almost uniform output, which would make the equality
    # checks weak and greedy decoding a string of near-ties.
    rng = np.random.default_rng(seed)
    params: dict[str, np.ndarray] = {}
    for name, shape in config.param_shapes().items():
        if name in ("embed.W", "affine.W"):
            w = rng.standard_normal(shape) * (8.0 / np.sqrt(config.hidden_size))
        elif name == "affine.b":
            w = rng.standard_normal(shape)
        elif name.endswith(".b"):
            w = rng.standard_normal(shape) * 0.1
        else:
            w = rng.standard_normal(shape) / np.sqrt(shape[0])
        params[name] = w.astype(np.float32)
    return params


def lstm_config(hidden: int, vocab_size: int = 10000, layers: int = 2) -> ModelConfig:
    """A tied L x H BetterRnnlm config."""
    return ModelConfig(vocab_size=vocab_size, wordvec_size=hidden, hidden_size=hidden,
                       num_layers=layers, tied=True, dropout=0.5)


def model_name(config: ModelConfig) -> str:
    """'2x650 tied' and the like."""
    return f"{config.num_layers}x{config.hidden_size} {'tied' if config.tied else 'untied'}"


# --------------------------------------------------------------------------- data
def find_data_dir(flag: str | None) -> Path | None:
    """The PTB folder: --data-dir, else $RNNLM_DATA_DIR, else ../shared/data/ptb; None if absent."""
    path = Path(flag or os.environ.get(DATA_DIR_ENV, "") or SHARED_DATA / "ptb")
    if all((path / name).is_file() for name in PTB_FILES.values()):
        return path
    print(f"note: PTB not found at {path} (pass --data-dir or set {DATA_DIR_ENV}); "
          "using random token ids instead of real text")
    return None


def ptb_vocab(data_dir: Path | None) -> Vocab | None:
    """The book's vocabulary, or None without data."""
    return build_vocab(data_dir) if data_dir is not None else None


def sentences_of_test_split(
    data_dir: Path | None, vocab: Vocab | None, vocab_size: int, seed: int = 0
) -> list[list[int]]:
    """The non-empty lines of ptb.test.txt as ids (without data: random ids, PTB-like lengths)."""
    if data_dir is None or vocab is None:
        rng = np.random.default_rng(seed)
        return [list(rng.integers(0, vocab_size, int(n))) for n in rng.integers(3, 42, 4000)]
    lines = split_path(data_dir, "test").read_text(encoding="utf-8").splitlines()
    return [vocab.encode(line.split()) for line in lines if line.split()]


# --------------------------------------------------------------------------- machine facts
def _openblas_ctypes() -> dict[str, Any]:
    """OpenBLAS core name and threads via ctypes, for when threadpoolctl is missing."""
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return {}
    paths = sorted({ln.split()[-1] for ln in maps.splitlines() if "openblas" in ln.lower()
                    and ln.split()[-1].startswith("/")})
    for path in paths:
        lib = ctypes.CDLL(path)
        for prefix, suffix in (("scipy_", "64_"), ("", "64_"), ("scipy_", ""), ("", "")):
            fn = getattr(lib, f"{prefix}openblas_get_corename{suffix}", None)
            if fn is None:
                continue
            fn.restype = ctypes.c_char_p
            threads = getattr(lib, f"{prefix}openblas_get_num_threads{suffix}", None)
            return {"filepath": path, "architecture": fn().decode(),
                    "num_threads": threads() if threads else None}
    return {}


def blas_info(torch: Any = None) -> dict[str, Any]:
    """numpy's BLAS (runtime core and threads) and torch's threads and build, as a dict."""
    info: dict[str, Any] = {
        "python": platform.python_version(),
        "numpy": np.__version__,
        "cpus": os.cpu_count(),
    }
    with contextlib.suppress(OSError):
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        info["cpu"] = next(ln.split(":", 1)[1].strip() for ln in lines
                           if ln.startswith("model name"))
        info["cpu_family"] = next(int(ln.split(":", 1)[1]) for ln in lines
                                  if ln.startswith("cpu family"))
        flags = next(ln.split(":", 1)[1].split() for ln in lines if ln.startswith("flags"))
        info["cpu_avx512"] = "avx512f" in flags
    try:
        blas = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
        info["numpy_blas"] = f"{blas.get('name')} {blas.get('version')}"
    except (KeyError, TypeError, ValueError):
        pass
    openblas: dict[str, Any] = {}
    try:
        from threadpoolctl import threadpool_info

        pools = threadpool_info()
        info["threadpools"] = [
            f"{p.get('internal_api')} {p.get('version') or ''} {p.get('threading_layer', '')}"
            f" {p.get('architecture') or ''} threads={p.get('num_threads')}".replace("  ", " ")
            for p in pools
        ]
        openblas = next((p for p in pools if p.get("internal_api") == "openblas"), {})
    except ImportError:
        openblas = _openblas_ctypes()
    info["openblas_core"] = openblas.get("architecture")
    info["numpy_threads"] = openblas.get("num_threads")
    for var in ("OPENBLAS_CORETYPE", "OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS",
                "MKL_NUM_THREADS", "OPENBLAS_L2_SIZE"):
        if os.environ.get(var):
            info[var] = os.environ[var]
    if torch is not None:
        info["torch"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads()
        with contextlib.suppress(AttributeError):
            info["torch_cpu_capability"] = torch.backends.cpu.get_cpu_capability()
        info["torch_mkldnn"] = bool(torch.backends.mkldnn.is_available())
    return info


def print_machine(info: Mapping[str, Any]) -> None:
    """Print the BLAS facts and warn when the OpenBLAS core is not the fast one."""
    print("machine:", ", ".join(f"{k}={v}" for k, v in info.items() if k != "threadpools"))
    for pool in info.get("threadpools", []):
        print("  threadpool:", pool)
    core = info.get("openblas_core")
    avx512 = bool(info.get("cpu_avx512"))
    if core is None:
        print("WARNING: could not read OpenBLAS's core name (install threadpoolctl)")
    elif str(core).lower().startswith(GOOD_CORES):
        if avx512:
            print(f"note: this CPU has AVX-512 but OpenBLAS runs the AVX2 {core} kernels "
                  f"(OPENBLAS_CORETYPE={os.environ.get('OPENBLAS_CORETYPE', 'unset')}); torch "
                  "uses AVX-512. Compare with `env -u OPENBLAS_CORETYPE` "
                  "(PERFORMANCE.md measured a Zen 3 without AVX-512)")
    elif not (avx512 and str(core).lower().startswith(AVX512_CORES)):
        print(f"WARNING: OpenBLAS runs the {core} kernels, not Haswell or Zen: GEMMs may be "
              "several times slower (is OPENBLAS_CORETYPE set?)")


def _cpu_ticks() -> tuple[int, int, int]:
    """(busy, steal, total) ticks of all CPUs from /proc/stat."""
    try:
        first = Path("/proc/stat").read_text().splitlines()[0].split()
    except (OSError, IndexError):
        return 0, 0, 0
    v = [int(x) for x in first[1:9]]  # user nice system idle iowait irq softirq steal
    return v[0] + v[1] + v[2] + v[5] + v[6], v[7], sum(v)


def _own_ticks() -> float:
    """CPU time of this process (all threads) and of its children that ended (worker
    processes, the commands a bench runs), in /proc/stat ticks. Ray's workers are the
    raylet's children, so a Ray row still shows as other processes."""
    t = os.times()
    return (t.user + t.system + t.children_user + t.children_system) * os.sysconf("SC_CLK_TCK")


@dataclass
class CpuMonitor:
    """How much of the CPUs other processes and the hypervisor (steal) took over a span."""

    start: tuple[int, int, int] = field(default_factory=_cpu_ticks)
    own: float = field(default_factory=_own_ticks)

    def report(self) -> dict[str, float]:
        """Percent of all CPU time since start: used by other processes, and stolen."""
        busy, steal, total = _cpu_ticks()
        d_total = max(total - self.start[2], 1)
        others = (busy - self.start[0]) - (_own_ticks() - self.own)
        return {"others_pct": round(100.0 * max(others, 0.0) / d_total, 1),
                "steal_pct": round(100.0 * (steal - self.start[1]) / d_total, 1)}


def check_quiet(seconds: float = 0.5) -> dict[str, float]:
    """Measure other processes' CPU use while idle; warn when the machine is busy."""
    mon = CpuMonitor()
    time.sleep(seconds)
    rep = mon.report()
    if rep["others_pct"] > 10:
        print(f"WARNING: other processes use {rep['others_pct']}% of the CPUs (a training "
              "run?): timings will be slow and noisy; the ratios are only valid on a "
              "quiet machine")
    return rep


# --------------------------------------------------------------------------- timing
@dataclass
class Timing:
    """Seconds per call of one case, grouped by round."""

    rounds: list[list[float]] = field(default_factory=list)

    @property
    def round_medians(self) -> list[float]:
        """Median of each round."""
        return [statistics.median(r) for r in self.rounds]

    @property
    def median(self) -> float:
        """Median of the round medians (robust to one stalled round)."""
        return statistics.median(self.round_medians)

    @property
    def fastest(self) -> float:
        """Fastest sample."""
        return min(min(r) for r in self.rounds)

    @property
    def slowest(self) -> float:
        """Slowest sample."""
        return max(max(r) for r in self.rounds)


def interleave(
    cases: Mapping[str, Callable[[], object]],
    rounds: int,
    reps: int,
    warmup: int = 1,
    pause: float = 0.1,
) -> dict[str, Timing]:
    """Time each case ``reps`` times per round, round-robin, the order rotated each round."""
    # Each case gets ``warmup`` untimed calls at the start of each of its turns; ``pause``
    # between turns lets the other library's idle worker threads stop spinning (OpenBLAS's
    # keep polling for a while after each call).
    names = list(cases)
    out = {name: Timing() for name in names}
    gc.collect()
    gc.disable()
    try:
        for r in range(rounds):
            shift = r % len(names)
            for name in names[shift:] + names[:shift]:
                fn = cases[name]
                for _ in range(warmup):
                    fn()
                samples = []
                for _ in range(reps):
                    t0 = time.perf_counter()
                    fn()
                    samples.append(time.perf_counter() - t0)
                out[name].rounds.append(samples)
                gc.collect()
                time.sleep(pause)
    finally:
        gc.enable()
    return out


@dataclass(frozen=True)
class Ratio:
    """How many times faster ``ours`` is than ``theirs`` (>1: ours is faster)."""

    value: float  # from the two medians
    lo: float  # min and max of the per-round paired ratios
    hi: float

    @classmethod
    def of(cls, ours: Timing, theirs: Timing) -> Ratio:
        """theirs' time / our time, from medians and round by round."""
        paired = [t / o for o, t in zip(ours.round_medians, theirs.round_medians, strict=True)]
        return cls(theirs.median / ours.median, min(paired), max(paired))

    def __str__(self) -> str:
        return f"{self.value:.2f}x [{self.lo:.2f}-{self.hi:.2f}]"


def rate(t: Timing, units: float) -> str:
    """'units per second' as median [min-max]."""
    return f"{units / t.median:,.0f} [{units / t.slowest:,.0f}-{units / t.fastest:,.0f}]"


def millis(t: Timing, per: float = 1.0) -> str:
    """Milliseconds per call (divided by ``per``) as median [min-max]."""
    k = 1e3 / per
    return f"{t.median * k:.2f} [{t.fastest * k:.2f}-{t.slowest * k:.2f}]"


def verdict(ratio: float, target: float | None) -> str:
    """'ok' or 'MISS' against a target ratio ('' without one)."""
    if target is None:
        return ""
    return f"{'ok' if ratio >= target else 'MISS'} (>= {target:g}x)"


def print_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    """A plain aligned text table."""
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *rows, strict=True)]
    line = "  ".join(f"{{:<{w}}}" for w in widths)
    print(line.format(*headers))
    print("  ".join("-" * w for w in widths))
    for row in rows:
        print(line.format(*row))


# --------------------------------------------------------------------------- command line
def base_parser(description: str, sizes: str) -> argparse.ArgumentParser:
    """The options every benchmark has."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--smoke", action="store_true",
                   help="tiny model, 1-2 short rounds: checks that it runs and that the "
                        "equality assertions pass, in seconds (the timings mean nothing)")
    p.add_argument("--sizes", default=sizes,
                   help=f"comma list of hidden sizes of 2-layer tied models (default {sizes})")
    p.add_argument("--rounds", type=int, default=None, help="interleaved rounds")
    p.add_argument("--reps", type=int, default=None, help="timed calls per case per round")
    p.add_argument("--threads", type=int, default=None,
                   help="threads for numpy's BLAS and torch (default: the libraries' own, "
                        "2 on this machine; 1 with --smoke)")
    p.add_argument("--data-dir", default=None,
                   help=f"folder of ptb.*.txt (default ${DATA_DIR_ENV} or ../shared/data/ptb)")
    return p


def pause_of(args: argparse.Namespace) -> float:
    """Seconds between interleaved turns (none in smoke mode)."""
    return 0.0 if args.smoke else 0.1


def sizes_of(args: argparse.Namespace) -> list[int]:
    """The hidden sizes to run (one tiny size in smoke mode)."""
    return [48] if args.smoke else [int(s) for s in str(args.sizes).split(",") if s.strip()]


def start(title: str, args: argparse.Namespace) -> tuple[Any, dict[str, Any]]:
    """Import torch, apply --threads, print the machine facts; -> (torch, facts)."""
    torch = require_torch()
    # smoke runs check correctness, often beside other jobs: one thread avoids the long
    # OpenMP barrier stalls torch suffers when its threads are descheduled
    set_threads(1 if args.smoke and args.threads is None else args.threads, torch)
    info = blas_info(torch)
    print(f"== {title}{' (SMOKE: tiny sizes, timings mean nothing)' if args.smoke else ''}")
    print_machine(info)
    info.update({f"idle_{k}": v for k, v in check_quiet().items()})
    return torch, info


def finish(bench: str, args: argparse.Namespace, info: Mapping[str, Any],
           monitor: CpuMonitor, results: Mapping[str, Any]) -> None:
    """Print the CPU-contention note and the final JSON line."""
    load = monitor.report()
    print(f"during the run: other processes {load['others_pct']}% of the CPUs, "
          f"steal {load['steal_pct']}%")
    if load["others_pct"] > 10:
        print("WARNING: the CPUs were shared during the run: rerun on a quiet machine")
    keep = ("cpu", "cpu_family", "cpu_avx512", "numpy", "numpy_blas", "openblas_core",
            "OPENBLAS_CORETYPE", "numpy_threads", "torch", "torch_cpu_capability",
            "torch_threads")
    print(json.dumps({
        "bench": bench, "smoke": bool(args.smoke),
        "machine": {k: info.get(k) for k in keep}, "load": load, "results": results,
    }))
