"""Issue 9, item 3: the heartbeat keeps good work.

* An ``extendLock`` refused because the lock just expired does not throw the run away: nobody else holds
  the task, so the worker locks it again and completes it (only a task now locked by another worker is
  lost: tests/faults/test_heartbeat.py::test_stolen_lock_is_abandoned_not_completed).
* Locks are extended concurrently: one extension hanging (here: held at a proxy) does not let the other
  tasks' locks run out.
* 401/403/429 from the engine (or a gateway in front of it) are not "lock lost".
* A run marked lost stops its LLM call at once instead of generating an answer nobody will take.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest

from procos_testkit.engine import EngineRest, wait_until
from procos_testkit.fake_ollama import FakeOllama
from procos_testkit.holding_proxy import HoldingProxy
from procos_testkit.worker_process import WorkerProcess
from tests.faults.faultkit import success_count, task_of

pytestmark = pytest.mark.faults

LOCK_MS = 2000


def _lock_expiry(engine: EngineRest, task_id: str) -> str | None:
    response = engine.session.get(f"{engine.base_url}/external-task/{task_id}", timeout=10)
    return response.json().get("lockExpirationTime") if response.ok else None


def test_late_extension_of_an_expired_lock_keeps_the_run(
    engine_rest: EngineRest, deployed: tuple[str, str], fake: FakeOllama, camunda_proxy: HoldingProxy,
    spawn: Callable[..., WorkerProcess],
) -> None:
    topic, key = deployed
    pi = engine_rest.start(key, {"query": "slow please [[fake:delay_ms=7000]]"})
    task_id = str(task_of(engine_rest, pi)["externalTaskId"])
    camunda_proxy.hold(r"/extendLock$")
    # One task at a time: the worker's own poll can't take the expired task as a second run.
    worker = spawn(topic, OLLAMA_BASE_URL=fake.base_url, CAMUNDA_BASE_URL=f"{camunda_proxy.base_url}/engine-rest",
                   WORKER_LOCK_DURATION_MS=str(LOCK_MS), WORKER_MAX_TASKS_IN_FLIGHT="1")
    camunda_proxy.wait_held(1, timeout_s=20)
    time.sleep(LOCK_MS / 1000 + 1.0)  # the lock runs out while the extension is held
    camunda_proxy.release(forward=True)  # the engine answers: "Cannot extend a lock that expired"

    engine_rest.wait_for(lambda: engine_rest.passed_task(pi), timeout_s=40, what="completion by the same run")
    assert worker.find("task.lock_renewed", task_id=task_id), "the expired lock was taken again"
    assert not worker.find("task.lock_lost") and not worker.find("task.not_reported")
    assert len(worker.find("task.fetched", task_id=task_id)) == 1, "one run, not a second fetch"
    assert success_count(engine_rest, task_id) == 1 and fake.chat_calls == 1


def test_one_hanging_extension_does_not_let_the_other_locks_expire(
    engine_rest: EngineRest, deployed: tuple[str, str], fake: FakeOllama, camunda_proxy: HoldingProxy,
    spawn: Callable[..., WorkerProcess],
) -> None:
    topic, key = deployed
    slow, other = (engine_rest.start(key, {"query": f"slow {i} [[fake:delay_ms=9000]]"}) for i in range(2))
    held_id = str(task_of(engine_rest, slow)["externalTaskId"])
    other_id = str(task_of(engine_rest, other)["externalTaskId"])
    camunda_proxy.hold(rf"/external-task/{held_id}/extendLock$")
    worker = spawn(topic, OLLAMA_BASE_URL=fake.base_url, CAMUNDA_BASE_URL=f"{camunda_proxy.base_url}/engine-rest",
                   WORKER_LOCK_DURATION_MS=str(LOCK_MS), WORKER_MAX_TASKS_IN_FLIGHT="2")
    camunda_proxy.wait_held(1, timeout_s=20)

    seen: set[str] = set()
    deadline = time.monotonic() + 6
    while time.monotonic() < deadline:  # the held extension hangs; the other lock must keep moving
        expiry = _lock_expiry(engine_rest, other_id)
        if expiry is not None:
            seen.add(expiry)
        time.sleep(0.2)
    camunda_proxy.release(forward=True)
    assert len(seen) >= 4, f"the other task's lock was extended while one extension hung: {sorted(seen)}"
    engine_rest.wait_for(lambda: engine_rest.passed_task(other) and engine_rest.passed_task(slow), timeout_s=40,
                         what="both completed")
    assert not worker.find("task.lock_lost")


@pytest.mark.parametrize("status", [401, 403, 429])
def test_refused_extension_is_not_a_lost_lock(
    status: int, engine_rest: EngineRest, deployed: tuple[str, str], fake: FakeOllama,
    camunda_proxy: HoldingProxy, spawn: Callable[..., WorkerProcess],
) -> None:
    topic, key = deployed
    pi = engine_rest.start(key, {"query": "slow please [[fake:delay_ms=6000]]"})
    task_id = str(task_of(engine_rest, pi)["externalTaskId"])
    camunda_proxy.answer(r"/extendLock$", status, '{"type": "RestException", "message": "not now"}')
    worker = spawn(topic, OLLAMA_BASE_URL=fake.base_url, CAMUNDA_BASE_URL=f"{camunda_proxy.base_url}/engine-rest",
                   WORKER_LOCK_DURATION_MS=str(LOCK_MS), WORKER_MAX_TASKS_IN_FLIGHT="1")
    wait_until(lambda: sum(camunda_proxy.answered.values()) >= 2, 20, f"extensions answered {status}")
    camunda_proxy.stop_answering()
    engine_rest.wait_for(lambda: engine_rest.passed_task(pi), timeout_s=40, what="completion")
    worker.wait_for("task.completed", timeout_s=10, task_id=task_id)  # logged just after the engine has it
    assert not worker.find("task.lock_lost"), f"{status} taken for a lost lock"


def test_lost_run_stops_its_llm_call(
    engine_rest: EngineRest, deployed: tuple[str, str], fake: FakeOllama, spawn: Callable[..., WorkerProcess],
) -> None:
    """A streamed answer of ~20 s (100 chunks, 0.2 s apart); the instance is deleted after 2 s: the
    extension finds the task gone, the run is lost, and the LLM call ends within a chunk or two."""
    topic, key = deployed
    pi = engine_rest.start(key, {"query": "long [[fake:answer_bytes=200,chunk_chars=2,chunk_delay_ms=200]]"})
    task_id = str(task_of(engine_rest, pi)["externalTaskId"])
    worker = spawn(topic, OLLAMA_BASE_URL=fake.base_url, WORKER_LOCK_DURATION_MS=str(LOCK_MS))
    worker.wait_for("task.input_stored", task_id=task_id)
    time.sleep(2.0)
    engine_rest.delete_instance(pi)
    lost = worker.wait_for("task.lock_lost", task_id=task_id, timeout_s=10)
    ended: dict[str, Any] = worker.wait_for("task.not_reported", task_id=task_id, timeout_s=15)
    assert ended["state"] == "lost"
    assert float(ended["elapsed_s"]) - float(lost["elapsed_s"]) < 3.0, "the LLM call stopped, not run to its end"
    assert not worker.find("task.llm_answered", task_id=task_id)
