"""A generation that outlasts the lock; a lock that is lost while the task runs."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import psycopg
import pytest
import requests

from procos_testkit.engine import EngineRest, wait_until
from procos_testkit.fake_ollama import FakeOllama
from procos_testkit.holding_proxy import HoldingProxy
from tests.faults.faultkit import completed, output_rows, success_count, task_of

pytestmark = pytest.mark.faults

LOCK_MS = 2000


def _lock_of(engine: EngineRest, task_id: str) -> tuple[str | None, str | None] | None:
    response = engine.session.get(f"{engine.base_url}/external-task/{task_id}", timeout=10)
    if response.status_code == 404:
        return None
    body = response.json()
    return body.get("workerId"), body.get("lockExpirationTime")


def test_answer_slower_than_the_lock_completes_once_with_extended_lock(
    engine_rest: EngineRest, deployed: tuple[str, str], fake: FakeOllama, run_worker: Callable[..., Any],
    db: psycopg.Connection[Any],
) -> None:
    topic, key = deployed
    # 5x the lock duration.
    pi = engine_rest.start(key, {"query": f"slow please [[fake:delay_ms={5 * LOCK_MS}]]"})
    task_id = str(task_of(engine_rest, pi)["externalTaskId"])
    running = run_worker(topic, worker={"lock_duration_ms": LOCK_MS}, ollama={"base_url": fake.base_url})

    expirations: set[str] = set()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not completed(engine_rest, pi):
        lock = _lock_of(engine_rest, task_id)
        if lock is not None and lock[1] is not None:
            assert lock[0] == running.worker.settings.worker.id
            expirations.add(lock[1])
        time.sleep(0.25)

    assert completed(engine_rest, pi), "the slow task completed"
    assert success_count(engine_rest, task_id) == 1
    assert output_rows(db, task_id) == 1
    assert fake.chat_calls == 1, "one LLM call: the lock never expired, the task was never redelivered"
    # The engine's lockExpirationTime moved forward several times during the 10 s answer.
    assert len(expirations) >= 4, sorted(expirations)
    assert running.worker.counters.completed == 1 and running.worker.counters.abandoned == 0


def test_stolen_lock_is_abandoned_not_completed(
    engine_rest: EngineRest, deployed: tuple[str, str], fake: FakeOllama, run_worker: Callable[..., Any],
    camunda_proxy: HoldingProxy, db: psycopg.Connection[Any],
) -> None:
    topic, key = deployed
    pi = engine_rest.start(key, {"query": "slow please [[fake:delay_ms=6000]]"})
    task_id = str(task_of(engine_rest, pi)["externalTaskId"])
    # The heartbeat's extendLock calls are held at the proxy: the lock runs out.
    camunda_proxy.hold(r"/extendLock$")
    # One task at a time: the worker's own poll can't re-take the expired lock before the thief does.
    running = run_worker(topic, worker={"lock_duration_ms": LOCK_MS, "max_tasks_in_flight": 1},
                         ollama={"base_url": fake.base_url},
                         camunda={"base_url": f"{camunda_proxy.base_url}/engine-rest"})
    camunda_proxy.wait_held(1, timeout_s=15)
    time.sleep(LOCK_MS / 1000 + 0.5)

    stolen = engine_rest.post("/external-task/fetchAndLock", {
        "workerId": "thief", "maxTasks": 1, "topics": [{"topicName": topic, "lockDuration": 60_000}],
    }).json()
    assert [t["id"] for t in stolen] == [task_id], "the expired lock was taken by another worker"
    camunda_proxy.release(forward=True)  # the held extendLock now reaches the engine: 400, not ours

    wait_until(lambda: running.worker.counters.abandoned >= 1, 20, "the worker to abandon the task")
    assert running.worker.counters.completed == 0
    assert _lock_of(engine_rest, task_id) is not None and _lock_of(engine_rest, task_id)[0] == "thief"  # type: ignore[index]
    assert not completed(engine_rest, pi)
    assert camunda_proxy.received(f"/engine-rest/external-task/{task_id}/complete") == 0
    # The thief finishes it; exactly one completion, by the thief.
    done = engine_rest.post(f"/external-task/{task_id}/complete", {"workerId": "thief", "variables": {}})
    assert done.status_code == 204, done.text
    logs = engine_rest.get("/history/external-task-log", externalTaskId=task_id, successLog="true")
    assert [row["workerId"] for row in logs] == ["thief"]
    assert running.alive


def test_lock_expired_and_refetched_by_the_same_worker_runs_once(
    engine_rest: EngineRest, deployed: tuple[str, str], fake: FakeOllama, run_worker: Callable[..., Any],
    camunda_proxy: HoldingProxy, db: psycopg.Connection[Any],
) -> None:
    """The heartbeat can't reach the engine, the lock runs out, and the worker's own next poll locks the
    task again: the run in progress keeps it; no second run, no second LLM call (was: two runs)."""
    topic, key = deployed
    pi = engine_rest.start(key, {"query": "slow please [[fake:delay_ms=8000]]"})
    task_id = str(task_of(engine_rest, pi)["externalTaskId"])
    camunda_proxy.hold(r"/extendLock$")
    running = run_worker(topic, worker={"lock_duration_ms": LOCK_MS}, ollama={"base_url": fake.base_url},
                         camunda={"base_url": f"{camunda_proxy.base_url}/engine-rest"})
    wait_until(lambda: running.worker.counters.fetched >= 2, 15, "the worker to fetch its expired task again")
    camunda_proxy.release(forward=False)
    engine_rest.wait_for(lambda: completed(engine_rest, pi), timeout_s=20, what="completion")
    assert fake.chat_calls == 1
    assert success_count(engine_rest, task_id) == 1 and output_rows(db, task_id) == 1
    assert running.worker.counters.completed == 1 and running.worker.counters.abandoned == 0
    wait_until(lambda: running.worker.in_flight == 0, 5, "no run left behind")


def test_instance_deleted_while_task_runs_is_abandoned_and_worker_carries_on(
    engine_rest: EngineRest, deployed: tuple[str, str], fake: FakeOllama, run_worker: Callable[..., Any],
) -> None:
    topic, key = deployed
    pi = engine_rest.start(key, {"query": "slow please [[fake:delay_ms=5000]]"})
    task_id = str(task_of(engine_rest, pi)["externalTaskId"])
    running = run_worker(topic, worker={"lock_duration_ms": LOCK_MS}, ollama={"base_url": fake.base_url})
    wait_until(lambda: (_lock_of(engine_rest, task_id) or (None,))[0] is not None, 15, "the task to be locked")
    engine_rest.delete_instance(pi)

    wait_until(lambda: running.worker.counters.abandoned >= 1, 20, "the worker to abandon the deleted task")
    assert running.worker.counters.completed == 0 and running.worker.counters.failed == 0
    with pytest.raises(requests.HTTPError):
        engine_rest.get(f"/external-task/{task_id}")
    # The worker is fine: the next instance completes.
    pi2 = engine_rest.start(key, {"query": "and now a quick one"})
    engine_rest.wait_for(lambda: completed(engine_rest, pi2), timeout_s=20, what="the next task to complete")
    assert running.alive and running.worker.counters.completed == 1
