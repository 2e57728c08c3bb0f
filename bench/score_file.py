"""``rnnlm score`` end to end against PyTorch scoring the same sentences; workers, Ray, memory.

Rows (one run, side by side; never a timed test):
  e2e     ``run_score`` on PTB test sentences (read, normalise, score, write JSON lines) against
          PyTorch scoring the same sentences, given as ids, with the same weights on its best
          path: length-sorted batches of the size it is fastest at, nn.LSTM under
          inference_mode, only the real positions projected. Also where our time goes: the
          load of the weights, the batched forward, and the rest.
  n-best  the same on n-best lists (each sentence and variants of it, one word replaced).
  workers ``--workers 2`` (one BLAS thread each) against one worker with 2 BLAS threads.
  ray     ``--engine ray`` (2 actors) against ``--workers 2`` on a larger input; Ray's start-up
          and its fixed cost per run (a one-line input) reported apart.
  memory  peak RSS of ``rnnlm score`` on a file and on ten times that file (flat is the goal).

Run: .venv-bench/bin/python -m bench.score_file [--smoke] (see bench/README.md).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import (
    CpuMonitor,
    Ratio,
    base_parser,
    build_torch_lm,
    find_data_dir,
    finish,
    interleave,
    print_table,
    rate,
    start,
    verdict,
)
from model import scorer as scorer_mod
from model.score_run import ScoreRun, run_score
from model.scorer import Scorer

ROOT = Path(__file__).resolve().parents[1]
TARGET_E2E = 1.2  # ours / torch, tokens per second (the issue's)
NBEST = 10  # hypotheses a sentence in the n-best row


def torch_scorer(
    torch: Any, s: Scorer, texts: list[str], size: int, threads: int = 1
) -> tuple[Callable[[], float], int]:
    """PyTorch's path over the texts' ids: sorted batches of size; -> (fn, tokens). With
    threads > 1, that many Python threads of one intra-op thread each take every threads-th
    batch, as ours can (torch releases the GIL in its kernels)."""
    tm = build_torch_lm(s.weights.config, s.weights.params)
    e = s.vocab.eos_id
    seqs = sorted(([e, *s.tokenizer(t).ids, e] for t in texts), key=len)
    batches = []
    for a in range(0, len(seqs), size):
        rows = seqs[a : a + size]
        T = max(len(r) for r in rows) - 1
        ids = np.zeros((T, len(rows)), np.int64)
        tgt = np.zeros((T, len(rows)), np.int64)
        for n, r in enumerate(rows):
            ids[: len(r) - 1, n], tgt[: len(r) - 1, n] = r[:-1], r[1:]
        valid = np.array([[t < len(r) - 1 for t in range(T)] for r in rows])  # (N, T)
        batches.append((torch.from_numpy(ids), torch.from_numpy(valid),
                        torch.from_numpy(np.ascontiguousarray(tgt.T[valid]))))

    def part(mine: list[Any], intra: int) -> float:
        torch.set_num_threads(intra)  # this thread's intra-op threads
        total = 0.0
        with torch.inference_mode():
            for ids, valid, tgt in mine:
                y, _ = tm(ids)  # (T, N, H)
                h = y.transpose(0, 1)[valid]  # (M, H)
                lp = torch.log_softmax(tm.out(h), dim=-1).gather(1, tgt[:, None])
                total += float(lp.double().sum())
        return total

    cpus = len(os.sched_getaffinity(0))

    def fn() -> float:
        if threads == 1:
            return part(batches, cpus)
        with ThreadPoolExecutor(threads) as pool:
            total = sum(pool.map(part, [batches[i::threads] for i in range(threads)],
                                 [1] * threads))
        torch.set_num_threads(cpus)
        return total

    return fn, sum(len(r) - 1 for r in seqs)


# Run from a small parent: a child's ru_maxrss counts the image it was forked from, so the
# command is started by a fresh interpreter of a few MiB rather than by this process.
_PEAK = (
    "import resource, subprocess, sys\n"
    "subprocess.run(sys.argv[1:], check=True, stdout=subprocess.DEVNULL, "
    "stderr=subprocess.DEVNULL)\n"
    "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n"
)


def peak_rss_mib(cmd: list[str]) -> float:
    """Peak resident memory of a command, in MiB (its own, not its parent's)."""
    r = subprocess.run([sys.executable, "-c", _PEAK, *cmd], capture_output=True, text=True,
                       check=True)
    return int(r.stdout.split()[-1]) / 1024


def main(argv: list[str] | None = None) -> int:
    p = base_parser(__doc__.splitlines()[0], "650")
    p.add_argument("--weights", default=str(ROOT / "weights" / "ptb-650"))
    p.add_argument("--lines", type=int, default=None,
                   help="PTB test sentences in e2e (default: all of them, 3,761)")
    p.add_argument("--no-ray", action="store_true", help="skip the Ray row")
    args = p.parse_args(argv)
    torch, info = start("rnnlm score, end to end", args)
    data = find_data_dir(args.data_dir)
    if data is None:
        print("PTB test is needed (../shared/data/ptb or --data-dir)")
        return 2
    weights = Path(args.weights if not args.smoke else ROOT / "weights" / "ptb-small")
    lines = [x for x in (data / "ptb.test.txt").read_text().splitlines()]
    n = 200 if args.smoke else (args.lines or len(lines))
    rounds = 1 if args.smoke else (args.rounds or 3)
    monitor = CpuMonitor()
    tmp = Path(tempfile.mkdtemp(prefix="bench-score-"))
    small = tmp / "small.txt"
    small.write_text("\n".join(lines[:n]) + "\n")
    s = Scorer.load(weights)
    results: dict[str, Any] = {}
    rows = []

    # e2e: PyTorch at its fastest batch size and thread split, the numbers compared, then
    # the two interleaved.
    tried = {}
    for size in (32, 64, 128, 256):
        for threads in (1, 2):
            fn, tokens = torch_scorer(torch, s, lines[:n], size, threads)
            fn()
            t0 = time.perf_counter()
            fn()
            tried[size, threads] = (time.perf_counter() - t0, fn)
    torch_best = min(tried, key=lambda k: tried[k][0])
    t_fn = tried[torch_best][1]
    ours_total = sum(r["log_prob"] for r in s.score(lines[:n]))
    theirs_total = t_fn()
    assert abs(ours_total - theirs_total) < 1e-5 * tokens, (ours_total, theirs_total)
    out = tmp / "out.jsonl"

    def ours(threads: int | None = None) -> None:
        run_score(ScoreRun(weights=weights, inputs=(str(small),), out=out, threads=threads,
                           progress=False))

    t = interleave({"ours": ours, "torch": t_fn}, rounds, 1, warmup=0 if args.smoke else 1,
                   pause=0.1)
    r = Ratio.of(t["ours"], t["torch"])
    rows.append(["e2e", f"{tokens:,} tok", rate(t["ours"], tokens), rate(t["torch"], tokens),
                 str(r), f"{verdict(r.value, TARGET_E2E)} (torch batch {torch_best[0]}, "
                 f"{torch_best[1]} thread(s))"])
    # Where one run's time goes: loading the weights, the batched forward (Scorer.logprobs)
    # and the rest (reading, normalising, JSON, writing), on one scoring thread (2 BLAS
    # threads), as the time of scoring threads running side by side does not add up.
    spent = {"load": 0.0, "forward": 0.0}
    inner, inner_load = scorer_mod.Scorer.logprobs, scorer_mod.Scorer.load

    def timed(self: Scorer, seqs: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return inner(self, seqs)
        finally:
            spent["forward"] += time.perf_counter() - t0

    def timed_load(path: Any) -> Scorer:
        t0 = time.perf_counter()
        try:
            return inner_load(path)
        finally:
            spent["load"] += time.perf_counter() - t0

    scorer_mod.Scorer.logprobs = timed  # type: ignore[method-assign]
    scorer_mod.Scorer.load = timed_load  # type: ignore[method-assign,assignment]
    t0 = time.perf_counter()
    ours(threads=1)
    whole = time.perf_counter() - t0
    scorer_mod.Scorer.logprobs = inner  # type: ignore[method-assign]
    scorer_mod.Scorer.load = inner_load  # type: ignore[method-assign]
    load_share = spent["load"] / whole
    outside = 1 - (spent["forward"] + spent["load"]) / whole
    results["e2e"] = {"tokens": tokens, "torch_batch": torch_best[0],
                      "torch_threads": torch_best[1],
                      "torch_tried_s": {f"{k[0]}x{k[1]}": v[0] for k, v in tried.items()},
                      "ours_s": t["ours"].median,
                      "torch_s": t["torch"].median, "ratio": r.value, "lo": r.lo, "hi": r.hi,
                      "load_s": spent["load"], "load_share": load_share,
                      "outside_forward": outside}

    # n-best: speech or OCR rescoring input, each sentence followed by variants of itself
    # with one word replaced at a random place. Ours shares every prefix the hypotheses have
    # in common (the tree of prefixes); PyTorch at the batch and threads found above.
    rng = np.random.default_rng(0)
    words = [w for w in s.vocab.id_to_word if w not in ("<eos>", "<unk>")]
    nbest = []
    for sent in (x.split() for x in lines[: n // 8] if len(x.split()) >= 2):
        nbest.append(" ".join(sent))
        for _ in range(NBEST - 1):
            v = list(sent)
            v[rng.integers(len(v))] = words[rng.integers(len(words))]
            nbest.append(" ".join(v))
    nb = tmp / "nbest.txt"
    nb.write_text("\n".join(nbest) + "\n")
    t_nb, nb_tokens = torch_scorer(torch, s, nbest, *torch_best)

    def ours_nb() -> None:
        run_score(ScoreRun(weights=weights, inputs=(str(nb),), out=out, progress=False))

    t = interleave({"ours": ours_nb, "torch": t_nb}, rounds, 1, warmup=0 if args.smoke else 1,
                   pause=0.1)
    r = Ratio.of(t["ours"], t["torch"])
    rows.append([f"n-best ({NBEST} a sentence)", f"{nb_tokens:,} tok", rate(t["ours"], nb_tokens),
                 rate(t["torch"], nb_tokens), str(r), "report"])
    results["nbest"] = {"tokens": nb_tokens, "hypotheses": len(nbest), "ours_s": t["ours"].median,
                        "torch_s": t["torch"].median, "ratio": r.value}

    # workers: 2 processes of 1 thread and one process of 2 scoring threads (the default),
    # each against one process of 1 thread using 2 BLAS threads, on 4x the sentences.
    big = tmp / "big.txt"
    big.write_text("\n".join(lines[:n] * (1 if args.smoke else 4)) + "\n")
    big_tokens = tokens * (1 if args.smoke else 4)

    def run_workers(k: int, threads: int | None = None) -> Callable[[], None]:
        return lambda: run_score(ScoreRun(weights=weights, inputs=(str(big),), out=out,
                                          workers=k, threads=threads, progress=False))

    t = interleave({"w2": run_workers(2), "t2": run_workers(1), "w1": run_workers(1, 1)},
                   max(1, rounds - 1), 1, warmup=0, pause=0.1)
    r = Ratio.of(t["w2"], t["w1"])
    r_t = Ratio.of(t["t2"], t["w1"])
    rows.append(["workers 2 / 1", f"{big_tokens:,} tok", rate(t["w2"], big_tokens),
                 rate(t["w1"], big_tokens), str(r), "1 thread, 2 BLAS threads"])
    rows.append(["threads 2 / 1", f"{big_tokens:,} tok", rate(t["t2"], big_tokens),
                 rate(t["w1"], big_tokens), str(r_t), "one process (the default / 2 BLAS)"])
    results["workers"] = {"tokens": big_tokens, "w2_s": t["w2"].median, "w1_s": t["w1"].median,
                          "t2_s": t["t2"].median, "ratio": r.value, "threads_ratio": r_t.value}

    if not args.no_ray:
        import ray

        from model.score_ray import RayRun, run_ray

        t0 = time.perf_counter()
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
                 runtime_env={"env_vars": {"OPENBLAS_NUM_THREADS": "1"}})
        ray_start = time.perf_counter() - t0
        one = tmp / "one.txt"
        one.write_text(lines[0] + "\n")
        t0 = time.perf_counter()
        run_ray(RayRun(weights=weights, inputs=(str(one),), out=tmp / "one.jsonl",
                       actors=2, progress=False))
        fixed = time.perf_counter() - t0

        def run_ray_big() -> None:
            run_ray(RayRun(weights=weights, inputs=(str(big),), out=out, actors=2,
                           progress=False))

        t = interleave({"ray": run_ray_big, "w2": run_workers(2)}, max(1, rounds - 1), 1,
                       warmup=0, pause=0.1)
        r = Ratio.of(t["ray"], t["w2"])
        rows.append(["ray / workers 2", f"{big_tokens:,} tok", rate(t["ray"], big_tokens),
                     rate(t["w2"], big_tokens), str(r),
                     f"ray.init {ray_start:.1f} s, per run {fixed:.1f} s"])
        results["ray"] = {"tokens": big_tokens, "ray_s": t["ray"].median, "w2_s": t["w2"].median,
                          "ratio": r.value, "ray_init_s": ray_start, "per_run_fixed_s": fixed}
        ray.shutdown()

    # memory: one file and ten times it, each in its own process.
    ten = tmp / "ten.txt"
    ten.write_text("\n".join(lines[:n] * 10) + "\n")
    cmd = [sys.executable, "-m", "model.cli", "score", str(weights), "--quiet", "--window",
           "256", "--out", str(tmp / "mem.jsonl")]
    m1 = peak_rss_mib([*cmd, str(small)])
    m10 = peak_rss_mib([*cmd, str(ten)])
    rows.append(["memory 10x / 1x", f"{n:,} / {10 * n:,} lines", f"{m10:.0f} MiB",
                 f"{m1:.0f} MiB", f"{m10 / m1:.2f}x", "flat is 1.0x"])
    results["memory"] = {"one_mib": m1, "ten_mib": m10, "ratio": m10 / m1}

    print(f"weights {weights.name}; of one rnnlm score run on one thread: loading the weights "
          f"{spent['load']:.2f} s ({load_share:.1%}), outside the forward and the load "
          f"(reading, normalising, JSON, writing) {outside:.1%}")
    print_table(["row", "input", "ours (tok/s)", "peer (tok/s)", "ratio", "note"], rows)
    finish("score_file", args, info, monitor, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
