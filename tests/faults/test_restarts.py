"""Each service restarted (scripts/stack restart <service>) while 50 instances are in flight.

The worker process stays up, all 50 complete, every completion's ai_context_id is an output row of
its instance, no incidents. PostgreSQL and Camunda restarts run with the fake Ollama (100-300 ms
answers, for throughput); the Ollama restart restarts the real one, which answers every task.
"""

from __future__ import annotations

import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest

from procos_testkit.engine import EngineRest
from procos_testkit.fake_ollama import FakeOllama
from procos_testkit.worker_process import WorkerProcess
from tests.faults.faultkit import REPO, all_completed, completed, completed_ids_joined, success_count, task_ids

pytestmark = pytest.mark.faults

INSTANCES = 50
SMALL_ANSWER = '{"num_predict": 6, "seed": 7, "temperature": 0}'


def _restart(service: str, log: Path) -> threading.Thread:
    """``scripts/stack restart <service>`` in a thread. Output goes to a file: a service started in the
    background keeps the script's stdout open, so a pipe would never see EOF."""

    def run() -> None:
        with log.open("w") as out:
            result = subprocess.run([str(REPO / "scripts" / "stack"), "restart", service], stdout=out,
                                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, timeout=300, check=False)
        outcome[service] = result.returncode, log.read_text()[-3000:]

    outcome: dict[str, tuple[int, str]] = {}
    thread = threading.Thread(target=run, daemon=True)
    thread.outcome = outcome  # type: ignore[attr-defined]
    thread.start()
    return thread


@pytest.mark.parametrize("service", ["postgres", "camunda", "ollama"])
def test_service_restart_with_50_in_flight(
    service: str, engine_rest: EngineRest, deployed: tuple[str, str], fake: FakeOllama,
    spawn: Callable[..., WorkerProcess], real_ollama: str, settings: Any, tmp_path: Path,
) -> None:
    topic, key = deployed
    if service == "ollama":
        env = {"OLLAMA_OPTIONS": SMALL_ANSWER, "WORKER_MAX_TASKS_IN_FLIGHT": "2"}
        queries = [f"Say the number {i}." for i in range(INSTANCES)]
        before = 3
    else:
        env = {"OLLAMA_BASE_URL": fake.base_url, "WORKER_MAX_TASKS_IN_FLIGHT": "2"}
        queries = [f"q{i} [[fake:delay_ms={100 + (i * 37) % 200}]]" for i in range(INSTANCES)]
        before = 5
    pis = [engine_rest.start(key, {"query": q}) for q in queries]
    ids = task_ids(engine_rest, pis)
    worker = spawn(topic, **env)
    worker.wait_for("task.completed", count=before, timeout_s=120)

    started = time.monotonic()
    restart = _restart(service, tmp_path / f"restart-{service}.log")
    restart.join(timeout=300)
    code, output = restart.outcome[service]  # type: ignore[attr-defined]
    assert code == 0, f"scripts/stack restart {service} failed:\n{output}"
    restart_s = time.monotonic() - started
    done_at_restart = len(worker.find("task.completed"))
    assert done_at_restart < INSTANCES, "tasks were still in flight when the restart was over"

    deadline_s = 240 if service == "ollama" else 120
    waited = time.monotonic()
    pending = all_completed(engine_rest, pis)
    while not pending():
        assert worker.alive, "the worker process stays up"
        assert time.monotonic() - waited < deadline_s, (
            f"{sum(not completed(engine_rest, pi) for pi in pis)} of {INSTANCES} not completed after restart")
        time.sleep(1.0)

    assert worker.alive
    print(f"{service}: restart took {restart_s:.1f}s, {done_at_restart} completed when the restart was over; events:",
          {e: len(worker.find(e)) for e in ("service.down", "engine.fetch_failed", "task.report_retry",
                                            "task.refetched", "task.redelivered", "task.abandoned")})
    with psycopg.connect(settings.database.url.get_secret_value(), autocommit=True) as db:
        joined = completed_ids_joined(engine_rest, db, pis)
    assert len(set(joined.values())) == INSTANCES
    for pi in pis:
        assert success_count(engine_rest, ids[pi]) == 1
        assert not engine_rest.incidents(pi)
    # The outage was waited out, not turned into Camunda failures.
    assert worker.find("task.retry_scheduled") == [] and worker.find("task.incident") == []
