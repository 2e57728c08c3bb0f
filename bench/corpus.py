"""Reading a corpus of one's own: tokens/s of the count and encode passes, and peak memory,
for both normalisers (model.textfile), on a large file made of PTB train copies.

Each normaliser runs in a fresh process, so its peak resident memory (ru_maxrss) is its own;
the figure to compare it with is the int32 array of the encoded corpus. Run on a quiet
machine: .venv/bin/python -m bench.corpus [--copies 40] [--smoke]
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

from bench.common import find_data_dir


def measure(path: str, name: str) -> dict[str, float]:
    """Count and encode path with one normaliser (in this process); the figures."""
    from model.normalize import Normalizer
    from model.textfile import count_file, encode_file
    from model.vocab import vocab_from_counts

    norm = Normalizer(name)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    counts = count_file(Path(path), norm)
    t1 = time.perf_counter()
    vocab = vocab_from_counts(counts.words)
    ids = encode_file(Path(path), vocab, norm, counts.tokens)
    t2 = time.perf_counter()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return {"normalizer": name, "tokens": int(ids.size), "distinct": len(counts.words),
            "count_tok_s": counts.tokens / (t1 - t0), "encode_tok_s": ids.size / (t2 - t1),
            "both_passes_tok_s": ids.size / (t2 - t0), "array_mib": ids.nbytes / 2**20,
            "peak_rss_mib": peak / 1024, "rss_before_mib": base / 1024}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--copies", type=int, default=40, help="copies of ptb.train.txt (5 MB each)")
    p.add_argument("--smoke", action="store_true", help="2 copies: checks only")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--one", nargs=2, metavar=("FILE", "NORMALIZER"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.one:
        print(json.dumps(measure(*args.one)))
        return 0
    data = find_data_dir(args.data_dir)
    if data is None:
        print("PTB is needed (../shared/data/ptb or --data-dir)", file=sys.stderr)
        return 2
    copies = 2 if args.smoke else args.copies
    text = (data / "ptb.train.txt").read_bytes()
    rows = []
    with tempfile.TemporaryDirectory() as d:
        big = Path(d) / "big.txt"
        with big.open("wb") as f:
            for _ in range(copies):
                f.write(text)
        print(f"{big.stat().st_size / 2**20:.0f} MiB ({copies} copies of ptb.train.txt)")
        for name in ("plain", "ptb"):
            out = subprocess.run([sys.executable, "-m", "bench.corpus", "--one", str(big), name],
                                 capture_output=True, text=True, check=True)
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    print(f"{'normalizer':<10} {'tokens':>11} {'count tok/s':>12} {'encode tok/s':>13} "
          f"{'both tok/s':>11} {'int32 MiB':>10} {'peak RSS MiB':>13}")
    for r in rows:
        print(f"{r['normalizer']:<10} {r['tokens']:>11,} {r['count_tok_s']:>12,.0f} "
              f"{r['encode_tok_s']:>13,.0f} {r['both_passes_tok_s']:>11,.0f} "
              f"{r['array_mib']:>10.1f} {r['peak_rss_mib']:>13.1f}")
    print(json.dumps({"bench": "corpus", "copies": copies, "results": rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
