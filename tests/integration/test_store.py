"""procos_ai_context on the real PostgreSQL: exactly-once writes and lossless reads, small and huge."""

from __future__ import annotations

import uuid

import pytest

from procos_worker.models import LlmResult, Task, TaskInputs
from procos_worker.store.context import ContextStore

pytestmark = pytest.mark.integration

MODEL = {"model": "smollm2:135m", "options": {"num_ctx": 4096}}


def _asked(prompt: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": prompt}]


def _task() -> Task:
    return Task(id=f"test-{uuid.uuid4()}", topic="ai-query", worker_id="w", process_instance_id=f"pi-{uuid.uuid4()}")


def _result(content: str) -> LlmResult:
    return LlmResult(content=content, model="smollm2:135m", done_reason="stop", prompt_eval_count=5, eval_count=7,
                     total_duration_ns=1, load_duration_ns=1, prompt_eval_duration_ns=1, eval_duration_ns=1, wall_s=0.1)


def test_each_task_gets_one_input_and_one_output_row_however_often_it_is_written(store: ContextStore) -> None:
    task = _task()
    first_id, none = store.save_input(task, TaskInputs(query="Why?"), _asked("Why?"), **MODEL)
    again_id, still_none = store.save_input(task, TaskInputs(query="Why?"), _asked("Why?"), **MODEL)
    assert first_id == again_id and none is None and still_none is None

    out = store.save_output(task, _result("Because."), first_id, prompt_chars=4)
    repeat = store.save_output(task, _result("A second, different answer."), first_id)
    assert repeat == out, "the first stored answer wins"
    redelivered_id, stored = store.save_input(task, TaskInputs(query="Why?"), _asked("Why?"), **MODEL)
    assert redelivered_id == first_id and stored == out
    rows = store.conversation(task.process_instance_id)
    assert [r.context_type for r in rows] == ["input", "output"]
    assert rows[1].content_text == "Because." and rows[1].token_usage == {
        "prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12, "prompt_eval_count": 5, "eval_count": 7,
        "wall_s": 0.1, "eval_duration_ns": 1, "response_chars": 8, "prompt_chars": 4}
    assert rows[0].model_used == "smollm2:135m" and rows[0].content_data["options"] == MODEL["options"]
    assert rows[0].content_data["messages"] == [{"role": "user", "content": "Why?"}]


@pytest.mark.parametrize("nul", [False, True], ids=["plain", "with-nul"])
def test_huge_answer_goes_by_copy_and_reads_back_identical(store: ContextStore, nul: bool) -> None:
    # Over the COPY threshold (1 MiB), with every character COPY's text format escapes.
    piece = "line\\with\tescapes\r\näöü ✓ 日本語 🎉 " + ("\x00" if nul else "")
    text = piece * (3 * 1024 * 1024 // len(piece))
    task = _task()
    input_id, _ = store.save_input(task, TaskInputs(query="q"), _asked("q"), **MODEL)
    out = store.save_output(task, _result(text), input_id)
    assert out.response_length == len(text)
    row = store.get(out.id)
    assert row is not None and row.content_text == text and row.content_data["content"] == text
    assert ("text_encoding" in row.content_data) is False  # the read API hides the storage form
