"""What the worker needs of the engine, as a ``Protocol``: the calls of ``EngineClient``, by name.

``Worker`` and ``Heartbeat`` are typed against it, so an in-memory engine (``procos_testkit``) can
stand in for Camunda in unit tests. Implementations raise only ``EngineError`` subclasses.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from procos_worker.engine.fetch import Subscription
from procos_worker.models import Task

__all__ = ["EngineApi"]


class EngineApi(Protocol):
    """One worker's view of the Camunda 7 external-task API (see ``engine.client.EngineClient``)."""

    def fetch_and_lock(self, topics: Sequence[Subscription], *, max_tasks: int) -> list[Task]: ...

    def complete(self, task_id: str, variables: Mapping[str, Any],
                 local_variables: Mapping[str, Any] | None = None) -> None: ...

    def handle_failure(self, task_id: str, *, message: str, details: str, retries: int,
                       retry_timeout_ms: int) -> None: ...

    def handle_bpmn_error(self, task_id: str, *, code: str, message: str,
                          variables: Mapping[str, Any] | None = None) -> None: ...

    def extend_lock(self, task_id: str, new_duration_ms: int) -> None: ...

    def unlock(self, task_id: str) -> None: ...

    def locked_task_ids(self) -> list[str]: ...

    def engine_name(self) -> str: ...

    def close(self) -> None: ...
