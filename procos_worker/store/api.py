"""What the worker needs of PostgreSQL, as ``Protocol``s: the context store's writes (``ContextStore``),
the model table the registry reads (``ModelTable``) and the leases of orphan recovery (``LeaseStore``);
``procos_testkit`` has in-memory ones.
Implementations raise ``StoreUnavailable`` when PostgreSQL can't be reached and other
``ProcosError``s for everything else.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol
from uuid import UUID

from procos_worker.models import LlmResult, ModelRow, StoredContext, StoredOutput, Task, TaskInputs, Turn, TurnSize

__all__ = ["LeaseApi", "ModelTableApi", "StoreApi"]


class StoreApi(Protocol):
    """The write side of ``procos_ai_context`` the worker uses (see ``store.context.ContextStore``)."""

    def open(self) -> None: ...

    def close(self) -> None: ...

    def ping(self) -> None: ...

    def save_input(self, task: Task, inputs: TaskInputs, messages: Sequence[Mapping[str, str]], *,
                   model: str, options: Mapping[str, Any], think: bool | str | None = None,
                   context_type: str = "input", extra: Mapping[str, Any] | None = None,
                   window: Mapping[str, Any] | None = None,
                   memory_key: str | None = None) -> tuple[UUID, StoredOutput | None]: ...

    def amend_input(self, input_id: UUID, task: Task, inputs: TaskInputs, messages: Sequence[Mapping[str, str]], *,
                    model: str, options: Mapping[str, Any], window: Mapping[str, Any] | None = None) -> None: ...

    def save_output(self, task: Task, result: LlmResult, input_id: UUID | None, *,
                    prompt_chars: int | None = None, prompt_messages: int | None = None,
                    memory_key: str | None = None, prompt_truncated: bool = False, context_type: str = "output",
                    extra: Mapping[str, Any] | None = None) -> StoredOutput: ...

    def get(self, context_id: UUID | str) -> StoredContext | None: ...

    def answer_to(self, task_id: str, input_id: UUID, context_type: str) -> StoredContext | None: ...

    def recent_turns(self, task: Task, scope: str, value: str, limit: int) -> list[TurnSize]:
        """The sizes of the newest ``limit`` turns before ``task`` of a process instance (``scope``
        "process") or a memory key ("variable"), newest first, read without their texts."""
        ...

    def turn_texts(self, ids: Sequence[UUID]) -> dict[UUID, Turn]: ...


class ModelTableApi(Protocol):
    """procos_ai_models for one provider (see ``store.registry.ModelTable``)."""

    def load(self) -> list[ModelRow]: ...

    def refresh_stats(self, *, window_s: float, min_age_s: float, unanswered_after_s: float,
                      worker_id: str) -> int | None: ...


class LeaseApi(Protocol):
    """procos_worker_leases: one row per live worker (see ``store.leases.LeaseStore``)."""

    def beat(self, worker_id: str, *, host: str, pid: int, topics: Sequence[str], lease_s: float,
             sweep_s: float) -> bool | None: ...

    def release(self, worker_id: str, *, sweep_s: float) -> None: ...

    def reap(self, worker_id: str, sweep: Callable[[str], None]) -> int: ...
