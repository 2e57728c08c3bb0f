"""What a vocabulary of 100,000 words costs training: a 20x35 step at V = 10,000 and 100,000
(2 x 256 and 2 x 650 tied, random ids), its peak memory and the epoch time it implies.

Each case runs in a fresh process so that ru_maxrss is its own. Run on a quiet machine:
.venv/bin/python -m bench.large_vocab [--sizes 256,650] [--vocabs 10000,100000] [--steps 6]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

EPOCH_TOKENS = 928_900  # the book's 1327 windows of 20x35 of PTB train


def measure(hidden: int, vocab: int, steps: int) -> dict[str, float]:
    """Median seconds of Trainer.train_step (book recipe) in this process, and peak RSS."""
    from model.rnnlm import BetterRnnlm
    from model.train import TrainConfig, Trainer

    cfg = TrainConfig(wordvec_size=hidden, hidden_size=hidden)
    rng = np.random.default_rng(0)
    ids = rng.integers(0, vocab, 20 * 35 * (steps + 3) + 1).astype(np.int32)
    model = BetterRnnlm(cfg.model_config(vocab), rng=rng)
    with tempfile.TemporaryDirectory() as d:
        tr = Trainer(model, cfg, ids, ids[:1000], Path(d), None, rng=rng)
        tr.train_step(tr.bx[0], tr.bt[0])  # warm-up: buffers, page faults
        times = []
        for i in range(1, steps + 1):
            t0 = time.perf_counter()
            tr.train_step(tr.bx[i], tr.bt[i])
            times.append(time.perf_counter() - t0)
    step = float(np.median(times))
    return {"hidden": hidden, "vocab": vocab, "step_s": step, "tok_s": 700 / step,
            "epoch_min": EPOCH_TOKENS / (700 / step) / 60,
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "params_mib": sum(p.nbytes for p in model.params.values()) / 2**20}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="256,650")
    p.add_argument("--vocabs", default="10000,100000")
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--one", nargs=3, type=int, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.one:
        print(json.dumps(measure(*args.one)))
        return 0
    rows = []
    for h in (int(x) for x in args.sizes.split(",")):
        for v in (int(x) for x in args.vocabs.split(",")):
            out = subprocess.run([sys.executable, "-m", "bench.large_vocab", "--one", str(h),
                                  str(v), str(args.steps)], capture_output=True, text=True,
                                 check=True)
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
            r = rows[-1]
            print(f"2 x {h:<4} V={v:<7,} step {r['step_s'] * 1000:7.0f} ms  {r['tok_s']:7,.0f} "
                  f"tok/s  epoch {r['epoch_min']:6.1f} min  params {r['params_mib']:6.1f} MiB  "
                  f"peak RSS {r['peak_rss_mib']:7.1f} MiB", flush=True)
    print(json.dumps({"bench": "large_vocab", "results": rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
