"""An in-memory context store with the worker's side of ``ContextStore`` (``StoreApi``), and an in-memory
procos_ai_models (``ModelTableApi``), for unit tests of the pipeline (the real PostgreSQL is what the
integration and fault suites use).

Like the real table it holds at most one row per task id and row type: a second ``save_input`` returns
the output stored earlier (the redelivery path), a second ``save_output`` returns the first row. The
``input`` and ``output`` rows are in ``inputs`` / ``outputs``; the other types a structured task
writes (``repair_input_<n>``, ``invalid_output_<n>``) in ``attempts``. ``down = True`` makes every
call raise ``StoreUnavailable``; ``fail`` scripts other errors (see ``procos_testkit.scripted``).
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

from procos_testkit.scripted import Scripted
from procos_worker.errors import StoreUnavailable
from procos_worker.models import LlmResult, ModelRow, StoredContext, StoredOutput, Task, TaskInputs

__all__ = ["InMemoryModels", "InMemoryStore", "StoredInput"]


@dataclass(frozen=True)
class StoredInput:
    id: UUID
    inputs: TaskInputs
    messages: tuple[Mapping[str, str], ...]
    model: str
    options: Mapping[str, Any]
    extra: Mapping[str, Any] = field(default_factory=dict)

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
        self.attempts: dict[tuple[str, str], StoredContext] = {}
        self._contexts: dict[str, StoredContext] = {}
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
                   model: str, options: Mapping[str, Any], think: bool | str | None = None,
                   context_type: str = "input",
                   extra: Mapping[str, Any] | None = None) -> tuple[UUID, StoredOutput | None]:
        self._called("save_input", task_id=task.id, think=think, context_type=context_type)
        row = StoredInput(uuid.uuid4(), inputs, tuple(dict(m) for m in messages), model, dict(options),
                          dict(extra or {}))
        with self._lock:
            if context_type == "input":
                row = self.inputs.setdefault(task.id, row)
                self._context(row.id, task, context_type, row.prompt,
                              {"messages": [dict(m) for m in row.messages], **row.extra})
            else:
                data = {"messages": [dict(m) for m in row.messages], **row.extra}
                kept = self.attempts.setdefault((task.id, context_type), self._context(
                    row.id, task, context_type, row.prompt, data))
                row = StoredInput(kept.id, inputs, row.messages, model, dict(options), row.extra)
            output = self.outputs.get(task.id)
        return row.id, None if output is None else output[0]

    def save_output(self, task: Task, result: LlmResult, input_id: UUID | None, *,
                    prompt_chars: int | None = None, context_type: str = "output",
                    extra: Mapping[str, Any] | None = None) -> StoredOutput:
        self._called("save_output", task_id=task.id, prompt_chars=prompt_chars, context_type=context_type)
        stored = StoredOutput(id=uuid.uuid4(), response_length=len(result.content), model=result.model,
                              provider=self.provider, prompt_tokens=result.prompt_eval_count,
                              completion_tokens=result.eval_count, done_reason=result.done_reason)
        data = {"content": result.content, "done_reason": result.done_reason,
                "input_context_id": None if input_id is None else str(input_id), **(extra or {})}
        with self._lock:
            if context_type == "output":
                kept = self.outputs.setdefault(task.id, (stored, result.content))[0]
                self._context(kept.id, task, context_type, self.outputs[task.id][1], data)
                return kept
            row = self.attempts.setdefault((task.id, context_type),
                                           self._context(stored.id, task, context_type, result.content, data))
            return StoredOutput(id=row.id, response_length=len(row.content_text or ""), model=result.model,
                                provider=self.provider, prompt_tokens=result.prompt_eval_count,
                                completion_tokens=result.eval_count, done_reason=result.done_reason)

    def get(self, context_id: UUID | str) -> StoredContext | None:
        with self._lock:
            return self._contexts.get(str(context_id))

    def answer_to(self, task_id: str, input_id: UUID, context_type: str) -> StoredContext | None:
        self._called("answer_to", task_id=task_id, context_type=context_type)
        with self._lock:
            row = self.attempts.get((task_id, context_type))
        return row if row is not None and row.content_data.get("input_context_id") == str(input_id) else None

    def _context(self, row_id: UUID, task: Task, context_type: str, text: str,
                 data: Mapping[str, Any]) -> StoredContext:
        """Keep a row for ``get`` (called under the lock; the first row of a task and type wins)."""
        row = self._contexts.setdefault(str(row_id), StoredContext(
            id=row_id, process_instance_id=task.process_instance_id, task_id=task.id, activity_id=task.activity_id,
            process_definition_key=task.process_definition_key, activity_instance_id=task.activity_instance_id,
            context_type=context_type, content_text=text, content_data=dict(data), ai_provider=self.provider,
            model_used=None, token_usage=None, created_at=datetime.now(UTC)))
        return row


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
