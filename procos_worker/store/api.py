"""What the worker needs of PostgreSQL, as ``Protocol``s: the context store's writes (``ContextStore``)
and the model table the registry reads (``ModelTable``); ``procos_testkit`` has in-memory ones.
Implementations raise ``StoreUnavailable`` when PostgreSQL can't be reached and other
``ProcosError``s for everything else.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol
from uuid import UUID

from procos_worker.models import LlmResult, ModelRow, StoredContext, StoredOutput, Task, TaskInputs

__all__ = ["ModelTableApi", "StoreApi"]


class StoreApi(Protocol):
    """The write side of ``procos_ai_context`` the worker uses (see ``store.context.ContextStore``)."""

    def open(self) -> None: ...

    def close(self) -> None: ...

    def ping(self) -> None: ...

    def save_input(self, task: Task, inputs: TaskInputs, messages: Sequence[Mapping[str, str]], *,
                   model: str, options: Mapping[str, Any], think: bool | str | None = None,
                   context_type: str = "input",
                   extra: Mapping[str, Any] | None = None) -> tuple[UUID, StoredOutput | None]: ...

    def save_output(self, task: Task, result: LlmResult, input_id: UUID | None, *,
                    prompt_chars: int | None = None, context_type: str = "output",
                    extra: Mapping[str, Any] | None = None) -> StoredOutput: ...

    def get(self, context_id: UUID | str) -> StoredContext | None: ...

    def answer_to(self, task_id: str, input_id: UUID, context_type: str) -> StoredContext | None: ...


class ModelTableApi(Protocol):
    """procos_ai_models for one provider (see ``store.registry.ModelTable``)."""

    def load(self) -> list[ModelRow]: ...

    def refresh_stats(self, *, window_s: float, min_age_s: float, unanswered_after_s: float,
                      worker_id: str) -> int | None: ...
