"""A dependency is unreachable. No busy loop, no retries burnt, recovery within seconds.

Each service is made unreachable by a proxy in front of it (the real service keeps running for the
other tests): Camunda and Ollama by the HTTP proxy in ``refuse`` mode, PostgreSQL by a TCP proxy.
The worker runs with BACKOFF_INITIAL_S=0.2 and BACKOFF_MAX_S=2 (multiplier 2, jitter 25 %).
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from typing import Any

import psycopg
import pytest

from procos_testkit.engine import EngineRest, wait_until
from procos_testkit.holding_proxy import HoldingProxy
from procos_testkit.tcp_proxy import TcpProxy
from procos_testkit.worker_process import WorkerProcess
from tests.faults.faultkit import all_completed, db_url_via, output_rows, success_count, task_ids

pytestmark = pytest.mark.faults

SMALL_ANSWER = '{"num_predict": 8, "seed": 7, "temperature": 0}'
# Attempts in 5 s with delays 0.2, 0.4, 0.8, 1.6, 2, 2 (+/- 25 %): 5-7 plus the first; a busy loop is thousands.
MAX_ATTEMPTS_IN_5_S = 9
RECOVERY_S = 2 * 1.25 + 3.0  # one max backoff delay, then a fetch and the task itself


def _lock(engine: EngineRest, task_id: str) -> tuple[Any, Any, Any]:
    task = engine.get(f"/external-task/{task_id}")
    return task["workerId"], task["lockExpirationTime"], task["retries"]


def test_camunda_unreachable_backs_off_and_recovers(
    engine_rest: EngineRest, deployed: tuple[str, str], camunda_proxy: HoldingProxy, real_ollama: str,
    spawn: Callable[..., WorkerProcess],
) -> None:
    topic, key = deployed
    camunda_proxy.pause("refuse")
    worker = spawn(topic, CAMUNDA_BASE_URL=f"{camunda_proxy.base_url}/engine-rest", OLLAMA_OPTIONS=SMALL_ANSWER)
    worker.wait_for("worker.started")
    first = worker.wait_for("engine.fetch_failed")
    time.sleep(5.0)
    attempts = len(worker.find("engine.fetch_failed"))
    assert 3 <= attempts <= MAX_ATTEMPTS_IN_5_S, f"{attempts} fetch attempts in ~5 s"
    delays = [e["retry_in_s"] for e in worker.find("engine.fetch_failed")]
    assert max(delays) <= 2.0 and delays[0] < delays[2], f"growing, capped at BACKOFF_MAX_S: {delays}"
    assert "can't be reached" in first["error"]

    pi = engine_rest.start(key, {"query": "Name one fruit."})
    camunda_proxy.resume()
    resumed = time.monotonic()
    engine_rest.wait_for(all_completed(engine_rest, [pi]), timeout_s=30, what="completion after Camunda is back")
    assert time.monotonic() - resumed <= RECOVERY_S + 5, "recovered within one backoff delay (+ the LLM call)"
    assert worker.alive


def _held_and_not_taken(engine: EngineRest, worker: WorkerProcess, held: str, new: str) -> None:
    """For 4 s: ``held`` (met the outage) stays locked with no retry spent; ``new`` (created during the
    outage) is not kept. A long poll already open when the service went down may lock it: the worker
    then hands it straight back (task.released), so it is unlocked within a moment."""
    deadline = time.monotonic() + 4.0
    while time.monotonic() < deadline:
        held_by, expires, retries = _lock(engine, held)
        assert held_by is not None and expires is not None and retries is None, "held, no retry burnt"
        if _lock(engine, new) != (None, None, None):
            # Locked by the poll that was pending when the service went down: handed back at once.
            worker.wait_for("task.released", timeout_s=3, task_id=new)
            wait_until(lambda: _lock(engine, new) == (None, None, None), 3, "the new task not to be held")
        released = worker.find("task.released", task_id=new)
        assert len(released) <= 1 and all(r["reason"].endswith("down") for r in released), released
        time.sleep(0.5)
    assert _lock(engine, new) == (None, None, None), "no new task taken while a dependency is down"


def _two_tasks_across_outage(
    engine: EngineRest, worker: WorkerProcess, key: str, service: str,
) -> tuple[str, str, dict[str, str]]:
    """With ``service`` just made unreachable: one instance meets the outage, one is started during it.

    The first task waits holding its lock (heartbeat); the later one is not kept. Returns both process
    instance ids and their task ids."""
    first = engine.start(key, {"query": "Name one tree."})
    ids = task_ids(engine, [first])
    worker.wait_for("service.down", service=service)
    later = engine.start(key, {"query": "Name one river."})
    ids |= task_ids(engine, [later])
    _held_and_not_taken(engine, worker, ids[first], ids[later])
    return first, later, ids



def test_postgres_unreachable_holds_tasks_without_burning_retries(
    engine_rest: EngineRest, deployed: tuple[str, str], pg_proxy: TcpProxy, real_ollama: str,
    spawn: Callable[..., WorkerProcess], db: psycopg.Connection[Any],
) -> None:
    topic, key = deployed
    worker = spawn(topic, DATABASE_URL=db_url_via(pg_proxy.port),
                   OLLAMA_OPTIONS=SMALL_ANSWER, WORKER_LOCK_DURATION_MS="3000")
    worker.wait_for("worker.started")
    pg_proxy.pause()
    first, later, ids = _two_tasks_across_outage(engine_rest, worker, key, "postgresql")
    assert len(worker.find("service.down", service="postgresql")) == 1, "one line per outage, not per try"

    pg_proxy.resume()
    resumed = time.monotonic()
    engine_rest.wait_for(all_completed(engine_rest, [first, later]), timeout_s=30, what="completion after PG is back")
    assert time.monotonic() - resumed <= RECOVERY_S + 5
    for pi in (first, later):
        assert success_count(engine_rest, ids[pi]) == 1 and output_rows(db, ids[pi]) == 1
        assert not engine_rest.incidents(pi)
    assert worker.find("service.up", service="postgresql")



def test_ollama_unreachable_holds_tasks_without_burning_retries(
    engine_rest: EngineRest, deployed: tuple[str, str], ollama_proxy: HoldingProxy,
    spawn: Callable[..., WorkerProcess], db: psycopg.Connection[Any],
) -> None:
    topic, key = deployed
    worker = spawn(topic, OLLAMA_BASE_URL=ollama_proxy.base_url, OLLAMA_OPTIONS=SMALL_ANSWER,
                   WORKER_LOCK_DURATION_MS="3000")
    worker.wait_for("worker.started")
    ollama_proxy.pause("refuse")
    first, later, ids = _two_tasks_across_outage(engine_rest, worker, key, "ollama")

    ollama_proxy.resume()
    resumed = time.monotonic()
    engine_rest.wait_for(all_completed(engine_rest, [first, later]), timeout_s=60,
                         what="completion after Ollama is back")
    assert time.monotonic() - resumed <= RECOVERY_S + 10
    for pi in (first, later):
        assert success_count(engine_rest, ids[pi]) == 1 and output_rows(db, ids[pi]) == 1
        assert not engine_rest.get("/history/external-task-log", externalTaskId=ids[pi], failureLog="true")
    assert ollama_proxy.count("/api/chat") == 2, "one answered chat per task"
    wait_until(lambda: worker.find("service.up", service="ollama"), 5, "service.up logged")


def test_sigterm_while_ollama_is_down_releases_at_once(
    engine_rest: EngineRest, deployed: tuple[str, str], ollama_proxy: HoldingProxy,
    spawn: Callable[..., WorkerProcess],
) -> None:
    """A task waiting for an unreachable Ollama can't finish: shutdown doesn't wait the 30 s grace out."""
    topic, key = deployed
    worker = spawn(topic, OLLAMA_BASE_URL=ollama_proxy.base_url, OLLAMA_OPTIONS=SMALL_ANSWER,
                   WORKER_SHUTDOWN_GRACE_S="30")
    worker.wait_for("worker.started")
    ollama_proxy.pause("refuse")
    pi = engine_rest.start(key, {"query": "Name one river."})
    task_id = task_ids(engine_rest, [pi])[pi]
    worker.wait_for("service.down", service="ollama")
    worker.signal(signal.SIGTERM)
    started = time.monotonic()
    assert worker.wait(10) == 0
    assert time.monotonic() - started < 5.0, "released at once, not after the grace period"
    released = worker.wait_for("task.released", task_id=task_id)
    assert released["reason"] == "shutdown"
    _worker_id, lock_expiration, retries = _lock(engine_rest, task_id)
    assert lock_expiration is None and retries is None, "unlocked, no retry spent"
    # Camunda's unlock wakes our own long poll still pending in the engine, which re-locks the task: the
    # worker must have waited for that poll to come back and released the task again before exiting.
    taken = engine_rest.post("/external-task/fetchAndLock", {
        "workerId": "next-worker", "maxTasks": 10, "topics": [{"topicName": topic, "lockDuration": 1000}]})
    assert [t["id"] for t in taken.json()] == [task_id], "free for the next worker at once"
    ollama_proxy.resume()
