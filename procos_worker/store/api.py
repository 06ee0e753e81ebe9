"""What the task pipeline needs of the context store, as a ``Protocol`` (``ContextStore`` is the real
one; ``procos_testkit`` has an in-memory one). Implementations raise ``StoreUnavailable`` when
PostgreSQL can't be reached and other ``ProcosError``s for everything else.
"""

from __future__ import annotations

from typing import Protocol
from uuid import UUID

from procos_worker.models import LlmResult, StoredOutput, Task, TaskInputs

__all__ = ["StoreApi"]


class StoreApi(Protocol):
    """The write side of ``procos_ai_context`` the worker uses (see ``store.context.ContextStore``)."""

    def open(self) -> None: ...

    def close(self) -> None: ...

    def ping(self) -> None: ...

    def save_input(self, task: Task, inputs: TaskInputs, prompt: str) -> tuple[UUID, StoredOutput | None]: ...

    def save_output(self, task: Task, result: LlmResult, input_id: UUID | None) -> StoredOutput: ...
