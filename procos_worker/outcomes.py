"""One function: what the worker tells Camunda about a task that raised a ``TaskError``."""

from __future__ import annotations

from procos_worker.errors import InputError, LockLost, PermanentError, TaskError, TransientError
from procos_worker.flags import clip_error_message
from procos_worker.models import Abandon, BpmnError, Failure, Outcome, Task
from procos_worker.settings import Settings

__all__ = ["outcome_for", "retry_timeout_ms"]


def outcome_for(error: TaskError, task: Task, settings: Settings) -> Outcome:
    """Map an error to its one Camunda outcome (see the tree in ``errors``)."""
    if isinstance(error, LockLost):
        return Abandon(reason=error.message)
    if isinstance(error, InputError):
        return BpmnError(code=settings.task.input_error_code, message=clip_error_message(error.message))
    if isinstance(error, PermanentError):
        return Failure(message=clip_error_message(error.message), details=error.details, retries=0,
                       retry_timeout_ms=0)
    if isinstance(error, TransientError):
        # A task fetched for the first time has retries null: it starts with WORKER_RETRIES.
        left = settings.worker.retries if task.retries is None else task.retries
        remaining = max(0, left - 1)
        attempt = max(0, settings.worker.retries - left)
        return Failure(message=clip_error_message(error.message), details=error.details, retries=remaining,
                       retry_timeout_ms=retry_timeout_ms(attempt, settings))
    return Failure(message=clip_error_message(error.message), details=error.details, retries=0, retry_timeout_ms=0)


def retry_timeout_ms(attempt: int, settings: Settings) -> int:
    """Exponential: WORKER_RETRY_TIMEOUT_MS doubled per earlier failure, capped."""
    worker = settings.worker
    return int(min(worker.retry_timeout_max_ms, worker.retry_timeout_ms * 2**attempt))
