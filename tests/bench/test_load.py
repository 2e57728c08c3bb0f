"""bench/load.py: end to end on a tiny model (both servers started, driven, reported); its CPU
pinning."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench import load
from model.blas import blas_info

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


@pytest.mark.parametrize(
    ("spec", "cpus"),
    [("0", {0}), ("0,1", {0, 1}), ("2-5", {2, 3, 4, 5}), ("0-1, 4", {0, 1, 4}), ("3-3", {3})],
)
def test_parse_cpus_reads_taskset_lists(spec: str, cpus: set[int]) -> None:
    assert load.parse_cpus(spec) == cpus


@pytest.mark.parametrize("spec", ["", "x", "1-", "-1", "3-1", "0,,1"])
def test_parse_cpus_refuses_what_is_not_a_list(spec: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match="not a CPU list"):
        load.parse_cpus(spec)


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="CPU affinity is Linux-only")
def test_on_cpus_pins_this_process_and_its_blas_then_restores_both() -> None:
    usable = os.sched_getaffinity(0)
    one = frozenset({min(usable)})
    threads = blas_info()["threads"]
    with load.on_cpus(one, blas=True):
        assert os.sched_getaffinity(0) == one
        child = subprocess.run(  # a process started inside runs there too
            [sys.executable, "-c", "import os; print(sorted(os.sched_getaffinity(0)))"],
            capture_output=True, text=True, check=True,
        )
        assert json.loads(child.stdout) == sorted(one)
        if threads is not None:
            assert blas_info()["threads"] == 1
    assert os.sched_getaffinity(0) == usable
    assert blas_info()["threads"] == threads
    with load.on_cpus(None):  # not pinned: nothing changes
        assert os.sched_getaffinity(0) == usable
