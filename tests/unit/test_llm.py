"""The Ollama call against the fake Ollama (real wire protocol, answers on demand) and a closed port."""

from __future__ import annotations

import pytest

from procos_testkit.fake_ollama import FakeOllama
from procos_worker.ai.llm import LlmClient, build_messages
from procos_worker.errors import LlmBusy, LlmUnavailable, ModelNotFound
from procos_worker.models import TaskInputs
from procos_worker.settings import OllamaSettings


def test_messages_put_system_prompt_first_and_context_before_the_question() -> None:
    messages = build_messages(TaskInputs(query="Q?", context={"k": "ä"}, system_prompt="S"))
    assert messages == [{"role": "system", "content": "S"},
                        {"role": "user", "content": 'Context:\n{"k": "ä"}\n\nQuestion:\nQ?'}]
    assert build_messages(TaskInputs(query="Q?")) == [{"role": "user", "content": "Q?"}]


def test_streamed_answer_is_joined_with_counts_and_timings() -> None:
    with FakeOllama() as fake:
        result = LlmClient(OllamaSettings(base_url=fake.base_url)).chat(
            [{"role": "user", "content": "hi [[fake:answer_bytes=300000]]"}])
    assert len(result.content) == 300_000 and result.done_reason == "stop"
    assert result.eval_count > 0 and result.total_duration_ns > 0 and result.model == "smollm2:135m"


def test_closed_port_is_unavailable_not_busy() -> None:
    client = LlmClient(OllamaSettings(base_url="http://127.0.0.1:9", attempts=1))
    with pytest.raises(LlmUnavailable) as info:
        client.chat([{"role": "user", "content": "hi"}])
    assert "can't be reached" in info.value.message


def test_unknown_model_is_model_not_found() -> None:
    with FakeOllama() as fake, pytest.raises(ModelNotFound) as info:
        LlmClient(OllamaSettings(base_url=fake.base_url, model="nope:1b")).chat([{"role": "user", "content": "x"}])
    assert "OLLAMA_MODEL" in info.value.message and "404" in info.value.details


def test_503_is_retried_in_process_then_busy() -> None:
    with FakeOllama() as fake:
        client = LlmClient(OllamaSettings(base_url=fake.base_url, attempts=2))
        with pytest.raises(LlmBusy):
            client.chat([{"role": "user", "content": "x [[fake:status=503]]"}])
        assert fake.chat_calls == 2
        ok = client.chat([{"role": "user", "content": "y [[fake:fail_first_n=1]]"}])
    assert ok.content


def test_total_time_is_bounded_by_the_timeout() -> None:
    with FakeOllama() as fake, pytest.raises(LlmBusy) as info:
        LlmClient(OllamaSettings(base_url=fake.base_url, timeout_s=0.5, attempts=1)).chat(
            [{"role": "user", "content": "x [[fake:answer_bytes=200000,chunk_chars=1000,chunk_delay_ms=50]]"}])
    assert "OLLAMA_TIMEOUT_S" in info.value.message
