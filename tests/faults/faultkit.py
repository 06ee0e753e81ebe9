"""Helpers of the fault suite: how a subprocess worker is configured on the local stack, and small
queries that state what "done exactly once" means.

Nothing here mocks a service. The worker subprocess (``procos_testkit.worker_process``) and the
proxies that make a service look down or hold a request (``procos_testkit.holding_proxy``,
``procos_testkit.tcp_proxy``) forward to the real Camunda, PostgreSQL and Ollama.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, cast

import psycopg

from procos_testkit.engine import EngineRest

REPO = Path(__file__).resolve().parents[2]
# The console script next to the interpreter running the tests: what the image runs.
WORKER_COMMAND = (str(Path(sys.executable).with_name("procos-worker")), "run")
CAMUNDA_ROOT = "http://127.0.0.1:8080"
CAMUNDA_REST = f"{CAMUNDA_ROOT}/engine-rest"
DB_PASSWORD = "procos123"
DB_URL = f"postgresql://procos:{DB_PASSWORD}@127.0.0.1:5432/procos"
REAL_OLLAMA = "http://127.0.0.1:11434"


def worker_env(tmp: Path, topic: str, **overrides: str) -> dict[str, str]:
    """The environment of a subprocess worker: only what it needs, plus ``overrides``."""
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": os.environ.get("HOME", "/root"),
        "LANG": "C.UTF-8",
        "CAMUNDA_BASE_URL": CAMUNDA_REST,
        "OLLAMA_BASE_URL": REAL_OLLAMA,
        "DATABASE_URL": DB_URL,
        "WORKER_TOPICS": topic,
        "WORKER_LOCK_DURATION_MS": "2000",
        "WORKER_ASYNC_RESPONSE_TIMEOUT_MS": "5000",
        "WORKER_HEALTH_FILE": str(tmp / f"health-{topic}.json"),
        "LOG_FORMAT": "json",
        "LOG_LEVEL": "DEBUG",  # the tests wait for each step's event (task.fetched, task.stored...)
        # Short backoffs keep recovery inside the CI budget; the schedule's shape is what is tested.
        "BACKOFF_INITIAL_S": "0.2",
        "BACKOFF_MAX_S": "2",
        # No HTTP port unless a test asks for one: workers of tests running side by side must not
        # compete for the default 9464 (nor answer each other's health checks).
        "OPS_HTTP_PORT": "0",
    }
    env.update(overrides)
    return env


# -- what the engine and the database say ----------------------------------------------------------


def task_of(engine: EngineRest, process_instance_id: str) -> dict[str, Any]:
    """The (single) external task of an instance, from history (exists after completion too)."""
    rows = engine.get("/history/external-task-log", processInstanceId=process_instance_id, creationLog="true")
    assert rows, f"no external task created for {process_instance_id}"
    return cast(dict[str, Any], rows[0])


def task_ids(engine: EngineRest, process_instance_ids: list[str]) -> dict[str, str]:
    """process instance id -> external task id."""
    return {pi: str(task_of(engine, pi)["externalTaskId"]) for pi in process_instance_ids}


def success_count(engine: EngineRest, task_id: str) -> int:
    rows = engine.get("/history/external-task-log/count", externalTaskId=task_id, successLog="true")
    return int(rows["count"])


def failure_logs(engine: EngineRest, task_id: str) -> list[dict[str, Any]]:
    return cast(list[dict[str, Any]], engine.get("/history/external-task-log", externalTaskId=task_id,
                                                 failureLog="true"))


def output_rows(db: psycopg.Connection[Any], task_id: str) -> int:
    with db.cursor() as cur:
        cur.execute("SELECT count(*) FROM procos_ai_context WHERE task_id = %s AND context_type = 'output'",
                    (task_id,))
        row = cur.fetchone()
    assert row is not None
    return int(row[0])


def rows_by_type(db: psycopg.Connection[Any], task_id: str) -> Counter[str]:
    with db.cursor() as cur:
        cur.execute("SELECT context_type, count(*) FROM procos_ai_context WHERE task_id = %s GROUP BY 1",
                    (task_id,))
        return Counter({str(t): int(n) for t, n in cur.fetchall()})


def completed(engine: EngineRest, process_instance_id: str) -> bool:
    """The instance went past the AI task on the success path."""
    return engine.passed_task(process_instance_id, "review-answer")


def ended_at(engine: EngineRest, process_instance_id: str, activity_id: str) -> bool:
    return engine.passed_task(process_instance_id, activity_id)


def all_completed(engine: EngineRest, pis: list[str]) -> Callable[[], bool]:
    pending = set(pis)

    def check() -> bool:
        for pi in list(pending):
            if completed(engine, pi):
                pending.discard(pi)
        return not pending

    return check


def completed_ids_joined(engine: EngineRest, db: psycopg.Connection[Any], pis: list[str]) -> dict[str, str]:
    """pi -> ai_context_id from Camunda history, checked against procos_ai_context (same instance, output)."""
    joined: dict[str, str] = {}
    with db.cursor() as cur:
        for pi in pis:
            context_id = str(engine.variables(pi)["ai_context_id"]["value"])
            cur.execute("SELECT process_instance_id, context_type FROM procos_ai_context WHERE id = %s",
                        (context_id,))
            assert cur.fetchone() == (pi, "output"), f"{pi}: ai_context_id {context_id} has no output row"
            joined[pi] = context_id
    return joined


@contextlib.contextmanager
def timed() -> Iterator[Callable[[], float]]:
    start = time.monotonic()
    yield lambda: time.monotonic() - start
