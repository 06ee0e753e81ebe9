"""The error tree of procos-worker. Each class maps to exactly one thing the worker does next.

::

    ProcosError
    ├── TaskError                  raised while handling one task; ``outcomes.outcome_for`` maps it
    │   ├── BusinessError          -> BPMN error: with the class's ``code``; the process model handles it
    │   │   ├── InputError         inputs missing or unusable (code TASK_INPUT_ERROR_CODE, by default
    │   │   │                      AI_INPUT_INVALID), nothing stored
    │   │   ├── PromptTooLong      the prompt does not fit the model's context (AI_PROMPT_TOO_LONG)
    │   │   └── OutputInvalid      a structured answer still breaks procos.outputSchema after the repair
    │   │                          attempts (AI_OUTPUT_INVALID); the message names the stored answers
    │   ├── TransientError         -> failure: retries - 1, exponential retryTimeout
    │   │   ├── LlmBusy            Ollama 503/5xx/408/429 or a timeout, after the in-process tries
    │   │   └── StoreRefused       PostgreSQL is reachable but can't do it now (statement or lock
    │   │                          timeout, too many connections, disk full, read-only), after
    │   │                          DATABASE_ATTEMPTS in-process tries
    │   └── PermanentError         -> incident: a failure with retries 0; the message says what to
    │       │                         fix, errorDetails has the full story
    │       ├── ModelNotFound      Ollama answers 404 for the model
    │       ├── LlmRequestInvalid  Ollama answers 400 (invalid options, ...)
    │       ├── VariableTooLong    a variable to send would exceed Camunda's 4000-char column
    │       ├── TaskConfigError    a procos.* extension property (or topic default) has a bad value:
    │       │                      the message names the activity and the property
    │       └── ModelRefused       procos_ai_models disables the model (or it is not registered
    │                              while REGISTRY_ALLOW_UNREGISTERED=false)
    ├── RunCancelled               -> abandon: the run was released (shutdown) or lost (the lock)
    │                              while it waited or worked; it stops and reports nothing (the
    │                              engine no longer expects it)
    ├── ServiceUnavailable         -> wait: its ``gate`` waits with backoff while the task keeps its
    │   │                          lock, and the poll loop fetches nothing new; it leaves the handler
    │   │                          only when the run was released or lost meanwhile, and then
    │   │                          nothing is reported (the engine no longer expects it)
    │   ├── LlmUnavailable         Ollama refuses connections or accepts none within the connect
    │   │   │                      timeout (with several endpoints: every endpoint that could serve)
    │   │   └── LlmAuthFailed      Ollama (an authenticating proxy in front) refuses the credentials
    │   └── StoreUnavailable       PostgreSQL can't be reached
    ├── PurgeStopped               -> stop: retention gave up before the end (a row lock held too long,
    │                              an engine without history): what was deleted stays deleted; the
    │                              purge command exits 1, the scheduled purge logs it and runs again
    │                              at its next time
    └── EngineError                raised only by the engine client (``engine.client``)
        ├── EngineUnavailable      -> retry: the poll loop backs off; a report is tried again until
        │                          it lands; an extension next tick (refused or timed-out
        │                          connection, 502/503/504, 408/429, a 5xx without an engine
        │                          exception in its body)
        ├── EngineRefused          -> retry, then incident: a 500 with an engine exception (the call
        │                          reached the engine and its transaction failed: a listener that
        │                          throws, a persistence error); a report is tried
        │                          WORKER_REPORT_ATTEMPTS times, then the task gets an incident
        │                          naming the stored row
        ├── EngineRejected         -> abandon: Camunda refused the call (4xx); a refused report is
        │                          dropped and logged, a refused poll backs off; a refused
        │                          extendLock (401/403 too) is tried again next tick
        ├── EngineAuthFailed       -> abandon: the login was refused (the token endpoint refused the
        │                          client, or a 401 even with a fresh token): like EngineRejected
        ├── LockExpired            -> relock: the lock ran out or was released and nobody else holds
        │                          the task: it is locked again and the run goes on (a stored
        │                          answer is never thrown away for it)
        └── LockLost               -> abandon: 404, or the lock is another worker's; the run is
                                   marked lost (its LLM call stops), nothing more is sent about it

The word after ``->`` is the outcome, inherited by the classes below; the README's "Outcomes and
errors" table names every class with the same word (``tests/unit/test_errors.py`` checks both).
Dependencies' exceptions are converted into these in the client modules only
(``engine.client``, ``ai.llm``, ``ai.template``, ``store.context``), with ``raise ... from``. Any
other exception out of the handler is a bug: ``outcomes.internal_error`` makes it an incident with
its traceback.
"""

from __future__ import annotations

__all__ = [
    "BusinessError",
    "EngineAuthFailed",
    "EngineError",
    "EngineRefused",
    "EngineRejected",
    "EngineUnavailable",
    "InputError",
    "LlmAuthFailed",
    "LlmBusy",
    "LlmRequestInvalid",
    "LlmUnavailable",
    "LockExpired",
    "LockLost",
    "ModelNotFound",
    "ModelRefused",
    "OutputInvalid",
    "PermanentError",
    "ProcosError",
    "PromptTooLong",
    "PurgeStopped",
    "RunCancelled",
    "ServiceUnavailable",
    "StoreRefused",
    "StoreUnavailable",
    "TaskConfigError",
    "TaskError",
    "TransientError",
    "VariableTooLong",
]


class ProcosError(Exception):
    """Base of every error procos-worker raises on purpose. ``details`` is the full story."""

    def __init__(self, message: str, *, details: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details if details is not None else message


class TaskError(ProcosError):
    """An error about one task, turned into its Camunda outcome by ``outcomes.outcome_for``."""


class BusinessError(TaskError):
    """The process model must handle it: a BPMN error with ``code`` (catch it with a boundary event)."""

    code = "AI_ERROR"


class InputError(BusinessError):
    """The task's variables are missing or unusable (the code is TASK_INPUT_ERROR_CODE)."""

    code = "AI_INPUT_INVALID"


class PromptTooLong(BusinessError):
    """The prompt does not fit the model's context window, and it may not be cut."""

    code = "AI_PROMPT_TOO_LONG"


class OutputInvalid(BusinessError):
    """The model's structured answer still does not match the task's ``procos.outputSchema`` after
    TASK_OUTPUT_REPAIR_ATTEMPTS repairs; every answer is stored and the message names their rows."""

    code = "AI_OUTPUT_INVALID"


class TransientError(TaskError):
    """Worth trying again later: Camunda failure with retries decremented."""


class LlmBusy(TransientError):
    """Ollama answered 503/5xx or timed out."""


class StoreRefused(TransientError):
    """PostgreSQL answered but refused for now (by SQLSTATE: 57014, 55P03, 53xxx, 25006, 40xxx, 58xxx)."""


class PermanentError(TaskError):
    """Retrying won't help until someone changes something: an incident."""


class ModelNotFound(PermanentError):
    """The model is not on the Ollama server."""


class LlmRequestInvalid(PermanentError):
    """Ollama rejected the request itself (for example invalid options)."""


class VariableTooLong(PermanentError):
    """A variable the worker was about to send would not fit Camunda's varchar(4000) columns."""


class TaskConfigError(PermanentError):
    """A modelling mistake: a ``procos.*`` property of the task (or a topic default) is unknown or has a
    bad value. Never replaced by a silent default."""


class ModelRefused(PermanentError):
    """The model registry (procos_ai_models) does not let the task use its model."""


class RunCancelled(ProcosError):
    """The run was given up (released or lost) while it waited or worked: stop, report nothing."""


class ServiceUnavailable(ProcosError):
    """A dependency can't be reached (the ``gate`` that waits for it names it in logs and health)."""


class LlmUnavailable(ServiceUnavailable):
    """Ollama refuses connections, or none is accepted within the connect timeout."""


class LlmAuthFailed(LlmUnavailable):
    """Ollama, or the authenticating proxy in front of it, answers 401/403: every task would fail alike,
    so the worker waits (fetching nothing) until the credentials are fixed."""


class StoreUnavailable(ServiceUnavailable):
    """PostgreSQL can't be reached."""


class PurgeStopped(ProcosError):
    """A purge stopped early and safely (each batch is its own transaction)."""


class EngineError(ProcosError):
    """Something the Camunda REST API answered (or failed to answer)."""


class EngineUnavailable(EngineError):
    """The engine can't be reached (or a proxy in front of it says it is down or busy)."""


class EngineRefused(EngineError):
    """The engine ran the call and failed with an exception of its own (HTTP 500 with a Camunda error body)."""


class EngineRejected(EngineError):
    """Camunda answered a call with a 4xx status that is not about the lock."""

    def __init__(self, status: int, error_type: str, message: str) -> None:
        super().__init__(f"Camunda answered {status} {error_type}: {message}")


class EngineAuthFailed(EngineError):
    """The engine's login was refused: the token endpoint refused the client credentials."""


class LockExpired(EngineError):
    """The task is not locked by us any more, but by nobody else either (expired, or unlocked)."""


class LockLost(EngineError):
    """The task's lock is gone (expired and taken, or the task was deleted): abandon it."""
