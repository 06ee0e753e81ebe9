"""Smoke test of ``python -m procos_bench`` in a tiny configuration (not a timed test).

Runs P1 (curve at one level), P2, P4 (1 MiB instead of 64 MiB) and P5 once each on the local stack
and checks the JSON summary line: every key present, numbers positive, no duplicates. P3 (the real
model) and P3s are left out to keep this under a minute; their keys must then be null.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import requests

from procos_worker.settings import Settings

KEYS = {"p1_ratio_vs_ceiling", "p2_ratio_vs_library_worker", "p3_overhead_ratio", "p3_structured_overhead_ratio",
        "p4_seconds", "p4_rss_ratio", "p5_scaleout_ratio", "p5_duplicates", "p5_worker_cpu_ratio",
        "p6_endpoints_ratio", "p8_orphan_recovery_s"}

pytestmark = pytest.mark.integration


@pytest.mark.timeout(120)
def test_bench_tiny_run_prints_the_json_summary_last(settings: Settings) -> None:
    try:
        requests.get(f"{settings.camunda.base_url}/engine", timeout=5).raise_for_status()
    except requests.RequestException as exc:
        pytest.fail(f"Camunda not reachable ({exc}); start the local stack with: scripts/stack up")
    argv = [sys.executable, "-m", "procos_bench", "--only", "p1,p2,p4,p5", "--reps", "1", "--levels", "2",
            "--tasks", "10", "--p4-bytes", str(1024 * 1024), "--p4-reps", "1", "--p5-tasks", "20", "--no-docs",
            "--camunda-url", settings.camunda.base_url,
            "--database-url", settings.database.url.get_secret_value()]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=110, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.strip().splitlines()
    summary = json.loads(lines[-1])
    assert summary.keys() >= KEYS
    assert summary["p3_overhead_ratio"] is None and summary["p3_structured_overhead_ratio"] is None  # not run
    assert summary["p6_endpoints_ratio"] is None and summary["p8_orphan_recovery_s"] is None  # not run
    for key in KEYS - {"p3_overhead_ratio", "p3_structured_overhead_ratio", "p5_duplicates", "p6_endpoints_ratio",
                       "p8_orphan_recovery_s"}:
        assert isinstance(summary[key], float) and summary[key] > 0, (key, summary[key])
    assert summary["p5_duplicates"] == 0
    assert "| P1 |" in done.stdout and "| P5 |" in done.stdout and "| P5' ref |" in done.stdout
    ceiling = summary["details"]["results"]["p1"]["ceiling_cpu"]
    assert ceiling["cpu_ms_per_task"]["worker"]["median"] > 0 and ceiling["worker_cpu_ratio"]["median"] > 0
    steps = summary["details"]["results"]["p1"]["steps"]
    assert "| P5' steps |" in done.stdout and steps["tasks"] == 10, steps
    assert all(steps["ms_per_task"][name] > 0 for name in ("fetch", "store_input", "llm", "store_output", "complete"))
    assert summary["details"]["results"]["p4"]["answer_bytes"] == 1024 * 1024


@pytest.mark.timeout(180)
def test_bench_orphan_recovery_once(settings: Settings) -> None:
    """P8 once (``--only p8 --p8-reps 1``): a kill -9 with 4 tasks in flight, recovered by a second worker."""
    argv = [sys.executable, "-m", "procos_bench", "--only", "p8", "--p8-reps", "1", "--no-docs",
            "--camunda-url", settings.camunda.base_url, "--database-url", settings.database.url.get_secret_value()]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=170, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    seconds = summary["p8_orphan_recovery_s"]
    assert isinstance(seconds, float) and 0 < seconds < 60, summary  # 60 s: the lock it must not wait out
    checks = summary["details"]["results"]["p8"]["checks"]
    assert checks == [{"output_rows": 4, "max_rows_per_task_and_type": 1, "orphan_released_events": 4}]
    assert "| P8 |" in done.stdout
