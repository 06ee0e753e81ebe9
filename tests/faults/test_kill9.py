"""SIGKILL the worker process at each step of a task, restart it: the task ends completed
exactly once, with exactly one output row, and Ollama is not asked again once the answer was stored.

The worker runs as ``procos-worker run`` against the real Camunda, PostgreSQL and Ollama; proxies in
front of them (counting, able to hold one call) make each kill point deterministic.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import psycopg
import pytest

from procos_testkit.engine import EngineRest
from procos_testkit.holding_proxy import HoldingProxy
from procos_testkit.tcp_proxy import TcpProxy
from procos_testkit.worker_process import WorkerProcess
from tests.faults.faultkit import completed, db_url_via, rows_by_type, success_count, task_of

pytestmark = pytest.mark.faults

SMALL_ANSWER = json.dumps({"num_predict": 12, "seed": 7, "temperature": 0})




# kill point -> /api/chat calls Ollama really answered in the end (1: never asked again after storing).
KILL_POINTS = {
    "after-fetch": 1,            # locked, nothing stored (PostgreSQL held down so the kill can't be late)
    "after-input-row": 1,        # input row stored, the chat request held before it reached Ollama
    "during-llm-call": 2,        # Ollama answered, the worker died before hearing it: asked again
    "after-output-row": 1,       # output row stored, /complete held before it reached Camunda
    "complete-unacknowledged": 1,  # Camunda completed the task, the worker died before hearing it
    "after-complete": 1,         # task.completed logged
}


def _arm(point: str, ollama_proxy: HoldingProxy, camunda_proxy: HoldingProxy, pg_proxy: TcpProxy) -> None:
    """Set the trap that stops the worker exactly at ``point``."""
    if point == "after-fetch":
        pg_proxy.pause()
    elif point == "after-input-row":
        ollama_proxy.hold(r"^/api/chat$", "request")
    elif point == "during-llm-call":
        ollama_proxy.hold(r"^/api/chat$", "response")
    elif point == "after-output-row":
        camunda_proxy.hold(r"/complete$", "request")
    elif point == "complete-unacknowledged":
        camunda_proxy.hold(r"/complete$", "response")


def _reach(point: str, worker: WorkerProcess, task_id: str, ollama_proxy: HoldingProxy,
           camunda_proxy: HoldingProxy) -> None:
    """Wait until the worker stands at ``point`` (the trap holds it there)."""
    if point == "after-fetch":
        worker.wait_for("task.fetched", task_id=task_id)
        worker.wait_for("service.down", service="postgresql")
    elif point == "after-input-row":
        worker.wait_for("task.input_stored", task_id=task_id)
        ollama_proxy.wait_held(1)
    elif point == "during-llm-call":
        ollama_proxy.wait_held(1)
        assert ollama_proxy.count("/api/chat") == 1, "Ollama got the request and answered it"
    elif point in ("after-output-row", "complete-unacknowledged"):
        worker.wait_for("task.stored", task_id=task_id, timeout_s=60)
        camunda_proxy.wait_held(1)
    else:
        worker.wait_for("task.completed", task_id=task_id, timeout_s=60)


@pytest.mark.parametrize("point", list(KILL_POINTS))
def test_sigkill_then_restart_completes_exactly_once(
    point: str, engine_rest: EngineRest, deployed: tuple[str, str], spawn: Callable[..., WorkerProcess],
    ollama_proxy: HoldingProxy, camunda_proxy: HoldingProxy, pg_proxy: TcpProxy, db: psycopg.Connection[Any],
) -> None:
    topic, key = deployed
    env = {
        "CAMUNDA_BASE_URL": f"{camunda_proxy.base_url}/engine-rest",
        "OLLAMA_BASE_URL": ollama_proxy.base_url,
        "OLLAMA_OPTIONS": SMALL_ANSWER,
        "DATABASE_URL": db_url_via(pg_proxy.port),
        "WORKER_MAX_TASKS_IN_FLIGHT": "1",
    }
    first = spawn(topic, **env)
    first.wait_for("worker.started", timeout_s=30)

    _arm(point, ollama_proxy, camunda_proxy, pg_proxy)
    pi = engine_rest.start(key, {"query": "Name one colour."})
    task_id = str(task_of(engine_rest, pi)["externalTaskId"])
    _reach(point, first, task_id, ollama_proxy, camunda_proxy)

    assert first.kill() == -9
    if point == "complete-unacknowledged":
        camunda_proxy.release(forward=True)  # the engine did complete it; the dead worker never heard
    else:
        ollama_proxy.release(forward=False)
        camunda_proxy.release(forward=False)
    pg_proxy.pause()
    pg_proxy.resume()

    second = spawn(topic, **env)
    engine_rest.wait_for(lambda: completed(engine_rest, pi), timeout_s=60, what=f"completion after kill {point}")
    second.wait_for("worker.started")
    if point not in ("complete-unacknowledged", "after-complete"):
        done = second.wait_for("task.completed", task_id=task_id, timeout_s=30)
        assert done["ai_context_id"] == engine_rest.variables(pi)["ai_context_id"]["value"]

    assert success_count(engine_rest, task_id) == 1, "completed exactly once"
    assert rows_by_type(db, task_id) == {"input": 1, "output": 1}
    assert ollama_proxy.count("/api/chat") == KILL_POINTS[point]
    if point == "after-output-row":
        assert second.find("task.redelivered", task_id=task_id), "the stored answer was reused"
    assert not engine_rest.incidents(pi)
    assert second.alive
    # Every log line of the task is one JSON object carrying its task_id.
    for event in first.find("task.fetched") + second.find("task.fetched"):
        assert event["task_id"] == task_id
