"""Smoke test of ``python -m procos_bench.scaling`` at a tiny size (not a timed test): it runs to the
end on the local stack and its JSON report has every part, with numbers that add up."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from procos_worker.settings import Settings

pytestmark = pytest.mark.integration


@pytest.mark.timeout(300)
def test_scaling_bench_tiny_run_reports_every_part(settings: Settings) -> None:
    argv = [sys.executable, "-m", "procos_bench.scaling", "--rows", "3000", "--reps", "2", "--small-rows", "40",
            "--big-bytes", str(256 * 1024), "--purge-batches", "2", "--batch-size", "100", "--full-purge",
            "--database-url", settings.database.url.get_secret_value(), "--camunda-url", settings.camunda.base_url]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=280, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout)
    assert report["fill"]["rows"] == 3000
    assert report["fill"]["bytes_per_row"]["idx_procos_ai_context_content_search"] > 0
    assert report["row_cost"]["big"]["answer_bytes"] == 256 * 1024
    assert report["row_cost"]["big"]["total_bytes"] > 256 * 1024, "the answer is stored (twice: text and JSONB)"
    queries = report["queries"]
    for key in ("show_query", "conversation_query", "show_cli", "stats_query[all]"):
        assert queries[key]["median_ms"] > 0, key
    assert queries["search_matches"]["zyxquorbal"] >= 0
    assert report["search_with_huge_row"].keys() == {k for k in queries if k.startswith("search_query[")}
    assert report["purge_batches"]["batches"] == 2
    full = report["full_purge"]
    # The generated rows span 180 days: about half are past 90 days; none of their instances runs.
    assert 0 < full["rows_purged"] < 3000 and full["instances_running"] == 0
