from __future__ import annotations

import uuid

import pytest

from procos_worker.errors import (
    InputError,
    LlmBusy,
    LlmUnavailable,
    LockLost,
    ModelNotFound,
    StoreUnavailable,
    VariableTooLong,
)
from procos_worker.flags import MAX_ERROR_MESSAGE_CHARS, build_flags, check_variables, clip_error_message
from procos_worker.models import Abandon, BpmnError, Failure, StoredOutput, Task
from procos_worker.outcomes import outcome_for, retry_timeout_ms
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


def test_a_flag_over_4000_characters_is_refused_before_sending() -> None:
    with pytest.raises(VariableTooLong) as info:
        build_flags(_output(model="m" * 4001))
    assert "ai_model" in info.value.message and "4000" in info.value.message
    check_variables({"ok": "x" * 4000})
    with pytest.raises(VariableTooLong):
        check_variables({"nested": {"big": "y" * 4000}})


def test_error_messages_are_clipped_to_camundas_666() -> None:
    assert clip_error_message("short") == "short"
    clipped = clip_error_message("e" * 1000)
    assert len(clipped) == MAX_ERROR_MESSAGE_CHARS and clipped.endswith("\u2026")


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
    for error in (LlmBusy("503"), LlmUnavailable("down"), StoreUnavailable("down")):
        outcome = outcome_for(error, _task(retries), SETTINGS)
        assert isinstance(outcome, Failure)
        assert (outcome.retries, outcome.retry_timeout_ms) == (expected_left, expected_timeout_ms)


def test_permanent_errors_are_incidents_with_full_details() -> None:
    error = ModelNotFound("model 'nope' is not on the server: fix OLLAMA_MODEL", details="HTTP 404 ... " * 200)
    outcome = outcome_for(error, _task(None), SETTINGS)
    assert isinstance(outcome, Failure) and outcome.retries == 0
    assert "OLLAMA_MODEL" in outcome.message and outcome.details == error.details


def test_lock_lost_is_abandoned_without_any_call() -> None:
    assert outcome_for(LockLost("gone"), _task(None), SETTINGS) == Abandon(reason="gone")


def test_retry_timeout_caps() -> None:
    assert [retry_timeout_ms(n, SETTINGS) for n in range(4)] == [1000, 2000, 3000, 3000]
