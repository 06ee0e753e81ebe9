"""The worker end to end on the real stack: Camunda -> Ollama -> procos_ai_context -> complete."""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable
from typing import Any

import psycopg
import pytest

from procos_testkit.engine import EngineRest, json_variable
from procos_testkit.fake_ollama import FakeOllama
from procos_worker.outcomes import MAX_VARIABLE_CHARS
from procos_worker.settings import Settings
from procos_worker.store.context import ContextStore

pytestmark = pytest.mark.integration

# A prompt over the context is refused, never cut: the inputs below fit the 4096 tokens the stack
# serves (the same num_ctx, so Ollama does not reload the model). Set as the topic's default options:
# OLLAMA_OPTIONS would lose num_ctx to the model's row in procos_ai_models.
SMALL_ANSWER = {"num_predict": 24, "num_ctx": 4096, "seed": 7, "temperature": 0}


_WORDS = (
    "process", "task", "answer", "model", "order", "invoice", "customer", "ticket", "review", "service",
    "time", "data", "value", "report", "amount", "request", "status", "approve", "send", "check", "record",
    "store", "reply", "the", "a", "of", "to", "and", "in",
)


def _text(size: int, seed: int) -> str:
    # Common words are about one token each, so two 4,500-character inputs fit the served 4096 context.
    rng = random.Random(seed)
    text = " ".join(rng.choice(_WORDS) for _ in range(size // 4))
    # Some non-ASCII so "byte for byte" means something beyond ASCII.
    return (text + " äöü ✓ 日本語 ")[:size]


def _rows(db: psycopg.Connection[Any], process_instance_id: str) -> dict[str, dict[str, Any]]:
    with db.cursor(row_factory=psycopg.rows.dict_row) as cur:
        cur.execute("SELECT * FROM procos_ai_context WHERE process_instance_id = %s", (process_instance_id,))
        return {row["context_type"]: row for row in cur.fetchall()}


def test_example_process_end_to_end_with_real_model(
    engine_rest: EngineRest, deployed: tuple[str, str], run_worker: Callable[..., Any], db: psycopg.Connection[Any],
    store: ContextStore, ollama_up: str, settings: Settings,
) -> None:
    topic, key = deployed
    query = _text(4_500, 1)
    context = _text(4_500, 2)
    # Over 4000 characters, so they travel as Json variables (a String variable can't hold them).
    pi = engine_rest.start(key, {"query": json_variable(query), "context": json_variable(context)})

    run_worker(topic, task={"topic_defaults": {topic: {"procos.options": SMALL_ANSWER}}})
    engine_rest.wait_for(lambda: engine_rest.passed_task(pi), timeout_s=300, what="instance past the AI task")

    rows = _rows(db, pi)
    assert set(rows) == {"input", "output"}
    inp, out = rows["input"], rows["output"]
    assert inp["content_data"]["query"] == query
    assert inp["content_data"]["context"] == context
    assert query in inp["content_text"] and context in inp["content_text"]
    # What the model saw: every message, the model and the options (topic's over the model row's).
    assert inp["content_data"]["messages"] == [{"role": "user", "content": inp["content_text"]}]
    assert inp["model_used"] == settings.ollama.model
    assert inp["content_data"]["options"] == SMALL_ANSWER
    assert out["content_text"], "the model's answer is stored"
    assert out["content_data"]["content"] == out["content_text"]
    assert out["model_used"] == settings.ollama.model and out["ai_provider"] == "ollama"
    assert out["token_usage"]["prompt_tokens"] > 0 and out["token_usage"]["completion_tokens"] > 0
    assert out["content_data"]["done_reason"] in ("stop", "length")
    # Both rows say which BPMN step they belong to, down to the activity instance.
    [task_activity] = [a for a in engine_rest.get("/history/activity-instance", processInstanceId=pi)
                       if a["activityType"] == "serviceTask"]
    for row in (inp, out):
        assert (row["process_definition_key"], row["activity_id"], row["activity_instance_id"]) == (
            key, task_activity["activityId"], task_activity["id"])

    variables = engine_rest.variables(pi)
    assert variables["ai_context_id"]["value"] == str(out["id"])
    assert variables["ai_response_stored"]["value"] is True
    assert variables["ai_response_length"]["value"] == len(out["content_text"])
    # Every flag says what the output row says.
    usage = out["token_usage"]
    assert {name: variables[f"ai_{name}"]["value"] for name in (
        "model", "provider", "prompt_tokens", "completion_tokens", "total_tokens", "done_reason")} == {
        "model": out["model_used"], "provider": out["ai_provider"], "prompt_tokens": usage["prompt_tokens"],
        "completion_tokens": usage["completion_tokens"],
        "total_tokens": usage["prompt_tokens"] + usage["completion_tokens"],
        "done_reason": out["content_data"]["done_reason"]}
    assert "ai_prompt_truncated" not in variables, "only procos.onOverflow=truncate reports it"
    written = {name: v for name, v in variables.items() if name.startswith("ai_")}
    assert len(written) >= 8
    for name, var in written.items():
        assert len(str(var["value"])) <= MAX_VARIABLE_CHARS, name

    with db.cursor() as cur:
        cur.execute("SELECT query_text, ai_response FROM procos_ai_conversations WHERE process_instance_id = %s",
                    (pi,))
        view = cur.fetchall()
    assert (query, None) in view and (None, out["content_text"]) in view

    exchange_out = store.get(out["id"])
    exchange_in = store.get_input_for(out["id"])
    assert exchange_out is not None and exchange_out.content_text == out["content_text"]
    assert exchange_in is not None and exchange_in.content_data["query"] == query
    assert [row.context_type for row in store.conversation(pi)] == ["input", "output"]


def test_an_answer_cut_by_num_predict_says_length(
    engine_rest: EngineRest, deployed: tuple[str, str], run_worker: Callable[..., Any], db: psycopg.Connection[Any],
) -> None:
    topic, key = deployed
    pi = engine_rest.start(key, {"query": "Name three colours of the rainbow, with a sentence on each."})
    run_worker(topic, task={"topic_defaults": {topic: {"procos.options": {**SMALL_ANSWER, "num_predict": 2}}}})
    engine_rest.wait_for(lambda: engine_rest.passed_task(pi), timeout_s=300, what="instance past the AI task")
    out = _rows(db, pi)["output"]
    variables = engine_rest.variables(pi)
    assert variables["ai_done_reason"]["value"] == out["content_data"]["done_reason"] == "length"
    assert variables["ai_completion_tokens"]["value"] == out["token_usage"]["completion_tokens"] == 2


def test_large_answer_is_stored_byte_for_byte(
    engine_rest: EngineRest, deployed: tuple[str, str], run_worker: Callable[..., Any], db: psycopg.Connection[Any],
) -> None:
    # A real model can't be made to answer 3 MB on demand: the fake speaks Ollama's wire protocol.
    topic, key = deployed
    size = 3 * 1024 * 1024
    with FakeOllama() as fake:
        pi = engine_rest.start(key, {"query": f"long answer please [[fake:answer_bytes={size}]]"})
        run_worker(topic, ollama={"base_url": fake.base_url})
        engine_rest.wait_for(lambda: engine_rest.passed_task(pi), timeout_s=60, what="instance past the AI task")
    out = _rows(db, pi)["output"]
    expected = b"".join(_generated(size))
    assert len(out["content_text"]) == size
    assert hashlib.sha256(out["content_text"].encode()).digest() == hashlib.sha256(expected).digest()
    assert engine_rest.variables(pi)["ai_response_length"]["value"] == size


def _generated(size: int) -> Any:
    from procos_testkit.fake_ollama import generated_answer_chunks

    return generated_answer_chunks(size)


def test_long_string_variable_breaks_completion_but_worker_completes(
    engine_rest: EngineRest, deployed: tuple[str, str], run_worker: Callable[..., Any], db: psycopg.Connection[Any],
) -> None:
    """The reason for dual storage, on the real engine: a >4000-char String variable fails complete
    with HTTP 500 and leaves the task locked; the same task completed through procos-worker succeeds."""
    topic, key = deployed
    pi = engine_rest.start(key, {"query": "Summarise BPMN in one line. [[fake:answer_bytes=9000]]"})
    fetched = engine_rest.post("/external-task/fetchAndLock", {
        "workerId": "naive-worker", "maxTasks": 1,
        "topics": [{"topicName": topic, "lockDuration": 3000}],
    }).json()
    assert len(fetched) == 1
    task_id = fetched[0]["id"]

    response = engine_rest.post(f"/external-task/{task_id}/complete", {
        "workerId": "naive-worker", "variables": {"content": {"value": "x" * 9000, "type": "String"}},
    })
    assert response.status_code == 500, response.text
    assert response.json()["type"] == "ProcessEnginePersistenceException"
    task = engine_rest.get(f"/external-task/{task_id}")
    assert task["workerId"] == "naive-worker" and task["lockExpirationTime"] is not None
    assert not engine_rest.passed_task(pi)

    with FakeOllama() as fake:
        run_worker(topic, ollama={"base_url": fake.base_url})
        engine_rest.wait_for(lambda: engine_rest.passed_task(pi), timeout_s=60, what="worker completion")
    out = _rows(db, pi)["output"]
    assert len(out["content_text"]) == 9000
    assert engine_rest.variables(pi)["ai_response_length"]["value"] == 9000
