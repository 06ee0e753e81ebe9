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
from procos_worker.models import LlmResult, Task
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
