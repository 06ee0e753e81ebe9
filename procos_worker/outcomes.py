"""Building what the worker tells Camunda about a task, within the engine's limits.

This module is the one owner of Camunda's limits: a String variable fits ``varchar(4000)``
(ACT_RU_VARIABLE.TEXT_ and the history tables; the engine does not check, a longer value fails
``complete`` with HTTP 500 and leaves the task locked), ``errorMessage`` is cut to 666 characters by
the engine (so it is clipped here, visibly), ``errorDetails`` has no limit. Every outcome is built
here; the engine client sends what it is given.

Neither ``errorMessage`` nor ``errorDetails`` carries the task's content (prompt, inputs, answer): Camunda
shows them to every Cockpit user and keeps them in its history. Handler errors are worded without it and
name the stored row instead; an internal error's traceback has exception messages that quote the task's
variables replaced (``internal_error``).
"""

from __future__ import annotations

import json
import traceback
from collections.abc import Mapping, Sequence
from typing import Any
from uuid import UUID

from procos_worker.errors import (
    BusinessError,
    InputError,
    PermanentError,
    TaskError,
    TransientError,
    VariableTooLong,
)
from procos_worker.models import BpmnError, Complete, Failure, Outcome, Task, TypedValue
from procos_worker.settings import Settings

__all__ = [
    "MAX_ERROR_MESSAGE_CHARS",
    "MAX_VARIABLE_CHARS",
    "bpmn_error",
    "complete",
    "failure",
    "internal_error",
    "outcome_for",
    "report_refused",
    "retry_timeout_ms",
    "uncaught_bpmn_error",
]

MAX_VARIABLE_CHARS = 4000
MAX_ERROR_MESSAGE_CHARS = 666


def complete(variables: Mapping[str, Any], context_id: UUID, *, local: bool = False) -> Complete:
    """Complete with ``variables`` (in the task's own scope if ``local``); ``VariableTooLong`` (an
    incident) if one would not fit."""
    _check_lengths(variables)
    if local:
        return Complete(variables={}, context_id=context_id, local_variables=dict(variables))
    return Complete(variables=dict(variables), context_id=context_id)


def bpmn_error(code: str, message: str, variables: Mapping[str, Any] | None = None) -> BpmnError:
    _check_lengths(variables or {})
    return BpmnError(code=code, message=_clip(message), variables=dict(variables or {}))


def failure(message: str, details: str, *, retries: int, retry_timeout_ms: int = 0) -> Failure:
    """``retries == 0`` makes an incident; the full story goes to ``details`` (no limit)."""
    return Failure(message=_clip(message), details=details, retries=retries, retry_timeout_ms=retry_timeout_ms)


def outcome_for(error: TaskError, task: Task, settings: Settings) -> Outcome:
    """Map a handler's error to its one Camunda outcome (see the tree in ``errors``)."""
    if isinstance(error, InputError):
        return bpmn_error(settings.task.input_error_code, error.message)
    if isinstance(error, BusinessError):
        return bpmn_error(error.code, error.message)
    if isinstance(error, TransientError):
        # A task fetched for the first time has retries null: it starts with WORKER_RETRIES.
        left = settings.worker.retries if task.retries is None else task.retries
        attempt = max(0, settings.worker.retries - left)
        return failure(error.message, error.details, retries=max(0, left - 1),
                       retry_timeout_ms=retry_timeout_ms(attempt, settings))
    if isinstance(error, PermanentError):
        # An incident names the BPMN step it stopped (a bad property already says "activity '...', property").
        where = f"activity '{task.activity_id}'"
        named = task.activity_id is None or error.message.startswith(where)
        message = error.message if named else f"{where}: {error.message}"
        return failure(message, error.details, retries=0)
    raise TypeError(f"{type(error).__name__} is not one of the handler's outcomes")


def report_refused(outcome: Outcome, refusal: str, attempts: int) -> Failure | None:
    """The incident for a completion or BPMN error the engine refused ``attempts`` times (HTTP 500 with an
    engine exception); None for a refused failure (there is nothing left to report it with)."""
    fix = "fix the cause, then set the task's retries"
    if isinstance(outcome, Complete):
        message = (f"The answer is stored (ai_context_id {outcome.context_id}) but Camunda refused complete "
                   f"{attempts} times: {refusal}. {fix}: the stored answer is reused, the model is not asked again")
    elif isinstance(outcome, BpmnError):
        message = (f"Camunda refused the BPMN error {outcome.code} {attempts} times: {refusal}. {fix} "
                   f"(the error was: {outcome.message})")
    else:
        return None
    return failure(message, message, retries=0)


def uncaught_bpmn_error(error: BpmnError, task: Task) -> Failure:
    """An incident instead of a BPMN error nothing in the model catches (Camunda would end the instance
    silently: completed, no end event, no incident)."""
    where = f"activity '{task.activity_id}' of process '{task.process_definition_key or task.process_definition_id}'"
    message = (f"BPMN error {error.code} is not caught at {where}: no error boundary event on it or an enclosing "
               f"subprocess, no error event subprocess; Camunda would end the instance silently. "
               f"Reason: {error.message}")
    details = (f"{message}\nCatch {error.code} in the model (or a catch-all error event), then set the task's "
               "retries to run it again.")
    return failure(message, details, retries=0)


def internal_error(exc: BaseException, task: Task | None = None) -> Failure:
    """A bug in the worker: an incident carrying the traceback, never a task left locked. An exception
    message that quotes one of ``task``'s variables is withheld (see the module docstring)."""
    contents = _task_texts(task) if task is not None else []
    details = "".join(_traceback_lines(exc, contents, set()))
    return failure(f"procos-worker internal error: {type(exc).__name__}: {_scrub(str(exc), contents)}", details,
                   retries=0)


# An exception message sharing this many consecutive characters with a task variable quotes it.
_QUOTE_CHARS = 16
# Longer messages are cut first (their tail would only repeat what the type and head say).
_MESSAGE_CHARS = 2000


def _task_texts(task: Task) -> list[str]:
    return [v.value for v in task.variables.values() if isinstance(v.value, str) and v.value.strip()]


def _scrub(message: str, contents: Sequence[str]) -> str:
    message = message[:_MESSAGE_CHARS]
    for content in contents:
        if len(content) < _QUOTE_CHARS:
            if len(content) >= 4 and content in message:
                return f"(message withheld: it quotes a variable of the task; {len(message)} characters)"
            continue
        if any(message[i:i + _QUOTE_CHARS] in content for i in range(max(0, len(message) - _QUOTE_CHARS + 1))):
            return f"(message withheld: it quotes a variable of the task; {len(message)} characters)"
    return message


def _traceback_lines(exc: BaseException, contents: Sequence[str], seen: set[int]) -> list[str]:
    """``traceback.format_exception`` with each exception's message passed through ``_scrub``."""
    seen.add(id(exc))
    lines: list[str] = []
    cause = exc.__cause__
    context = None if exc.__suppress_context__ else exc.__context__
    if cause is not None and id(cause) not in seen:
        lines += _traceback_lines(cause, contents, seen)
        lines.append("\nThe above exception was the direct cause of the following exception:\n\n")
    elif context is not None and id(context) not in seen:
        lines += _traceback_lines(context, contents, seen)
        lines.append("\nDuring handling of the above exception, another exception occurred:\n\n")
    if exc.__traceback__ is not None:
        lines.append("Traceback (most recent call last):\n")
        lines += traceback.format_tb(exc.__traceback__)
    lines.append(f"{type(exc).__module__}.{type(exc).__qualname__}: {_scrub(str(exc), contents)}\n")
    return lines


def retry_timeout_ms(attempt: int, settings: Settings) -> int:
    """Exponential: WORKER_RETRY_TIMEOUT_MS doubled per earlier failure, capped."""
    worker = settings.worker
    return int(min(worker.retry_timeout_max_ms, worker.retry_timeout_ms * 2**attempt))


def _check_lengths(variables: Mapping[str, Any]) -> None:
    for name, variable in variables.items():
        source, value = "", variable
        if isinstance(variable, TypedValue):
            # A Json value is its JSON text already; every other type is held as its text form.
            source, value = (f" ({variable.source})" if variable.source else ""), variable.value
        size = len(value) if isinstance(value, str) else len(json.dumps(value))
        if size > MAX_VARIABLE_CHARS:
            raise VariableTooLong(
                f"variable '{name}'{source} would be {size} characters; Camunda stores at most {MAX_VARIABLE_CHARS}"
            )


def _clip(message: str) -> str:
    """Fit ``message`` into Camunda's errorMessage, marking a cut with an ellipsis."""
    if len(message) <= MAX_ERROR_MESSAGE_CHARS:
        return message
    return message[: MAX_ERROR_MESSAGE_CHARS - 1] + "\u2026"
