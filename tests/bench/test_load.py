"""bench/load.py end to end on a tiny model: it starts both servers, drives them, reports."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_smoke_run_reports_every_scenario_without_errors() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "bench.load", "--smoke"],
        cwd=REPO, capture_output=True, text=True, timeout=300, check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["errors"] == 0
    seen = {(r["server"], r["endpoint"], r["clients"]) for r in summary["results"]}
    assert seen == {
        (s, e, n)
        for s in ("batched", "unbatched")
        for e in ("/perplexity", "/generate")
        for n in (1, 4)
    }
    for r in summary["results"]:
        assert r["requests"] > 0 and r["p50_ms"] > 0
        assert r["client_cpu_ms_per_request"] > 0  # the load clients' own CPU is measured
        assert r["server_cpu_ms_per_request"] >= 0
    assert summary["generate_tokens_per_s_ratio"]["ceiling"] > 0
    assert summary["generate_tokens_per_s_ratio"]["engine"] > 0
    assert "perplexity_p99_8_over_single" not in summary  # no 8-client scenario in a smoke run
