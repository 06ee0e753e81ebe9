"""The error tree of procos-worker. Each class maps to exactly one thing the worker does next.

::

    ProcosError
    ├── TaskError                  an error about one task; `retry.outcome_for` turns it into an outcome
    │   ├── InputError             -> BPMN error (code TASK_INPUT_ERROR_CODE), nothing stored
    │   ├── TransientError         -> Camunda failure, retries - 1, exponential retryTimeout
    │   │   ├── LlmBusy            Ollama 503/5xx or a timeout, after the in-process tries
    │   │   ├── ServiceUnavailable a dependency can't be reached at all: the worker waits for it with
    │   │   │   │                  backoff while holding the lock, and fetches nothing new meanwhile;
    │   │   │   │                  it becomes a failure only if the task must be given up
    │   │   │   ├── LlmUnavailable     Ollama refuses connections
    │   │   │   ├── StoreUnavailable   PostgreSQL can't be reached
    │   │   │   └── EngineUnavailable  the Camunda REST API can't be reached (or answers 5xx)
    │   ├── PermanentError         -> Camunda failure with retries 0 = an incident; the message says
    │   │   │                         what to fix, errorDetails has the full story
    │   │   ├── ModelNotFound      Ollama answers 404 for the configured model
    │   │   ├── LlmRequestInvalid  Ollama answers 400 (invalid options, ...)
    │   │   └── VariableTooLong    a variable to send would exceed Camunda's 4000-char column
    │   └── LockLost               -> abandon: no call to Camunda at all (the engine already gave the
    │                                 task to someone else, or it no longer exists)
    └── EngineRejected             Camunda answered 4xx to a call (carries status, type and message)

Misuse that is nobody's runtime fault (bad settings) raises ``ConfigurationError``, apart from the tree.
Dependencies' exceptions are converted into these in the client modules only (camunda, llm, store).
"""

from __future__ import annotations

__all__ = [
    "ConfigurationError",
    "EngineRejected",
    "EngineUnavailable",
    "InputError",
    "LlmBusy",
    "LlmRequestInvalid",
    "LlmUnavailable",
    "LockLost",
    "ModelNotFound",
    "PermanentError",
    "ProcosError",
    "ServiceUnavailable",
    "StoreUnavailable",
    "TaskError",
    "TransientError",
    "VariableTooLong",
]


class ProcosError(Exception):
    """Base of every error procos-worker raises on purpose."""


class ConfigurationError(ProcosError):
    """The settings can't work (not a runtime fault of any service)."""


class TaskError(ProcosError):
    """An error about one task. ``details`` is the full story for Camunda's ``errorDetails``."""

    def __init__(self, message: str, *, details: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details if details is not None else message


class InputError(TaskError):
    """The task's variables are missing or unusable: the process model must handle it (BPMN error)."""


class TransientError(TaskError):
    """Worth trying again later: Camunda failure with retries decremented."""


class LlmBusy(TransientError):
    """Ollama answered 503/5xx or timed out."""


class ServiceUnavailable(TransientError):
    """A dependency can't be reached. ``service`` names it: camunda, ollama or postgresql."""

    service = "service"


class LlmUnavailable(ServiceUnavailable):
    service = "ollama"


class StoreUnavailable(ServiceUnavailable):
    service = "postgresql"


class EngineUnavailable(ServiceUnavailable):
    service = "camunda"


class PermanentError(TaskError):
    """Retrying won't help until someone changes something: an incident."""


class ModelNotFound(PermanentError):
    """The configured model is not on the Ollama server."""


class LlmRequestInvalid(PermanentError):
    """Ollama rejected the request itself (for example invalid options)."""


class VariableTooLong(PermanentError):
    """A variable the worker was about to send would not fit Camunda's varchar(4000) columns."""


class LockLost(TaskError):
    """The task's lock is gone (expired and taken, or the task was deleted): abandon it."""


class EngineRejected(ProcosError):
    """Camunda answered a call with a 4xx status."""

    def __init__(self, status: int, error_type: str, message: str) -> None:
        super().__init__(f"Camunda answered {status} {error_type}: {message}")
        self.status = status
        self.error_type = error_type
        self.message = message
