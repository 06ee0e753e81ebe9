"""Building what the worker tells Camunda about a task, within the engine's limits.

This module is the one owner of Camunda's limits: a String variable fits ``varchar(4000)``
(ACT_RU_VARIABLE.TEXT_ and the history tables; the engine does not check, a longer value fails
``complete`` with HTTP 500 and leaves the task locked), ``errorMessage`` is cut to 666 characters by
the engine (so it is clipped here, visibly), ``errorDetails`` has no limit. Every outcome is built
here; the engine client sends what it is given.
"""

from __future__ import annotations

import json
import traceback
from collections.abc import Mapping
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
    "retry_timeout_ms",
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
        return failure(error.message, error.details, retries=0)
    raise TypeError(f"{type(error).__name__} is not one of the handler's outcomes")


def internal_error(exc: BaseException) -> Failure:
    """A bug in the worker: an incident carrying the traceback, never a task left locked."""
    details = "".join(traceback.format_exception(exc))
    return failure(f"procos-worker internal error: {type(exc).__name__}: {exc}", details, retries=0)


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
