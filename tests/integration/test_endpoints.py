"""Issue 15 item 5 on the real stack: two real Ollama servers (the shared one and a second started on a
free port, sharing the model store); one is stopped mid-run and every task still completes exactly once,
without an incident and without spending a Camunda retry."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest

from procos_testkit.engine import EngineRest
from procos_testkit.second_ollama import SecondOllama
from procos_worker.ai.endpoints import EndpointPool

pytestmark = pytest.mark.integration

SMALL_ANSWER = {"num_predict": 16, "num_ctx": 4096, "seed": 7, "temperature": 0}
TASKS = 12


@pytest.fixture()
def second_ollama(ollama_up: str) -> Iterator[SecondOllama]:
    with SecondOllama() as second:
        yield second


def _outputs(db: psycopg.Connection[Any], process_instance_id: str) -> int:
    row = db.execute("SELECT count(*) FROM procos_ai_context WHERE process_instance_id = %s "
                     "AND context_type = 'output'", (process_instance_id,)).fetchone()
    assert row is not None
    return int(row[0])


def test_an_endpoint_stopped_mid_run_loses_no_task(
    engine_rest: EngineRest, deployed: tuple[str, str], run_worker: Callable[..., Any],
    db: psycopg.Connection[Any], ollama_up: str, second_ollama: SecondOllama,
) -> None:
    topic, key = deployed
    pis = [engine_rest.start(key, {"query": f"Say one word about the number {n}."}) for n in range(TASKS)]
    running = run_worker(topic, ollama={"base_urls": [ollama_up, second_ollama.base_url]},
                         worker={"max_tasks_in_flight": 4},
                         task={"topic_defaults": {topic: {"procos.options": SMALL_ANSWER}}})
    pool = running.worker.llm
    assert isinstance(pool, EndpointPool)
    # Both endpoints take work; then the second one goes away while tasks are still to do.
    engine_rest.wait_for(lambda: pool.states()[1].chosen >= 2, timeout_s=180, what="work on the second endpoint")
    second_ollama.stop()
    assert sum(engine_rest.passed_task(pi) for pi in pis) < TASKS, "stopped while tasks were still to do"
    engine_rest.wait_for(lambda: all(engine_rest.passed_task(pi) for pi in pis), timeout_s=600,
                         what=f"all {TASKS} instances past the AI task")
    first, second = pool.states()
    assert not second.up and second.down_reason, "the stopped endpoint is drained"
    assert first.up and first.chosen + second.chosen >= TASKS
    for pi in pis:
        assert _outputs(db, pi) == 1, f"{pi}: one answer stored"
        assert engine_rest.incidents(pi) == []
        assert engine_rest.activity_ids(pi).count("ask-ai") == 1
    # No Camunda retry was spent: no failure was reported for any of these tasks.
    logs = engine_rest.get("/history/external-task-log", topicName=topic, failureLog="true")
    assert logs == []
