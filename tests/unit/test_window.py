"""The context window: num_ctx as Ollama resolves it, the estimate, which turns fit (the newest, whole,
contiguous), how truncate cuts the context, and the refusal's message."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import UTC, datetime

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from procos_worker.ai.memory import MemoryScope
from procos_worker.ai.window import (
    Budget,
    ContextLimits,
    Estimator,
    Fit,
    Prompt,
    budget_for,
    cut_context,
    estimator_for,
    fit,
)
from procos_worker.errors import PromptTooLong
from procos_worker.models import ModelFacts, TaskInputs, Turn, TurnSize
from procos_worker.settings import WindowSettings

SETTINGS = WindowSettings()
FOUR = Estimator(4.0, "test")


def _size(question: int, answer: int, **figures: int | str) -> TurnSize:
    return TurnSize(id=uuid.uuid4(), input_id=uuid.uuid4(), question_chars=question, question_bytes=question,
                    answer_chars=answer, answer_bytes=answer, **figures)  # type: ignore[arg-type]


def _budget(num_ctx: int = 1000, reply: int = 100) -> Budget:
    return Budget(num_ctx, "options", None, reply, "num_predict")


def _turn(size: TurnSize) -> Turn:
    return Turn(id=size.id, input_id=size.input_id, question="q" * size.question_chars, answer="a" * size.answer_chars,
                process_instance_id="p", task_id=None, activity_id=None, memory_key=None, model=None,
                created_at=datetime.now(UTC))


# -- num_ctx and the answer's share -------------------------------------------------------------------

@pytest.mark.parametrize(("options", "facts", "num_ctx", "source"), [
    ({"num_ctx": 2048}, ModelFacts(4096, 8192), 2048, "options"),
    ({}, ModelFacts(4096, 8192), 4096, "the model's Modelfile"),
    ({}, ModelFacts(None, 8192), 4096, "the server's default, WINDOW_DEFAULT_NUM_CTX"),
    ({"num_ctx": 100_000}, ModelFacts(None, 8192), 8192, "options, capped at the 8,192 the model was trained for"),
    ({"num_ctx": True}, ModelFacts(3000, None), 3000, "the model's Modelfile"),
])
def test_num_ctx_is_what_ollama_would_use(options: dict[str, object], facts: ModelFacts, num_ctx: int,
                                          source: str) -> None:
    budget = budget_for(options, facts, SETTINGS)
    assert (budget.num_ctx, budget.source) == (num_ctx, source)


def test_the_answer_keeps_num_predict_or_the_configured_reserve() -> None:
    facts = ModelFacts(4096, None)
    assert budget_for({"num_predict": 64}, facts, SETTINGS).prompt_tokens == 4096 - 64
    unset = budget_for({"num_predict": -1}, facts, WindowSettings(reply_tokens=300))
    assert (unset.reply_tokens, unset.reply_source, unset.prompt_tokens) == (300, "WINDOW_REPLY_TOKENS", 3796)
    assert budget_for({"num_predict": 10_000}, facts, SETTINGS).prompt_tokens == 0


def test_model_facts_are_cached_per_model() -> None:
    calls: list[str] = []
    now = [0.0]

    def show(model: str) -> ModelFacts:
        calls.append(model)
        return ModelFacts(1024, None)

    limits = ContextLimits(show, SETTINGS, ttl_s=60, clock=lambda: now[0])
    for _ in range(3):
        assert limits.budget("m", {}).num_ctx == 1024
    limits.budget("other", {})
    now[0] = 61
    limits.budget("m", {})
    assert calls == ["m", "other", "m"]


# -- the estimate ---------------------------------------------------------------------------------------

def test_the_certain_estimate_counts_every_utf8_byte() -> None:
    assert FOUR.text("abcdefgh") == 2 and FOUR.as_certain().text("abcdefgh") == 8
    assert FOUR.as_certain().text("日本") == 6 and FOUR.as_certain().sized(2, 6) == 6
    assert FOUR.messages([{"role": "user", "content": "abcd"}]) == 1 + 6 + 32


def test_the_head_that_fits_is_measured_in_bytes_when_certain() -> None:
    text = "é" * 100  # two bytes each
    assert FOUR.chars_within(text, 10) == 40
    assert FOUR.as_certain().chars_within(text, 10) == 5
    assert FOUR.chars_within(text, 0) == 0 and FOUR.chars_within("ab", 10) == 2


def test_characters_per_token_come_from_the_conversation_then_the_registry_then_the_setting() -> None:
    figures = [_size(10, 10, model="m", prompt_chars=4000, prompt_tokens=1000 + 5 * 3 + 3, prompt_messages=3)]
    assert estimator_for(figures, "m", 3.0, 2.0).chars_per_token == pytest.approx(4.0)
    assert estimator_for(figures, "other", 3.0, 2.0).chars_per_token == 3.0  # another model's requests
    few = [_size(10, 10, model="m", prompt_chars=400, prompt_tokens=100, prompt_messages=1)]
    assert estimator_for(few, "m", None, 2.0).source == "WINDOW_CHARS_PER_TOKEN"
    assert estimator_for([], "m", 39572.0, 2.0).chars_per_token == 2.0  # not a plausible figure


# -- fitting --------------------------------------------------------------------------------------------

def test_the_newest_turns_are_kept_whole_and_the_oldest_dropped_first() -> None:
    inputs = TaskInputs(query="q" * 40)  # 10 tokens + 6 + 32 = 48
    newest_first = [_size(80, 120) for _ in range(10)]  # 20 + 30 + 12 = 62 tokens each
    fitted = fit(inputs, newest_first, _budget(400, 100), FOUR, on_overflow="error", model="m")
    # 300 - 48 = 252 tokens for memory: four turns (248), the fifth would cut into the answer's share
    assert [t.id for t in fitted.turns] == [t.id for t in reversed(newest_first[:4])]
    assert fitted.estimated_tokens == 48 + 4 * 62 and fitted.found == 10 and fitted.context_chars is None


def test_a_turn_too_big_stops_the_conversation_there() -> None:
    sizes = [_size(10, 10), _size(10, 5000), _size(10, 10)]
    fitted = fit(TaskInputs(query="hi"), sizes, _budget(1000, 100), FOUR, on_overflow="error", model="m")
    assert [t.id for t in fitted.turns] == [sizes[0].id], "older turns are not sent past a gap"


def test_an_own_prompt_over_the_budget_gets_no_memory_and_is_sent_for_ollama_to_judge() -> None:
    fitted = fit(TaskInputs(query="q" * 4000), [_size(1, 1)], _budget(1000, 100), FOUR, on_overflow="error",
                 model="m")
    assert fitted.turns == () and fitted.context_chars is None and fitted.estimated_tokens > 900


def test_an_obviously_too_long_prompt_is_refused_unsent_with_its_sizes() -> None:
    with pytest.raises(PromptTooLong) as info:
        fit(TaskInputs(query="q" * 16_001, system_prompt="s" * 10), [], _budget(1000, 100), FOUR,
            on_overflow="error", model="tiny:1b")
    message = info.value.message
    assert message.startswith("the prompt does not fit the context window of model 'tiny:1b': 16,011 characters "
                              "(system prompt 10, user message 16,001)")
    assert "num_ctx 1,000 (options), 100 of it kept for the answer (num_predict)" in message
    assert "not sent" in message and "procos.onOverflow=truncate" in message and info.value.code == "AI_PROMPT_TOO_LONG"


def test_truncate_cuts_the_end_of_the_context_only_and_drops_memory_first() -> None:
    inputs = TaskInputs(query="What?", context="c" * 10_000, system_prompt="Be brief.")
    budget = _budget(1000, 100)
    fitted = fit(inputs, [_size(10, 10)], budget, FOUR, on_overflow="truncate", model="m")
    assert fitted.turns == () and fitted.context_total == 10_000
    assert fitted.context_chars is not None and 3000 < fitted.context_chars < 3600
    assert fitted.estimated_tokens <= budget.prompt_tokens
    prompt = Prompt.assemble(inputs, fitted, {}, model="m")
    system, user = prompt.messages
    assert system == {"role": "system", "content": "Be brief."}
    assert user["content"] == f"Context:\n{cut_context('c' * 10_000, fitted.context_chars)}\n\nQuestion:\nWhat?"
    assert prompt.truncated and prompt.record()["truncation"] == {"context_chars": 10_000,
                                                                  "context_chars_sent": fitted.context_chars}
    # A context that fits is not cut, and memory fills the rest.
    small = fit(TaskInputs(query="What?", context="short"), [_size(10, 10)], budget, FOUR, on_overflow="truncate",
                model="m")
    assert small.context_chars is None and len(small.turns) == 1


def test_truncate_refuses_when_the_query_alone_is_obviously_too_long() -> None:
    with pytest.raises(PromptTooLong, match="cuts only the context variable"):
        fit(TaskInputs(query="q" * 20_000, context="c"), [], _budget(1000, 100), FOUR, on_overflow="truncate",
            model="m")


def test_the_prompt_records_memory_oldest_first_and_the_window() -> None:
    sizes = [_size(8, 8), _size(4, 4)]  # newest first
    inputs = TaskInputs(query="now?", system_prompt="sys")
    fitted = fit(inputs, sizes, _budget(), FOUR, on_overflow="error", model="m")
    texts = {size.id: _turn(size) for size in sizes}
    prompt = Prompt.assemble(inputs, fitted, texts, model="m", memory=MemoryScope("process"), sizes=tuple(sizes),
                             budget=_budget(), estimator=FOUR)
    assert [m["role"] for m in prompt.messages] == ["system", "user", "assistant", "user", "assistant", "user"]
    assert prompt.messages[1]["content"] == "q" * 4 and prompt.messages[-1]["content"] == "now?"
    record = prompt.record()
    assert record["memory_context_ids"] == [str(sizes[1].id), str(sizes[0].id)]
    assert record["memory"] == {"scope": "process", "key": None, "turns_found": 2, "turns_sent": 2}
    assert record["window"]["num_ctx"] == 1000 and record["window"]["attempt"] == 1
    assert "truncation" not in record and not prompt.truncated


_turn_sizes = st.lists(st.builds(lambda q, a, extra: TurnSize(
    id=uuid.uuid4(), input_id=uuid.uuid4(), question_chars=q, question_bytes=q + extra, answer_chars=a,
    answer_bytes=a + extra), st.integers(0, 3000), st.integers(0, 3000), st.integers(0, 500)), max_size=30)


@given(sizes=_turn_sizes, query=st.integers(1, 6000), num_ctx=st.integers(64, 8192), cpt=st.floats(0.5, 8.0))
def test_a_fit_is_the_newest_whole_turns_within_the_budget_and_the_certain_fit_keeps_no_more(
    sizes: Sequence[TurnSize], query: int, num_ctx: int, cpt: float,
) -> None:
    assume(query <= num_ctx * 16)  # beyond that: refused unsent (tested above)
    budget = _budget(num_ctx, num_ctx // 8)
    inputs = TaskInputs(query="q" * query)
    likely = Estimator(cpt, "test")
    fitted: Fit = fit(inputs, sizes, budget, likely, on_overflow="error", model="m")
    chosen = list(reversed(fitted.turns))
    assert chosen == list(sizes[: len(chosen)]), "a contiguous run of the newest"
    if chosen:
        assert fitted.estimated_tokens <= budget.prompt_tokens
    certain = fit(inputs, sizes, budget, likely.as_certain(), on_overflow="error", model="m")
    assert len(certain.turns) <= len(fitted.turns)
    assert [t.id for t in certain.turns] == [t.id for t in fitted.turns[len(fitted.turns) - len(certain.turns):]]
