"""``/metrics`` of a running ``procos-worker run`` on the real stack, scraped by a real Prometheus
(Debian's package): the counters move by exactly the tasks the worker served, the token counters by
exactly what procos_ai_context recorded, ``promtool check metrics`` finds nothing wrong with the
exposition, and every query of the Grafana dashboard returns data.
"""

from __future__ import annotations

import json
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest
import requests

from procos_testkit.engine import EngineRest, wait_until
from procos_testkit.prometheus import PrometheusServer, prometheus_binaries
from procos_worker import __version__

pytestmark = pytest.mark.integration

DASHBOARD = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "dashboards" / "procos-worker.json"
SMALL_ANSWER = '{"num_predict": 16, "num_ctx": 2048, "seed": 3, "temperature": 0}'
ANSWERED, REJECTED = 3, 1


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _tokens(db: psycopg.Connection[Any], pis: list[str]) -> tuple[int, int]:
    row = db.execute("""SELECT sum((token_usage->>'prompt_tokens')::int), sum((token_usage->>'completion_tokens')::int)
                        FROM procos_ai_context WHERE context_type = 'output' AND process_instance_id = ANY(%s)""",
                     (pis,)).fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


def test_a_real_prometheus_scrapes_exact_counters_from_a_running_worker(
    engine_rest: EngineRest, deployed: tuple[str, str], spawn: Callable[..., Any],
    db: psycopg.Connection[Any], ollama_up: str, tmp_path: Path,
) -> None:
    topic, key = deployed
    port = free_port()
    worker = spawn(topic, OPS_HTTP_PORT=str(port), OLLAMA_OPTIONS=SMALL_ANSWER, WORKER_LOCK_DURATION_MS="60000")
    worker.wait_for("ops.http_started", timeout_s=60)
    with PrometheusServer([f"127.0.0.1:{port}"], tmp_path) as prometheus:
        series = f'topic="{topic}"'

        def scraped(expr: str) -> float | None:
            return prometheus.value(expr)

        wait_until(lambda: scraped('up{job="procos-worker"}') == 1.0, 60, "Prometheus's first scrape of the worker")
        assert scraped(f"procos_worker_tasks_fetched_total{{{series}}}") == 0.0

        answered = [engine_rest.start(key, {"query": f"Name a colour ({n})."}) for n in range(ANSWERED)]
        rejected = [engine_rest.start(key, {"not_the_query": "no query variable"}) for _ in range(REJECTED)]
        wait_until(lambda: all(engine_rest.passed_task(pi) for pi in answered), 300, "the answered instances")
        wait_until(lambda: all(engine_rest.passed_task(pi, "rejected") for pi in rejected), 60, "the rejections")
        wait_until(lambda: scraped(f'procos_worker_tasks_total{{{series},outcome="completed"}}') == ANSWERED
                   and scraped(f'procos_worker_tasks_total{{{series},outcome="bpmn_error"}}') == REJECTED,
                   30, "Prometheus to see every outcome")
        time.sleep(3)  # a few more scrapes: nothing else moves

        outcomes = {r["metric"]["outcome"]: float(r["value"][1])
                    for r in prometheus.query(f"procos_worker_tasks_total{{{series}}}")}
        assert outcomes == {"completed": ANSWERED, "bpmn_error": REJECTED, "failed": 0, "incident": 0,
                            "abandoned": 0, "released": 0}
        assert scraped(f"procos_worker_tasks_fetched_total{{{series}}}") == ANSWERED + REJECTED
        assert scraped(f"procos_worker_tasks_in_flight{{{series}}}") == 0
        prompt, completion = _tokens(db, answered)
        assert scraped('sum(procos_worker_prompt_tokens_total{model="smollm2:135m"})') == prompt
        assert scraped('sum(procos_worker_completion_tokens_total{model="smollm2:135m"})') == completion
        assert scraped('procos_worker_llm_duration_seconds_count{model="smollm2:135m"}') == ANSWERED
        # The rejected task's input is refused before anything is stored.
        assert scraped('procos_worker_store_duration_seconds_count{operation="input"}') == ANSWERED
        assert scraped('procos_worker_store_duration_seconds_count{operation="output"}') == ANSWERED
        assert scraped('procos_worker_complete_duration_seconds_count{outcome="complete"}') == ANSWERED
        assert scraped('procos_worker_complete_duration_seconds_count{outcome="bpmn_error"}') == REJECTED
        assert (scraped("procos_worker_fetch_duration_seconds_count") or 0) >= 1
        assert {r["metric"]["service"] for r in prometheus.query("procos_worker_service_up == 1")} == {
            "camunda", "postgresql", "ollama"}
        # The version comes from the installed package's metadata (ops may not import the package root).
        assert [r["metric"]["version"] for r in prometheus.query("procos_worker_build_info")] == [__version__]

        # Every query of the Grafana dashboard answers with data from this scrape.
        board = json.loads(DASHBOARD.read_text(encoding="utf-8"))
        for panel in board["panels"]:
            for target in panel["targets"]:
                expr = target["expr"].replace("$__rate_interval", "1m")
                assert prometheus.query(expr), f"{panel['title']}: {expr} returned nothing"

    exposition = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    promtool, _server = prometheus_binaries()
    lint = subprocess.run([str(promtool), "check", "metrics"], input=exposition, capture_output=True, text=True,
                          check=False, timeout=60)
    assert lint.returncode == 0, lint.stdout + lint.stderr
    assert "task_id" not in exposition and answered[0] not in exposition, "no unbounded label"
    for pi in answered:
        engine_rest.delete_instance(pi)
