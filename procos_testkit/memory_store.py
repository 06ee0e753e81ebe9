"""An in-memory context store with the worker's side of ``ContextStore`` (``StoreApi``), and an in-memory
procos_ai_models (``ModelTableApi``), for unit tests of the pipeline (the real PostgreSQL is what the
integration and fault suites use).

Like the real table it holds at most one input and one output row per task id: a second
``save_input`` returns the output stored earlier (the redelivery path), a second ``save_output``
returns the first row. ``down = True`` makes every call raise ``StoreUnavailable``; ``fail`` scripts
other errors (see ``procos_testkit.scripted``).
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

from procos_testkit.scripted import Scripted
from procos_worker.errors import StoreUnavailable
from procos_worker.models import LlmResult, ModelRow, StoredOutput, Task, TaskInputs

__all__ = ["InMemoryModels", "InMemoryStore", "StoredInput"]


@dataclass(frozen=True)
class StoredInput:
    id: UUID
    inputs: TaskInputs
    messages: tuple[Mapping[str, str], ...]
    model: str
    options: Mapping[str, Any]

    @property
    def prompt(self) -> str:
        """The last message: what the model is asked."""
        return self.messages[-1]["content"]


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

    def save_input(self, task: Task, inputs: TaskInputs, messages: Sequence[Mapping[str, str]], *,
                   model: str, options: Mapping[str, Any],
                   think: bool | str | None = None) -> tuple[UUID, StoredOutput | None]:
        self._called("save_input", task_id=task.id, think=think)
        with self._lock:
            row = self.inputs.setdefault(
                task.id, StoredInput(uuid.uuid4(), inputs, tuple(dict(m) for m in messages), model, dict(options)))
            output = self.outputs.get(task.id)
        return row.id, None if output is None else output[0]

    def save_output(self, task: Task, result: LlmResult, input_id: UUID | None, *,
                    prompt_chars: int | None = None) -> StoredOutput:
        self._called("save_output", task_id=task.id, prompt_chars=prompt_chars)
        stored = StoredOutput(id=uuid.uuid4(), response_length=len(result.content), model=result.model,
                              provider=self.provider, prompt_tokens=result.prompt_eval_count,
                              completion_tokens=result.eval_count, done_reason=result.done_reason)
        with self._lock:
            return self.outputs.setdefault(task.id, (stored, result.content))[0]


@dataclass
class InMemoryModels:
    """procos_ai_models in memory (``ModelTableApi``): ``rows`` newest first, as ``ModelTable.load`` reads
    them; ``refreshes`` counts the stats refreshes asked for. Empty: every model is unregistered."""

    rows: list[ModelRow] = field(default_factory=list)
    refreshes: int = 0

    def load(self) -> list[ModelRow]:
        return list(self.rows)

    def refresh_stats(self, *, window_s: float, min_age_s: float, unanswered_after_s: float,
                      worker_id: str) -> int | None:
        self.refreshes += 1
        return 0
