"""An in-memory context store with the worker's side of ``ContextStore`` (``StoreApi``), an in-memory
procos_ai_models (``ModelTableApi``) and procos_worker_leases (``LeaseApi``), for unit tests of the
pipeline (the real PostgreSQL is what the integration and fault suites use).

Like the real table it holds at most one row per attempt and row type (task id, ``context_type`` and
``fingerprint.input_hash``; an answer row takes its input row's hash): a second ``save_input`` of the same
attempt returns the output stored earlier (the redelivery path), a changed input gets new rows beside the
old ones; a second ``save_output`` returns the first row. ``inputs`` / ``outputs`` hold each task's latest
``input`` and ``output`` rows; the other types a structured task writes (``repair_input_<n>``,
``invalid_output_<n>``) are in ``attempts``. Each stored answer is a turn (``turns``) that
``recent_turns`` / ``turn_texts`` give to later tasks with memory, as the real queries do (newest first,
the asking task left out). A model name longer than its column is refused as the real store does.
``down = True`` makes every call raise ``StoreUnavailable``; ``fail`` scripts other errors (see
``procos_testkit.scripted``).
"""

from __future__ import annotations

import dataclasses
import threading
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

from procos_testkit.scripted import Scripted
from procos_worker.errors import PermanentError, StoreUnavailable
from procos_worker.fingerprint import input_hash
from procos_worker.models import LlmResult, ModelRow, StoredContext, StoredOutput, Task, TaskInputs, Turn, TurnSize
from procos_worker.settings import MODEL_NAME_MAX_CHARS

__all__ = ["InMemoryLeases", "InMemoryModels", "InMemoryStore", "Lease", "StoredInput"]


@dataclass(frozen=True)
class StoredInput:
    id: UUID
    inputs: TaskInputs
    messages: tuple[Mapping[str, str], ...]
    model: str
    options: Mapping[str, Any]
    input_hash: str = ""
    extra: Mapping[str, Any] = field(default_factory=dict)
    window: Mapping[str, Any] = field(default_factory=dict)
    memory_key: str | None = None

    @property
    def prompt(self) -> str:
        """The last message: what the model is asked."""
        return self.messages[-1]["content"]


class InMemoryStore(Scripted):
    """Rows by attempt and type; ``inputs[task_id]`` / ``outputs[task_id]`` (the StoredOutput and its text)
    are the task's latest input and output rows, ``attempts[(task_id, type)]`` its other rows."""

    def __init__(self, provider: str = "ollama") -> None:
        super().__init__(lambda call: StoreUnavailable(f"PostgreSQL can't be reached ({call})"))
        self.provider = provider
        self.inputs: dict[str, StoredInput] = {}
        self.outputs: dict[str, tuple[StoredOutput, str]] = {}
        self.attempts: dict[tuple[str, str], StoredContext] = {}
        self.turns: list[Turn] = []
        """Every stored answer with its question, oldest first."""
        self.opened = False
        self.closed = False
        self._asked: dict[tuple[str, str, str], StoredInput] = {}  # (task, type, hash): the unique index
        self._answers: dict[tuple[str, str, str], tuple[StoredOutput, str]] = {}
        self._by_id: dict[UUID, StoredInput] = {}
        self._contexts: dict[str, StoredContext] = {}
        self._lock = threading.Lock()

    def open(self) -> None:
        self.opened = True

    def close(self) -> None:
        self.closed = True

    def ping(self) -> None:
        self._called("ping")

    def save_input(self, task: Task, inputs: TaskInputs, messages: Sequence[Mapping[str, str]], *,
                   model: str, options: Mapping[str, Any], think: bool | str | None = None,
                   context_type: str = "input", extra: Mapping[str, Any] | None = None,
                   window: Mapping[str, Any] | None = None,
                   memory_key: str | None = None) -> tuple[UUID, StoredOutput | None]:
        self._called("save_input", task_id=task.id, think=think, context_type=context_type)
        if len(model) > MODEL_NAME_MAX_CHARS:
            raise PermanentError(f"model name is {len(model)} characters; procos_ai_context.model_used holds "
                                 f"{MODEL_NAME_MAX_CHARS}")
        attempt = input_hash(task.process_instance_id, messages, model, options)
        with self._lock:
            row = self._asked.get((task.id, context_type, attempt))
            if row is None:
                row = StoredInput(uuid.uuid4(), inputs, tuple(dict(m) for m in messages), model, dict(options),
                                  attempt, dict(extra or {}), dict(window or {}), memory_key)
                self._asked[(task.id, context_type, attempt)] = self._by_id[row.id] = row
                data = {"messages": [dict(m) for m in row.messages], **row.extra, **row.window}
                context = self._context(row.id, task, context_type, row.prompt, data)
                if context_type != "input":
                    self.attempts[(task.id, context_type)] = context
            if context_type == "input":
                self.inputs[task.id] = row
            output = self._answers.get((task.id, "output", attempt))
        return row.id, None if output is None else output[0]

    def amend_input(self, input_id: UUID, task: Task, inputs: TaskInputs, messages: Sequence[Mapping[str, str]], *,
                    model: str, options: Mapping[str, Any], window: Mapping[str, Any] | None = None) -> None:
        self._called("amend_input", task_id=task.id)
        with self._lock:
            row = dataclasses.replace(self._by_id[input_id], messages=tuple(dict(m) for m in messages),
                                      window=dict(window or {}))
            self._by_id[input_id] = self._asked[(task.id, "input", row.input_hash)] = row
            if self.inputs.get(task.id, row).id == input_id:
                self.inputs[task.id] = row

    def save_output(self, task: Task, result: LlmResult, input_id: UUID | None, *,
                    prompt_chars: int | None = None, prompt_messages: int | None = None,
                    memory_key: str | None = None, prompt_truncated: bool = False, context_type: str = "output",
                    extra: Mapping[str, Any] | None = None) -> StoredOutput:
        self._called("save_output", task_id=task.id, prompt_chars=prompt_chars, context_type=context_type)
        stored = StoredOutput(id=uuid.uuid4(), response_length=len(result.content), model=result.model,
                              provider=self.provider, prompt_tokens=result.prompt_eval_count,
                              completion_tokens=result.eval_count, done_reason=result.done_reason,
                              prompt_truncated=prompt_truncated)
        data = {"content": result.content, "done_reason": result.done_reason,
                "input_context_id": None if input_id is None else str(input_id), **(extra or {})}
        with self._lock:
            asked = None if input_id is None else self._by_id.get(input_id)
            key = (task.id, context_type, "" if asked is None else asked.input_hash)
            kept = self._answers.get(key)
            if kept is None:
                kept = self._answers[key] = (stored, result.content)
                context = self._context(stored.id, task, context_type, result.content, data)
                if context_type != "output":
                    self.attempts[(task.id, context_type)] = context
                elif asked is not None:
                    self.turns.append(Turn(id=stored.id, input_id=asked.id, question=asked.prompt,
                                           answer=result.content, process_instance_id=task.process_instance_id,
                                           task_id=task.id, activity_id=task.activity_id, memory_key=memory_key,
                                           model=result.model, created_at=datetime.now(UTC)))
            if context_type == "output":
                self.outputs[task.id] = kept
            return kept[0]

    def get(self, context_id: UUID | str) -> StoredContext | None:
        with self._lock:
            return self._contexts.get(str(context_id))

    def answer_to(self, task_id: str, input_id: UUID, context_type: str) -> StoredContext | None:
        self._called("answer_to", task_id=task_id, context_type=context_type)
        with self._lock:
            return next((row for row in self._contexts.values() if row.task_id == task_id
                         and row.context_type == context_type
                         and row.content_data.get("input_context_id") == str(input_id)), None)

    def recent_turns(self, task: Task, scope: str, value: str, limit: int) -> list[TurnSize]:
        self._called("recent_turns", task_id=task.id, scope=scope, value=value)
        with self._lock:
            mine = [t for t in self.turns if t.task_id != task.id
                    and (t.process_instance_id if scope == "process" else t.memory_key) == value]
        return [TurnSize(id=t.id, input_id=t.input_id, question_chars=len(t.question),
                         question_bytes=len(t.question.encode()), answer_chars=len(t.answer),
                         answer_bytes=len(t.answer.encode()), model=t.model) for t in reversed(mine)][:limit]

    def turn_texts(self, ids: Sequence[UUID]) -> dict[UUID, Turn]:
        self._called("turn_texts", ids=list(ids))
        with self._lock:
            return {t.id: t for t in self.turns if t.id in ids}

    def _context(self, row_id: UUID, task: Task, context_type: str, text: str,
                 data: Mapping[str, Any]) -> StoredContext:
        """Keep a row for ``get`` (called under the lock)."""
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


@dataclass
class Lease:
    """One worker's row of procos_worker_leases, in the store's ``clock`` seconds."""

    expires_at: float
    sweep_until: float
    stopped: bool = False


class InMemoryLeases(Scripted):
    """procos_worker_leases in memory (``LeaseApi``), on ``clock`` (the database's ``now()``): ``beat`` renews,
    ``release`` expires at once, ``reap`` sweeps each expired lease still in its sweep window (not the
    caller's) and forgets those past it. ``down``/``fail`` as for the other doubles."""

    def __init__(self, clock: Callable[[], float]) -> None:
        super().__init__(lambda call: StoreUnavailable(f"PostgreSQL can't be reached ({call})"))
        self.rows: dict[str, Lease] = {}
        self._clock = clock
        self._lock = threading.Lock()

    def beat(self, worker_id: str, *, host: str, pid: int, topics: Sequence[str], lease_s: float,
             sweep_s: float) -> bool | None:
        self._called("beat", worker_id=worker_id)
        now = self._clock()
        with self._lock:
            old = self.rows.get(worker_id)
            self.rows[worker_id] = Lease(expires_at=now + lease_s, sweep_until=now + lease_s + sweep_s)
        return None if old is None else old.expires_at < now

    def release(self, worker_id: str, *, sweep_s: float) -> None:
        self._called("release", worker_id=worker_id)
        now = self._clock()
        with self._lock:
            if worker_id in self.rows:
                self.rows[worker_id] = Lease(expires_at=now, sweep_until=now + sweep_s, stopped=True)

    def reap(self, worker_id: str, sweep: Callable[[str], None]) -> int:
        self._called("reap", worker_id=worker_id)
        now = self._clock()
        with self._lock:
            dead = sorted((lease.expires_at, wid) for wid, lease in self.rows.items()
                          if lease.expires_at < now < lease.sweep_until and wid != worker_id)
        for _expired, dead_id in dead:
            sweep(dead_id)
        with self._lock:
            for wid in [wid for wid, lease in self.rows.items() if lease.sweep_until < now]:
                del self.rows[wid]
        return len(dead)
