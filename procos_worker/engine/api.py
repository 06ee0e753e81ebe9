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

    def fetch_and_lock(self, topics: Sequence[Subscription], *, max_tasks: int,
                       max_answer_bytes: int | None = None) -> list[Task] | None: ...

    def complete(self, task_id: str, variables: Mapping[str, Any],
                 local_variables: Mapping[str, Any] | None = None) -> None: ...

    def handle_failure(self, task_id: str, *, message: str, details: str, retries: int,
                       retry_timeout_ms: int) -> None: ...

    def handle_bpmn_error(self, task_id: str, *, code: str, message: str,
                          variables: Mapping[str, Any] | None = None) -> None: ...

    def extend_lock(self, task_id: str, new_duration_ms: int) -> None: ...

    def lock(self, task_id: str, lock_duration_ms: int) -> None: ...

    def unlock(self, task_id: str, *, timeout_s: float | None = None) -> None: ...

    def locked_task_ids(self, *, timeout_s: float | None = None) -> list[str]: ...

    def locked_tasks(self, worker_id: str, *, timeout_s: float | None = None) -> list[tuple[str, float | None]]: ...

    # -- a task's variables, sizes first (``engine.variables``) --------------------------------------

    def variable_instances(self, process_instance_id: str, names: list[str], *,
                           max_bytes: int) -> list[dict[str, Any]] | None: ...

    def activity_instance_ancestry(self, process_instance_id: str, activity_instance_id: str) -> list[str]: ...

    def binary_length(self, variable_instance_id: str, *, up_to: int) -> int: ...

    def binary_value(self, variable_instance_id: str, *, max_bytes: int) -> bytes | None: ...

    # -- where a BPMN error is caught (``engine.bpmn``) ----------------------------------------------

    def process_definition_xml(self, definition_id: str) -> str: ...

    def calling_activity(self, process_instance_id: str) -> tuple[str, str, str] | None: ...

    def engine_name(self) -> str: ...

    def close(self) -> None: ...
