"""/v1/completions scoring (echo, max_tokens 0) against /perplexity, over HTTP to one server.

Rows (one run, interleaved; never a timed test):
  echo        64 PTB test sentences in one /v1/completions request (echo, max_tokens 0,
              logprobs 0) against the same 64 in one /perplexity request ("eos": false, the
              same predictions); requests/s, target >= 0.9x.
  echo top-1  the same with logprobs 1 (what lm-evaluation-harness asks for) against
              /perplexity with return_tokens and top_k 1.
Both answers are first checked to hold the same log-probabilities.

Run: .venv/bin/python -m bench.completions [--smoke] (no torch; see bench/README.md).
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx

from bench.common import CpuMonitor, Ratio, check_quiet, interleave, print_table, verdict
from bench.load import REPO_ROOT, find_data_dir, serve

Body = Callable[[list[str]], dict[str, Any]]
TARGET = 0.9  # completions / perplexity requests per second (the issue's)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--smoke", action="store_true", help="the small model, one short round")
    p.add_argument("--weights", default=str(REPO_ROOT / "weights" / "ptb-650"))
    p.add_argument("--data-dir", default=None)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--texts", type=int, default=64)
    args = p.parse_args(argv)
    data = find_data_dir(args.data_dir)
    if data is None:
        print("PTB test is needed (../shared/data/ptb or --data-dir)")
        return 2
    weights = Path(REPO_ROOT / "weights" / "ptb-small" if args.smoke else args.weights)
    lines = (data / "ptb.test.txt").read_text().splitlines()
    batches = [lines[a : a + args.texts] for a in range(0, len(lines) - args.texts + 1, args.texts)]
    print("== /v1/completions echo scoring against /perplexity")
    idle = check_quiet()
    monitor = CpuMonitor()
    rounds = 1 if args.smoke else args.rounds
    rows, results = [], {}
    # Off: a text scored before is answered from the engine's cached states, which would
    # time the cache, not the endpoint.
    os.environ["RNNLM_STATE_CACHE_MB"] = "0"
    with tempfile.TemporaryDirectory() as logs, \
            serve("rnnlm", weights, 32, Path(logs)) as server, \
            httpx.Client(base_url=server.url, timeout=300) as http:

        def post(path: str, body: dict[str, Any]) -> dict[str, Any]:
            r = http.post(path, json=body)
            r.raise_for_status()
            out: dict[str, Any] = r.json()
            return out

        for name, k in (("echo", 0), ("echo top-1", 1)):

            def comp(batch: list[str], k: int = k) -> dict[str, Any]:
                return {"prompt": batch, "max_tokens": 0, "echo": True, "logprobs": k}

            def ppl(batch: list[str], k: int = k) -> dict[str, Any]:
                extra = {"return_tokens": True, "top_k": k} if k else {}
                return {"texts": batch, "eos": False, **extra}

            a = post("/v1/completions", comp(batches[0]))["choices"]
            b = post("/perplexity", ppl(batches[0]))["results"]
            for c, res in zip(a, b, strict=True):
                got = sum(c["logprobs"]["token_logprobs"][1:])
                assert math.isclose(got, res["log_prob"], abs_tol=1e-3), (got, res["log_prob"])
            # Each call scores the next batch (the same sequence for both endpoints): texts
            # seen before would be answered from the engine's state cache.
            mine, theirs = itertools.cycle(batches), itertools.cycle(batches)

            def ours(it: Iterator[list[str]] = mine, f: Body = comp) -> object:
                return post("/v1/completions", f(next(it)))

            def peer(it: Iterator[list[str]] = theirs, f: Body = ppl) -> object:
                return post("/perplexity", f(next(it)))

            t = interleave({"completions": ours, "perplexity": peer},
                rounds, 3, warmup=1)
            r = Ratio.of(t["completions"], t["perplexity"])
            rows.append([name, f"{args.texts} texts", f"{1 / t['completions'].median:.2f}",
                         f"{1 / t['perplexity'].median:.2f}", str(r),
                         verdict(r.value, TARGET) if k == 0 else ""])
            results[name] = {"completions_s": t["completions"].median,
                             "perplexity_s": t["perplexity"].median, "ratio": r.value,
                             "lo": r.lo, "hi": r.hi}
    print_table(["row", "input", "completions (req/s)", "perplexity (req/s)", "ratio", "note"],
                rows)
    load = monitor.report()
    print(f"during the run: other processes {load['others_pct']}% of the CPUs, "
          f"steal {load['steal_pct']}%")
    print(json.dumps({"bench": "completions", "smoke": args.smoke, "idle": idle, "load": load,
                      "results": results}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
