"""Issue 9, item 9: settings that can only fail later are refused at start (exit 2, naming the setting).

* A model or provider name longer than its procos_ai_context column (model_used VARCHAR(100), ai_provider
  VARCHAR(50)) made every task ask the LLM and then fail to store the answer: an incident after the work.
* A pool smaller than the tasks in flight (plus the worker's own connections) made tasks wait for a
  connection; a pool timeout was then taken for "PostgreSQL down" and stopped the whole worker.
"""

from __future__ import annotations

from collections.abc import Callable

import psycopg
import pytest

from procos_testkit.engine import EngineRest
from procos_testkit.fake_ollama import FakeOllama
from procos_testkit.worker_process import WorkerProcess
from tests.faults.faultkit import DB_URL

pytestmark = pytest.mark.faults

EXIT_CONFIG = 2


def _column_width(column: str) -> int:
    with psycopg.connect(DB_URL) as conn:
        row = conn.execute("SELECT character_maximum_length FROM information_schema.columns "
                           "WHERE table_name = 'procos_ai_context' AND column_name = %s", (column,)).fetchone()
    assert row is not None and row[0] is not None
    return int(row[0])


@pytest.mark.parametrize(("setting", "column"), [("OLLAMA_MODEL", "model_used"), ("OLLAMA_PROVIDER", "ai_provider")])
def test_name_longer_than_its_column_is_refused_before_any_llm_call(
    setting: str, column: str, engine_rest: EngineRest, deployed: tuple[str, str], fake: FakeOllama,
    spawn: Callable[..., WorkerProcess],
) -> None:
    topic, key = deployed
    width = _column_width(column)
    too_long = "m" * (width + 1)
    if setting == "OLLAMA_MODEL":
        fake.models = (*fake.models, f"{too_long}:latest")  # the fake would answer for it
    engine_rest.start(key, {"query": "would be answered and then not stored"})
    worker = spawn(topic, OLLAMA_BASE_URL=fake.base_url, **{setting: too_long})
    assert worker.wait(30) == EXIT_CONFIG
    text = worker.text()
    assert setting in text and str(width) in text, text[-2000:]
    assert fake.chat_calls == 0, "refused before the LLM was asked"


def test_pool_smaller_than_the_tasks_in_flight_is_refused_at_start(
    deployed: tuple[str, str], fake: FakeOllama, spawn: Callable[..., WorkerProcess],
) -> None:
    topic, _key = deployed
    worker = spawn(topic, OLLAMA_BASE_URL=fake.base_url, DATABASE_POOL_MAX_SIZE="2", WORKER_MAX_TASKS_IN_FLIGHT="4")
    assert worker.wait(30) == EXIT_CONFIG
    text = worker.text()
    assert "DATABASE_POOL_MAX_SIZE" in text and "WORKER_MAX_TASKS_IN_FLIGHT" in text, text[-2000:]


def test_default_pool_follows_the_tasks_in_flight(
    engine_rest: EngineRest, deployed: tuple[str, str], fake: FakeOllama, spawn: Callable[..., WorkerProcess],
) -> None:
    """With no DATABASE_POOL_MAX_SIZE, 16 tasks in flight start and all complete (the pool is sized to fit)."""
    topic, key = deployed
    pis = [engine_rest.start(key, {"query": f"q{i} [[fake:delay_ms=1000]]"}) for i in range(16)]
    worker = spawn(topic, OLLAMA_BASE_URL=fake.base_url, WORKER_MAX_TASKS_IN_FLIGHT="16")
    worker.wait_for("task.completed", count=16, timeout_s=90)
    assert not worker.find("service.down")
    assert all(engine_rest.passed_task(pi) for pi in pis)
