"""An in-memory context store with the worker's side of ``ContextStore`` (``StoreApi``), for unit tests
of the pipeline (the real PostgreSQL is what the integration and fault suites use).

Like the real table it holds at most one input and one output row per task id: a second
``save_input`` returns the output stored earlier (the redelivery path), a second ``save_output``
returns the first row. ``down = True`` makes every call raise ``StoreUnavailable``; ``fail`` scripts
other errors (see ``procos_testkit.scripted``).
"""

from __future__ import annotations

import threading
import uuid
from dataclasses import dataclass
from uuid import UUID

from procos_testkit.scripted import Scripted
from procos_worker.errors import StoreUnavailable
from procos_worker.models import LlmResult, StoredOutput, Task, TaskInputs

__all__ = ["InMemoryStore", "StoredInput"]


@dataclass(frozen=True)
class StoredInput:
    id: UUID
    inputs: TaskInputs
    prompt: str


class InMemoryStore(Scripted):
    """Rows by task id: ``inputs[task_id]``, ``outputs[task_id]`` (the StoredOutput and its text)."""

    def __init__(self, provider: str = "ollama") -> None:
        super().__init__(lambda call: StoreUnavailable(f"PostgreSQL can't be reached ({call})"))
        self.provider = provider
        self.inputs: dict[str, StoredInput] = {}
        self.outputs: dict[str, tuple[StoredOutput, str]] = {}
        self.opened = False
        self.closed = False
        self._lock = threading.Lock()

    def open(self) -> None:
        self.opened = True

    def close(self) -> None:
        self.closed = True

    def ping(self) -> None:
        self._called("ping")

    def save_input(self, task: Task, inputs: TaskInputs, prompt: str) -> tuple[UUID, StoredOutput | None]:
        self._called("save_input", task_id=task.id)
        with self._lock:
            row = self.inputs.setdefault(task.id, StoredInput(uuid.uuid4(), inputs, prompt))
            output = self.outputs.get(task.id)
        return row.id, None if output is None else output[0]

    def save_output(self, task: Task, result: LlmResult, input_id: UUID | None) -> StoredOutput:
        self._called("save_output", task_id=task.id)
        stored = StoredOutput(id=uuid.uuid4(), response_length=len(result.content), model=result.model,
                              provider=self.provider, prompt_tokens=result.prompt_eval_count,
                              completion_tokens=result.eval_count, done_reason=result.done_reason)
        with self._lock:
            return self.outputs.setdefault(task.id, (stored, result.content))[0]
