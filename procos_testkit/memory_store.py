"""An in-memory context store with the worker's side of ``ContextStore`` (``StoreApi``), an in-memory
procos_ai_models (``ModelTableApi``) and procos_worker_leases (``LeaseApi``), for unit tests of the
pipeline (the real PostgreSQL is what the integration and fault suites use).

Like the real table it holds at most one input and one output row per attempt (task id and
``fingerprint.input_hash``): a second ``save_input`` of the same attempt returns the output stored
earlier (the redelivery path), a changed input gets new rows beside the old ones; a second
``save_output`` returns the first row. A model name longer than its column is refused as the real
store does. ``down = True`` makes every call raise ``StoreUnavailable``; ``fail`` scripts other errors
(see ``procos_testkit.scripted``).
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

from procos_testkit.scripted import Scripted
from procos_worker.errors import PermanentError, StoreUnavailable
from procos_worker.fingerprint import input_hash
from procos_worker.models import LlmResult, ModelRow, StoredOutput, Task, TaskInputs
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

    @property
    def prompt(self) -> str:
        """The last message: what the model is asked."""
        return self.messages[-1]["content"]


class InMemoryStore(Scripted):
    """Rows by attempt, ``attempts[(task_id, input_hash)]`` = (input, output or None); ``inputs[task_id]`` and
    ``outputs[task_id]`` (the StoredOutput and its text) are the task's latest attempt."""

    def __init__(self, provider: str = "ollama") -> None:
        super().__init__(lambda call: StoreUnavailable(f"PostgreSQL can't be reached ({call})"))
        self.provider = provider
        self.inputs: dict[str, StoredInput] = {}
        self.outputs: dict[str, tuple[StoredOutput, str]] = {}
        self.attempts: dict[tuple[str, str], tuple[StoredInput, tuple[StoredOutput, str] | None]] = {}
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
                   model: str, options: Mapping[str, Any]) -> tuple[UUID, StoredOutput | None]:
        self._called("save_input", task_id=task.id)
        if len(model) > MODEL_NAME_MAX_CHARS:
            raise PermanentError(f"model name is {len(model)} characters; procos_ai_context.model_used holds "
                                 f"{MODEL_NAME_MAX_CHARS}")
        attempt = input_hash(task.process_instance_id, messages, model, options)
        with self._lock:
            row, output = self.attempts.setdefault((task.id, attempt), (StoredInput(
                uuid.uuid4(), inputs, tuple(dict(m) for m in messages), model, dict(options), attempt), None))
            self.inputs[task.id] = row
        return row.id, None if output is None else output[0]

    def save_output(self, task: Task, result: LlmResult, input_id: UUID | None, *,
                    prompt_chars: int | None = None) -> StoredOutput:
        self._called("save_output", task_id=task.id, prompt_chars=prompt_chars)
        stored = StoredOutput(id=uuid.uuid4(), response_length=len(result.content), model=result.model,
                              provider=self.provider, prompt_tokens=result.prompt_eval_count,
                              completion_tokens=result.eval_count, done_reason=result.done_reason)
        with self._lock:
            key = next((k for k, (row, _out) in self.attempts.items() if row.id == input_id), (task.id, ""))
            row, output = self.attempts.get(key, (self.inputs.get(task.id), None))
            if output is None:
                output = (stored, result.content)
                if row is not None:
                    self.attempts[key] = (row, output)
            self.outputs[task.id] = output
            return output[0]


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
