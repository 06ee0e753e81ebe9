from __future__ import annotations

import uuid

import pytest

from procos_worker.errors import (
    InputError,
    LlmBusy,
    ModelNotFound,
    PermanentError,
    VariableTooLong,
)
from procos_worker.flags import build_flags
from procos_worker.models import BpmnError, Complete, Failure, StoredOutput, Task, Variable
from procos_worker.outcomes import (
    MAX_ERROR_MESSAGE_CHARS,
    bpmn_error,
    complete,
    failure,
    internal_error,
    outcome_for,
    retry_timeout_ms,
)
from procos_worker.settings import Settings, WorkerSettings


def _output(model: str = "smollm2:135m") -> StoredOutput:
    return StoredOutput(id=uuid.uuid4(), response_length=123_456_789, model=model, provider="ollama",
                        prompt_tokens=10, completion_tokens=32, done_reason="length")


def test_flags_point_at_the_stored_row_and_carry_no_content() -> None:
    out = _output()
    flags = build_flags(out)
    assert flags == {
        "ai_context_id": str(out.id), "ai_response_stored": True, "ai_response_length": 123_456_789,
        "ai_model": "smollm2:135m", "ai_provider": "ollama", "ai_prompt_tokens": 10,
        "ai_completion_tokens": 32, "ai_total_tokens": 42, "ai_done_reason": "length",
    }


def test_the_result_prefix_names_every_flag_and_local_scope_completes_locally() -> None:
    out = _output()
    flags = build_flags(out, "summary")
    assert flags == {name.replace("ai_", "summary_", 1): value for name, value in build_flags(out).items()}
    assert complete(flags, out.id) == Complete(variables=flags, context_id=out.id)
    assert complete(flags, out.id, local=True) == Complete(variables={}, context_id=out.id, local_variables=flags)
    with pytest.raises(VariableTooLong):
        complete({"summary_model": "m" * 4001}, out.id, local=True)


def test_a_flag_over_4000_characters_is_refused_before_sending() -> None:
    out = _output(model="m" * 4001)
    with pytest.raises(VariableTooLong) as info:
        complete(build_flags(out), out.id)
    assert "ai_model" in info.value.message and "4000" in info.value.message
    assert complete({"ok": "x" * 4000}, out.id) == Complete(variables={"ok": "x" * 4000}, context_id=out.id)
    with pytest.raises(VariableTooLong):
        complete({"nested": {"big": "y" * 4000}}, out.id)
    with pytest.raises(VariableTooLong):
        bpmn_error("CODE", "message", {"big": "z" * 4001})


def test_error_messages_are_clipped_to_camundas_666() -> None:
    assert failure("short", "d", retries=0).message == "short"
    clipped = failure("e" * 1000, "d", retries=0).message
    assert len(clipped) == MAX_ERROR_MESSAGE_CHARS and clipped.endswith("\u2026")
    assert len(bpmn_error("CODE", "e" * 1000).message) == MAX_ERROR_MESSAGE_CHARS


def test_an_internal_error_is_an_incident_with_its_traceback() -> None:
    def broken() -> None:
        raise ZeroDivisionError("x" * 2000)

    try:
        broken()
    except ZeroDivisionError as exc:
        outcome = internal_error(exc)
    assert outcome.retries == 0 and len(outcome.message) == MAX_ERROR_MESSAGE_CHARS
    assert outcome.message.startswith("procos-worker internal error: ZeroDivisionError")
    assert "Traceback" in outcome.details and "in broken" in outcome.details


def test_an_internal_error_quoting_the_task_is_withheld_from_camunda() -> None:
    """errorMessage and errorDetails go to Cockpit and Camunda's history: never the task's content."""
    secret = "the quarterly numbers nobody may see"
    task = Task(id="t", topic="ai-query", worker_id="w", process_instance_id="p",
                variables={"query": Variable(value=f"Summarise: {secret}")})

    def broken() -> None:
        try:
            raise KeyError(f"no template for {secret[:20]}")
        except KeyError as inner:
            raise ValueError("could not build the prompt") from inner

    try:
        broken()
    except ValueError as exc:
        outcome = internal_error(exc, task)
    assert secret[:20] not in outcome.details and secret[:20] not in outcome.message
    assert "message withheld" in outcome.details and "could not build the prompt" in outcome.details
    assert "KeyError" in outcome.details and "in broken" in outcome.details


def _task(retries: int | None) -> Task:
    return Task(id="t", topic="ai-query", worker_id="w", process_instance_id="p", retries=retries)


SETTINGS = Settings(worker=WorkerSettings(retries=3, retry_timeout_ms=1000, retry_timeout_max_ms=3000))


def test_input_error_is_a_bpmn_error_with_the_configured_code() -> None:
    outcome = outcome_for(InputError("variable 'query' is missing"), _task(None), SETTINGS)
    assert outcome == BpmnError(code="AI_INPUT_INVALID", message="variable 'query' is missing")


@pytest.mark.parametrize(
    ("retries", "expected_left", "expected_timeout_ms"),
    [(None, 2, 1000), (2, 1, 2000), (1, 0, 3000)],
)
def test_transient_errors_decrement_retries_with_exponential_timeout(
    retries: int | None, expected_left: int, expected_timeout_ms: int
) -> None:
    outcome = outcome_for(LlmBusy("503"), _task(retries), SETTINGS)
    assert isinstance(outcome, Failure)
    assert (outcome.retries, outcome.retry_timeout_ms) == (expected_left, expected_timeout_ms)


def test_permanent_errors_are_incidents_with_full_details() -> None:
    error = ModelNotFound("model 'nope' is not on the server: fix OLLAMA_MODEL", details="HTTP 404 ... " * 200)
    outcome = outcome_for(error, _task(None), SETTINGS)
    assert isinstance(outcome, Failure) and outcome.retries == 0
    assert "OLLAMA_MODEL" in outcome.message and outcome.details == error.details


def test_only_the_handlers_errors_have_an_outcome() -> None:
    from procos_worker.errors import TaskError

    with pytest.raises(TypeError):
        outcome_for(TaskError("neither input, transient nor permanent"), _task(None), SETTINGS)


def test_retry_timeout_caps() -> None:
    assert [retry_timeout_ms(n, SETTINGS) for n in range(4)] == [1000, 2000, 3000, 3000]


def test_a_prompt_too_long_is_the_bpmn_error_ai_prompt_too_long() -> None:
    from procos_worker.errors import PromptTooLong

    outcome = outcome_for(PromptTooLong("the prompt does not fit"), _task(None), SETTINGS)
    assert outcome == BpmnError(code="AI_PROMPT_TOO_LONG", message="the prompt does not fit")


@pytest.mark.parametrize(
    ("activity", "message", "expected"),
    [
        ("ask", "model m:1b is disabled", "activity 'ask': model m:1b is disabled"),
        ("ask", "activity 'ask', property procos.memory: bad", "activity 'ask', property procos.memory: bad"),
        (None, "model m:1b is disabled in procos_ai_models", "model m:1b is disabled in procos_ai_models"),
    ],
)
def test_an_incident_names_the_activity_it_stopped_once(activity: str | None, message: str, expected: str) -> None:
    task = Task(id="t", topic="ai-query", worker_id="w", process_instance_id="p", activity_id=activity)
    outcome = outcome_for(PermanentError(message, details="d"), task, Settings())
    assert isinstance(outcome, Failure) and outcome.retries == 0
    assert (outcome.message, outcome.details) == (expected, "d")
