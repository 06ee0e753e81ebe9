"""Issue 15 item 4 on the real stack: ``think`` sent to the real Ollama (smollm2 can't think: an
incident that says so), and a reasoning model's thinking stored in ``thinking_text`` (migration 0050)
apart from the answer, on a scratch database built by init-db.sql."""

from __future__ import annotations

import uuid

import psycopg
import pytest

from procos_testkit.pg import scratch_database
from procos_worker.ai.llm import LlmClient
from procos_worker.errors import LlmRequestInvalid
from procos_worker.models import LlmResult, Task, TaskInputs
from procos_worker.settings import DatabaseSettings, Settings
from procos_worker.store import migrations
from procos_worker.store.context import ContextStore

pytestmark = pytest.mark.integration


def test_think_on_a_model_that_cannot_is_an_invalid_request(settings: Settings, ollama_up: str) -> None:
    client = LlmClient(settings.ollama.model_copy(update={"think": True, "attempts": 1}))
    with pytest.raises(LlmRequestInvalid) as info:
        client.chat([{"role": "user", "content": "hi"}])
    assert "does not support thinking" in info.value.message and "procos.think" in info.value.message


def _result(content: str, thinking: str) -> LlmResult:
    return LlmResult(content=content, model="r1:1b", done_reason="stop", prompt_eval_count=5, eval_count=7,
                     total_duration_ns=1, load_duration_ns=0, prompt_eval_duration_ns=0, eval_duration_ns=0,
                     wall_s=0.1, thinking=thinking)


def _task() -> Task:
    return Task(id=f"think-{uuid.uuid4()}", topic="t", worker_id="w", process_instance_id=f"pi-{uuid.uuid4()}")


def test_thinking_is_stored_apart_from_the_answer(settings: Settings) -> None:
    with scratch_database(settings.database.url.get_secret_value()) as url:
        with psycopg.connect(url, autocommit=True) as conn:
            migrations.upgrade(conn)
        with ContextStore(DatabaseSettings(url=url)) as store:
            thought = store.save_output(_task(), _result("42", "Let me think\x00 about it."), None)
            plain = store.save_output(_task(), _result("plain", ""), None)
            assert store.thinking(thought.id) == "Let me think\x00 about it."
            assert store.thinking(plain.id) is None
            row = store.get(thought.id)
            assert row is not None and row.content_text == "42"
            with psycopg.connect(url) as conn:
                data = conn.execute("SELECT content_data FROM procos_ai_context WHERE id = %s",
                                    (str(thought.id),)).fetchone()
            assert data is not None and data[0]["thinking_length"] == len("Let me think\x00 about it.")
            assert "thinking" not in data[0] and "think" not in data[0]["content"]


def test_a_structured_attempt_keeps_its_own_thinking(settings: Settings) -> None:
    # A structured task's rejected answer (invalid_output_<n>, with what was wrong) and its valid one
    # (output) each keep the thinking of their own attempt; the input rows record think.
    task = _task()
    with scratch_database(settings.database.url.get_secret_value()) as url:
        with psycopg.connect(url, autocommit=True) as conn:
            migrations.upgrade(conn)
        with ContextStore(DatabaseSettings(url=url)) as store:
            input_id, _ = store.save_input(task, TaskInputs(query="q"), [{"role": "user", "content": "q"}],
                                           model="r1:1b", options={}, think="low", extra={"attempt": 1})
            invalid = store.save_output(task, _result("nope", "first try"), input_id,
                                        context_type="invalid_output_1", extra={"errors": ["not JSON"]})
            repair_id, _ = store.save_input(task, TaskInputs(query="q"), [{"role": "user", "content": "again"}],
                                            model="r1:1b", options={}, think="low", context_type="repair_input_2")
            valid = store.save_output(task, _result('{"a": 1}', "second try"), input_id,
                                      extra={"structured": {"a": 1}, "repair_input_id": str(repair_id)})
            assert store.thinking(invalid.id) == "first try" and store.thinking(valid.id) == "second try"
            rejected = store.answer_to(task.id, input_id, "invalid_output_1")
            assert rejected is not None and rejected.id == invalid.id and rejected.content_text == "nope"
            assert rejected.content_data["errors"] == ["not JSON"]
            answer, question = store.get(valid.id), store.get(input_id)
            assert answer is not None and answer.context_type == "output"
            assert answer.content_data["structured"] == {"a": 1}
            assert question is not None and question.content_data["think"] == "low"
            assert question.content_data["attempt"] == 1
