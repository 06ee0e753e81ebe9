"""SIGTERM with tasks in flight, a second SIGTERM, SIGTERM during an idle long poll."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from typing import Any

import psycopg
import pytest

from procos_testkit.engine import EngineRest, wait_until
from procos_testkit.fake_ollama import FakeOllama
from procos_testkit.worker_process import WorkerProcess
from tests.faults.faultkit import all_completed, output_rows, success_count, task_ids

pytestmark = pytest.mark.faults

GRACE_S = 5.0
MARGIN_S = 2.5  # process exit, the sweep query, closing the pool
FAST_EXIT_S = 3.0  # far below what is being ruled out (a 20 s long poll, a 30 s grace) on a busy 2-core CI box


def _lock(engine: EngineRest, task_id: str) -> tuple[Any, Any]:
    task = engine.get(f"/external-task/{task_id}")
    return task["workerId"], task["lockExpirationTime"]


def test_sigterm_finishes_what_it_can_and_unlocks_the_rest(
    engine_rest: EngineRest, deployed: tuple[str, str], fake: FakeOllama, spawn: Callable[..., WorkerProcess],
    db: psycopg.Connection[Any],
) -> None:
    topic, key = deployed
    fake.set_behaviour(delay_ms=60_000)  # unmarked queries: far longer than the grace period
    quick = [engine_rest.start(key, {"query": f"quick {i} [[fake:delay_ms=1500]]"}) for i in range(2)]
    slow = [engine_rest.start(key, {"query": f"slow {i}"}) for i in range(2)]
    ids = task_ids(engine_rest, quick + slow)
    env = {"OLLAMA_BASE_URL": fake.base_url, "WORKER_SHUTDOWN_GRACE_S": str(GRACE_S),
           "WORKER_LOCK_DURATION_MS": "30000", "WORKER_MAX_TASKS_IN_FLIGHT": "4"}
    worker = spawn(topic, **env)
    for task_id in ids.values():
        worker.wait_for("task.input_stored", task_id=task_id)

    worker.signal(signal.SIGTERM)
    started = time.monotonic()
    assert worker.wait(GRACE_S + MARGIN_S + 5) == 0
    took = time.monotonic() - started
    assert took <= GRACE_S + MARGIN_S, f"exit took {took:.1f}s"

    for pi in quick:
        assert success_count(engine_rest, ids[pi]) == 1, "a task that finished within the grace is completed"
    for pi in slow:
        assert _lock(engine_rest, ids[pi]) == (None, None), "an unfinished task is unlocked, not left locked"
        assert engine_rest.get(f"/external-task/{ids[pi]}")["retries"] is None, "no retry burnt"
    stopped = worker.wait_for("worker.stopped")
    assert stopped["completed"] == 2 and stopped["released"] == 2

    # A new worker takes the released tasks at once (no lock to wait out): nothing lost.
    fake.set_behaviour(delay_ms=0)
    second = spawn(topic, **env)
    engine_rest.wait_for(all_completed(engine_rest, quick + slow), timeout_s=20, what="all four completed")
    for pi in quick + slow:
        assert success_count(engine_rest, ids[pi]) == 1 and output_rows(db, ids[pi]) == 1
    assert second.alive


def test_second_sigterm_exits_at_once(
    engine_rest: EngineRest, deployed: tuple[str, str], fake: FakeOllama, spawn: Callable[..., WorkerProcess],
) -> None:
    topic, key = deployed
    pi = engine_rest.start(key, {"query": "slow [[fake:delay_ms=60000]]"})
    task_id = task_ids(engine_rest, [pi])[pi]
    worker = spawn(topic, OLLAMA_BASE_URL=fake.base_url, WORKER_SHUTDOWN_GRACE_S="30")
    worker.wait_for("task.input_stored", task_id=task_id)
    worker.signal(signal.SIGTERM)
    worker.wait_for("worker.stopping")
    worker.signal(signal.SIGTERM)
    started = time.monotonic()
    assert worker.wait(5) == 130
    assert time.monotonic() - started < FAST_EXIT_S, "not the 30 s grace"
    # Nothing was completed without a stored answer; the lock simply runs out.
    assert success_count(engine_rest, task_id) == 0


def test_sigterm_during_idle_long_poll_exits_fast(
    deployed: tuple[str, str], spawn: Callable[..., WorkerProcess], fake: FakeOllama,
) -> None:
    topic, _key = deployed
    worker = spawn(topic, OLLAMA_BASE_URL=fake.base_url, WORKER_ASYNC_RESPONSE_TIMEOUT_MS="20000")
    worker.wait_for("worker.started")
    time.sleep(1.0)  # the long poll is waiting at the engine
    worker.signal(signal.SIGTERM)
    started = time.monotonic()
    assert worker.wait(5) == 0
    took = time.monotonic() - started
    assert took < FAST_EXIT_S, f"idle SIGTERM took {took:.2f}s, not the 20 s long poll"
    wait_until(lambda: worker.find("worker.stopped"), 2, "worker.stopped logged")
