"""The prompt of one task against doubles of the store and Ollama: which requests go out, and that a
refusal by Ollama leads to at most one more (fewer turns, the input row rewritten first) or to
AI_PROMPT_TOO_LONG with the sizes."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import pytest
import structlog

from procos_worker.ai.memory import MemoryScope
from procos_worker.ai.taskconfig import TaskConfig
from procos_worker.errors import PromptTooLong
from procos_worker.flags import build_flags
from procos_worker.gate import ServiceGate
from procos_worker.models import LlmResult, ModelFacts, StoredOutput, Task, TaskInputs, Turn, TurnSize
from procos_worker.prompting import Prompts
from procos_worker.settings import BackoffSettings, Settings

LOG = structlog.get_logger("test")
TASK = Task(id="t-now", topic="ai-query", worker_id="w", process_instance_id="pi", activity_id="ask")
RESULT = LlmResult(content="ok", model="m", done_reason="stop", prompt_eval_count=1, eval_count=1,
                   total_duration_ns=0, load_duration_ns=0, prompt_eval_duration_ns=0, eval_duration_ns=0, wall_s=0.0)


class _Store:
    """The store as the prompt uses it: turn sizes, their texts, the input row rewritten."""

    def __init__(self, sizes: list[TurnSize]) -> None:
        self.sizes = sizes
        self.fetched: list[list[uuid.UUID]] = []
        self.amended: list[list[dict[str, str]]] = []

    def recent_turns(self, task: Task, scope: str, value: str, limit: int) -> list[TurnSize]:
        assert (task, scope, value) == (TASK, "process", "pi")
        return self.sizes[:limit]

    def turn_texts(self, ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, Turn]:
        self.fetched.append(list(ids))
        return {size.id: Turn(id=size.id, input_id=size.input_id, question="q" * size.question_chars,
                              answer="a" * size.answer_chars, process_instance_id="pi", task_id=None,
                              activity_id=None, memory_key=None, model="m", created_at=datetime.now(UTC))
                for size in self.sizes if size.id in ids}

    def amend_input(self, input_id: uuid.UUID, task: Task, inputs: TaskInputs, messages: list[dict[str, str]],
                    **_: Any) -> None:
        self.amended.append(messages)


class _Llm:
    def __init__(self) -> None:
        self.shown = 0

    def show(self, model: str) -> ModelFacts:
        self.shown += 1
        return ModelFacts(None, 8192)


class _Registry:
    def chars_per_token(self, model: str) -> float | None:
        return 4.0


class _Chat:
    """Ollama as the budget sees it: refuses any request over ``limit_chars``."""

    def __init__(self, limit_chars: int) -> None:
        self.limit_chars = limit_chars
        self.sent: list[list[dict[str, str]]] = []

    def __call__(self, messages: list[dict[str, str]]) -> LlmResult:
        self.sent.append(messages)
        if sum(len(m["content"]) for m in messages) > self.limit_chars:
            raise PromptTooLong("the prompt does not fit the context window of model 'm'")
        return RESULT


def _prompts(sizes: list[TurnSize]) -> tuple[Prompts, _Store, _Store, _Llm]:
    gate = ServiceGate("x", BackoffSettings(), lambda: None)
    llm, store = _Llm(), _Store(sizes)
    prompts = Prompts(Settings(), store, llm, _Registry(), store_gate=gate, llm_gate=gate)  # type: ignore[arg-type]
    return prompts, store, store, llm


def _sizes(count: int, chars: int = 400) -> list[TurnSize]:
    return [TurnSize(id=uuid.uuid4(), input_id=uuid.uuid4(), question_chars=chars, question_bytes=chars,
                     answer_chars=chars, answer_bytes=chars) for _ in range(count)]


def _config(**fields: Any) -> TaskConfig:
    return TaskConfig(activity="ask", model="m", options={"num_ctx": 2048, "num_predict": 48}, **fields)


def _ask(prompts: Prompts, config: TaskConfig, inputs: TaskInputs, chat: _Chat) -> tuple[LlmResult, Any]:
    cancel = threading.Event()
    prompt = prompts.first(TASK, config, inputs, cancel, LOG)
    return prompts.ask(TASK, config, prompt, input_id=uuid.uuid4(), chat=chat, cancel=cancel, log=LOG)


def test_a_plain_task_costs_nothing_extra() -> None:
    prompts, turns, store, llm = _prompts([])
    chat = _Chat(10_000)
    result, prompt = _ask(prompts, _config(), TaskInputs(query="Hello?"), chat)
    assert result is RESULT and chat.sent == [[{"role": "user", "content": "Hello?"}]]
    assert llm.shown == 0 and turns.fetched == [] and store.amended == [] and prompt.record() == {}


def test_memory_sends_the_newest_turns_that_fit_and_reads_only_their_texts() -> None:
    sizes = _sizes(40)  # 40 x 212 tokens estimated: about 9 fit 2048 - 48
    prompts, turns, store, llm = _prompts(sizes)
    chat = _Chat(100_000)
    _, prompt = _ask(prompts, _config(memory=MemoryScope("process")), TaskInputs(query="Now?"), chat)
    assert 5 < len(prompt.turns) < 40
    assert [t.id for t in prompt.turns] == [s.id for s in reversed(sizes[: len(prompt.turns)])]
    assert turns.fetched == [[s.id for s in reversed(sizes[: len(prompt.turns)])]]
    assert len(chat.sent) == 1 and store.amended == [] and llm.shown == 1


def test_an_overflow_refused_by_ollama_is_fitted_once_more_with_the_certain_bound() -> None:
    sizes = _sizes(40)
    prompts, _, store, _ = _prompts(sizes)
    chat = _Chat(2_500)  # Ollama counts more tokens than the estimate: the first try is refused
    result, prompt = _ask(prompts, _config(memory=MemoryScope("process")), TaskInputs(query="Now?"), chat)
    assert result is RESULT and len(chat.sent) == 2
    assert len(chat.sent[1]) < len(chat.sent[0]) and chat.sent[1][-1] == {"role": "user", "content": "Now?"}
    assert store.amended == [chat.sent[1]], "the input row holds the second try before it is sent"
    assert prompt.attempt == 2 and prompt.record()["window"]["refused_by_ollama"] == 1
    assert prompt.record()["memory_context_ids"] == [str(t.id) for t in prompt.turns]


def test_a_second_refusal_is_ai_prompt_too_long_with_the_sizes() -> None:
    prompts, _, store, _ = _prompts(_sizes(40))
    chat = _Chat(10)
    with pytest.raises(PromptTooLong) as info:
        _ask(prompts, _config(memory=MemoryScope("process")), TaskInputs(query="Now?"), chat)
    assert len(chat.sent) == 2 and len(store.amended) == 1
    assert "Ollama refused it" in info.value.message and "num_ctx 2,048 (options)" in info.value.message


def test_a_plain_refusal_is_not_retried_and_says_what_the_context_is() -> None:
    prompts, _, store, llm = _prompts([])
    chat = _Chat(10)
    with pytest.raises(PromptTooLong) as info:
        _ask(prompts, _config(), TaskInputs(query="x" * 100, system_prompt="be brief"), chat)
    assert len(chat.sent) == 1 and store.amended == [] and llm.shown == 1
    message = info.value.message
    assert "108 characters (system prompt 8, user message 100)" in message
    assert "num_ctx 2,048 (options), 48 of it kept for the answer (num_predict)" in message
    assert "Ollama refused it (HTTP 400: the input length exceeds the context length)" in message


def test_truncate_is_retried_with_a_shorter_context_and_the_flag_holds() -> None:
    prompts, _, store, _ = _prompts([])
    chat = _Chat(5_000)
    inputs = TaskInputs(query="Who?", context="é" * 50_000)
    _, prompt = _ask(prompts, _config(on_overflow="truncate"), inputs, chat)
    assert len(chat.sent) == 2 and prompt.truncated and store.amended == [chat.sent[1]]
    first, second = (prompt_chars(m) for m in chat.sent)
    assert second < first
    assert prompt.record()["truncation"]["context_chars"] == 50_000


def prompt_chars(messages: Sequence[Mapping[str, str]]) -> int:
    return sum(len(m["content"]) for m in messages)


def test_prompt_truncated_is_written_only_by_tasks_that_may_truncate() -> None:
    output = StoredOutput(id=uuid.uuid4(), response_length=1, model="m", provider="ollama", prompt_tokens=1,
                          completion_tokens=1, done_reason="stop", prompt_truncated=True)
    assert "ai_prompt_truncated" not in build_flags(output)
    assert build_flags(output, "p", report_truncation=True)["p_prompt_truncated"] is True
    kept = StoredOutput(id=uuid.uuid4(), response_length=1, model="m", provider="ollama", prompt_tokens=1,
                        completion_tokens=1, done_reason="stop")
    assert build_flags(kept, report_truncation=True)["ai_prompt_truncated"] is False
