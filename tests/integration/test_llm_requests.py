"""What the worker's LLM client sends to the real Ollama: never a silently cut prompt, and a JSON
Schema ``format`` that constrains the answer."""

from __future__ import annotations

import json
import time

import pytest

from procos_worker.ai.llm import LlmClient
from procos_worker.errors import PromptTooLong
from procos_worker.settings import Settings

pytestmark = pytest.mark.integration


def test_a_prompt_longer_than_the_context_is_refused_at_once_not_cut(settings: Settings, ollama_up: str) -> None:
    llm = LlmClient(settings.ollama)
    prompt = " ".join(f"word{i}" for i in range(6_000))  # well over 512 tokens
    started = time.monotonic()
    with pytest.raises(PromptTooLong) as info:
        llm.chat([{"role": "user", "content": prompt}], options={"num_ctx": 512, "num_predict": 8})
    assert time.monotonic() - started < 30, "an overflow is answered at once, not after a long generation"
    assert info.value.code == "AI_PROMPT_TOO_LONG"
    assert "context window" in info.value.message and settings.ollama.model in info.value.message


def test_a_prompt_that_fits_is_answered(settings: Settings, ollama_up: str) -> None:
    result = LlmClient(settings.ollama).chat([{"role": "user", "content": "Say hello."}],
                                             options={"num_ctx": 512, "num_predict": 8, "temperature": 0})
    assert result.content and 0 < result.prompt_eval_count < 512


def test_format_constrains_the_answer_to_the_schema(settings: Settings, ollama_up: str) -> None:
    schema = {"type": "object", "properties": {"urgent": {"type": "boolean"}}, "required": ["urgent"]}
    result = LlmClient(settings.ollama).chat(
        [{"role": "user", "content": "Is a server fire urgent? Answer in JSON."}],
        options={"num_predict": 32, "temperature": 0, "seed": 1}, format=schema)
    answer = json.loads(result.content)
    assert isinstance(answer, dict) and isinstance(answer["urgent"], bool)
