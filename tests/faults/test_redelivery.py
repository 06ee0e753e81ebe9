"""Issue 9, item 4: redelivery trusts more than the task id.

A stored answer is reused only for the same attempt: the same prompt, model and options, in the same
process instance (``input_hash``). When what the task holds changed since the answer was stored (a
variable fixed after an incident, another model), the task is computed again and the new rows are kept
beside the old ones: history, not overwrite.

And the race in ``save_input``: two holders of one task (a lock that expired under a slow worker) insert
the same input row at once; the loser's ``ON CONFLICT DO NOTHING`` returns no row and its snapshot can't
see the winner's row either, so it got no input id at all.
"""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Callable
from typing import Any

import psycopg
import pytest

from procos_testkit.engine import EngineRest
from procos_testkit.fake_ollama import FakeOllama
from procos_testkit.holding_proxy import HoldingProxy
from procos_testkit.worker_process import WorkerProcess
from procos_worker.models import Task, TaskInputs
from procos_worker.store.context import ContextStore
from tests.faults.faultkit import completed, rows_by_type, success_count, task_of

pytestmark = pytest.mark.faults

CHANGES: dict[str, tuple[dict[str, Any], dict[str, str]]] = {
    # what changes between the first (killed) worker and the second: process variables, worker settings
    "query-changed": ({"query": "the corrected question"}, {}),
    "options-changed": ({}, {"OLLAMA_OPTIONS": json.dumps({"temperature": 0.5})}),
    "model-changed": ({}, {"OLLAMA_MODEL": "fake:latest"}),
}


@pytest.mark.parametrize("change", list(CHANGES))
def test_stored_answer_of_another_input_is_not_reused(
    change: str, engine_rest: EngineRest, deployed: tuple[str, str], fake: FakeOllama, camunda_proxy: HoldingProxy,
    spawn: Callable[..., WorkerProcess], db: psycopg.Connection[Any],
) -> None:
    variables, settings = CHANGES[change]
    topic, key = deployed
    pi = engine_rest.start(key, {"query": "the first question"})
    task_id = str(task_of(engine_rest, pi)["externalTaskId"])
    # The first worker stores its answer, then dies before Camunda hears of it.
    camunda_proxy.hold(r"/complete$", "request")
    first = spawn(topic, OLLAMA_BASE_URL=fake.base_url, CAMUNDA_BASE_URL=f"{camunda_proxy.base_url}/engine-rest")
    first.wait_for("task.stored", task_id=task_id, timeout_s=30)
    camunda_proxy.wait_held(1)
    first.kill()
    camunda_proxy.release(forward=False)
    old_answer = db.execute("SELECT id FROM procos_ai_context WHERE task_id = %s AND context_type = 'output'",
                            (task_id,)).fetchone()
    assert old_answer is not None

    for name, value in variables.items():
        assert engine_rest.session.put(f"{engine_rest.base_url}/process-instance/{pi}/variables/{name}",
                                       json={"value": value, "type": "String"}, timeout=10).status_code == 204
    second = spawn(topic, OLLAMA_BASE_URL=fake.base_url, **settings)
    engine_rest.wait_for(lambda: completed(engine_rest, pi), timeout_s=60, what="completion by the second worker")

    assert success_count(engine_rest, task_id) == 1
    assert fake.chat_calls == 2, "computed again: the stored answer was for another input"
    assert not second.find("task.redelivered")
    assert rows_by_type(db, task_id) == {"input": 2, "output": 2}, "the old rows are kept beside the new ones"
    used = engine_rest.variables(pi)["ai_context_id"]["value"]
    assert used != str(old_answer[0])
    source = db.execute("SELECT i.content_data FROM procos_ai_context o JOIN procos_ai_context i "
                        "ON i.id = (o.content_data->>'input_context_id')::uuid WHERE o.id = %s", (used,)).fetchone()
    assert source is not None
    if "query" in variables:
        assert source[0]["query"] == variables["query"]


def test_same_input_redelivered_reuses_the_stored_answer(
    engine_rest: EngineRest, deployed: tuple[str, str], fake: FakeOllama, camunda_proxy: HoldingProxy,
    spawn: Callable[..., WorkerProcess], db: psycopg.Connection[Any],
) -> None:
    """The other side of the rule: nothing changed, so the answer is not asked for twice."""
    topic, key = deployed
    pi = engine_rest.start(key, {"query": "ask me once"})
    task_id = str(task_of(engine_rest, pi)["externalTaskId"])
    camunda_proxy.hold(r"/complete$", "request")
    first = spawn(topic, OLLAMA_BASE_URL=fake.base_url, CAMUNDA_BASE_URL=f"{camunda_proxy.base_url}/engine-rest")
    first.wait_for("task.stored", task_id=task_id, timeout_s=30)
    camunda_proxy.wait_held(1)
    first.kill()
    camunda_proxy.release(forward=False)
    second = spawn(topic, OLLAMA_BASE_URL=fake.base_url)
    engine_rest.wait_for(lambda: completed(engine_rest, pi), timeout_s=60, what="completion by the second worker")
    assert second.find("task.redelivered", task_id=task_id)
    assert fake.chat_calls == 1
    assert rows_by_type(db, task_id) == {"input": 1, "output": 1}


def test_two_holders_inserting_the_same_input_row_both_get_it(store: ContextStore, db: psycopg.Connection[Any]) -> None:
    task = Task(id=f"race-{uuid.uuid4()}", topic="race", worker_id="w", process_instance_id=f"pi-{uuid.uuid4()}")
    inputs = TaskInputs(query="who wins?")
    asked = [{"role": "user", "content": "who wins?"}]
    save = lambda: store.save_input(task, inputs, asked, model="smollm2:135m", options={})  # noqa: E731
    winner_id, _ = save()
    # The winner's row, uncommitted in another session: the loser's insert waits for it, then conflicts.
    db.execute("CREATE TEMP TABLE race_row AS SELECT * FROM procos_ai_context WHERE id = %s", (winner_id,))
    db.execute("DELETE FROM procos_ai_context WHERE id = %s", (winner_id,))
    row = db.execute("SELECT row_to_json(r) FROM race_row r").fetchone()
    assert row is not None
    other = psycopg.connect(db.info.dsn, password="procos123")
    try:
        other.execute("INSERT INTO procos_ai_context SELECT * FROM json_populate_record(NULL::procos_ai_context, %s)",
                      (json.dumps(row[0]),))
        result: dict[str, Any] = {}

        def loser() -> None:
            try:
                result["value"] = save()
            except Exception as exc:  # noqa: BLE001 - the assertion below reports it
                result["error"] = exc

        thread = threading.Thread(target=loser)
        thread.start()
        thread.join(1.0)
        assert thread.is_alive(), "the loser waits for the winner's uncommitted row"
        other.commit()
        thread.join(30)
    finally:
        other.close()
    assert "error" not in result, f"save_input failed: {result.get('error')!r}"
    loser_id, stored = result["value"]
    assert loser_id == winner_id and stored is None
