"""An in-memory Camunda external-task engine with ``EngineClient``'s interface, for unit tests of the
worker's threads (no Camunda: the real engine is what the integration and fault suites use).

It keeps what the worker relies on from Camunda 7.24:

* ``fetch_and_lock`` is a long poll: it returns at once when a task is free, else waits (up to
  ``poll_timeout_s``) until one is created or unlocked, or the double is closed. It locks at most
  ``max_tasks`` tasks of the given topics for this worker id and returns only the requested variables
  (Bytes as base64, a File without content); over ``max_answer_bytes`` it returns None and the tasks
  stay locked (a client that stopped reading the answer).
* ``unlock`` wakes every pending long poll, which then locks the task again (what makes the worker
  sweep twice at shutdown).
* ``complete``, ``handle_failure``, ``handle_bpmn_error``, ``extend_lock``, ``lock`` and ``unlock`` of a
  task that is gone raise ``LockLost`` (Camunda: 404); the first three, ``extend_lock`` and ``lock`` also
  when another worker holds the task (Camunda: 400 "locked by worker 'x'"). The first three and
  ``extend_lock`` raise ``LockExpired`` when nobody holds it (unlocked: "locked by worker 'null'"), and
  ``extend_lock`` when our lock has expired; ``lock`` takes a task nobody holds. ``complete`` of our own
  expired lock succeeds, as in Camunda.
* ``handle_failure`` with retries 0 leaves an incident; with retries left the task is free again
  after ``retry_timeout_ms``.
* ``locked_task_ids`` lists the tasks this worker id holds with an unexpired lock; ``locked_tasks`` those
  of any worker id, with the seconds each lock has left.
* ``variable_instances`` answers the variable-instance query as Camunda does with serialized values: every
  variable of the task's process instance (its scope), a Bytes value left out (read by ``binary_length``
  and ``binary_value``), None when the answer would be over ``max_bytes``.
* ``process_definition_xml`` returns the BPMN a test gave ``add_task`` (``bpmn=``); ``calling_activity``
  what it put in ``callers``.

Lock expiry is measured with ``clock`` (a ``FakeClock`` in tests); waits are real but end as soon as
something changes. Failures are scripted with ``fail`` and ``down`` (see ``procos_testkit.scripted``).
"""

from __future__ import annotations

import base64
import itertools
import json
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from procos_testkit.scripted import Scripted
from procos_worker.engine.fetch import Subscription
from procos_worker.errors import EngineRejected, EngineUnavailable, LockExpired, LockLost
from procos_worker.models import Task, Variable

__all__ = ["EngineTask", "InMemoryEngine", "TaskState"]

TaskState = Literal["open", "completed", "bpmn_error", "incident", "deleted"]


@dataclass
class EngineTask:
    """The engine's record of one external task."""

    id: str
    topic: str
    process_instance_id: str
    variables: dict[str, Variable]
    retries: int | None = None
    activity_id: str | None = None
    definition_id: str | None = None
    properties: dict[str, str] = field(default_factory=dict)
    state: TaskState = "open"
    worker_id: str | None = None
    lock_expires_at: float | None = None
    free_at: float = 0.0
    reported: dict[str, Any] = field(default_factory=dict)


class InMemoryEngine(Scripted):
    """One worker's view of an in-memory engine (``worker_id`` is the worker it serves)."""

    def __init__(self, worker_id: str = "test-worker", *, lock_duration_ms: int = 60_000,
                 poll_timeout_s: float = 5.0, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(lambda call: EngineUnavailable(f"engine down ({call})"))
        self.worker_id = worker_id
        self.lock_duration_ms = lock_duration_ms
        self.poll_timeout_s = poll_timeout_s
        self.tasks: dict[str, EngineTask] = {}
        self.closed = False
        self.polls_waiting = 0
        self.before_return: Callable[[], object] | None = None
        """Called by a long poll that found tasks, right before it returns them (to act at that moment)."""
        self.definitions: dict[str, str] = {}
        """Process definition id -> its BPMN XML."""
        self.callers: dict[str, tuple[str, str, str]] = {}
        """Process instance -> (calling instance, its definition id, the call activity) for called processes."""
        self._clock = clock
        self._cond = threading.Condition()
        self._ids = itertools.count(1)

    # -- what a test does to the engine ------------------------------------------------------------

    def add_task(self, variables: Mapping[str, Any] | None = None, *, topic: str = "ai-query",
                 retries: int | None = None, activity_id: str = "ask-model",
                 properties: Mapping[str, str] | None = None, bpmn: str | None = None) -> str:
        """Create a task; a plain value becomes a String (str) or Bytes (bytes) or Json (anything else)
        variable. ``properties`` are its activity's extension properties (``procos.*``); ``bpmn`` the XML
        of its process definition (else the task has none, and no catch check is made)."""
        with self._cond:
            n = next(self._ids)
            task_id = f"task-{n}"
            definition_id = None
            if bpmn is not None:
                definition_id = f"def-{n}"
                self.definitions[definition_id] = bpmn
            self.tasks[task_id] = EngineTask(
                id=task_id, topic=topic, process_instance_id=f"pi-{n}", retries=retries, activity_id=activity_id,
                definition_id=definition_id, properties=dict(properties or {}),
                variables={k: v if isinstance(v, Variable) else _variable(v) for k, v in (variables or {}).items()})
            self._cond.notify_all()
        return task_id

    def lock_for_other_worker(self, task_id: str, worker_id: str = "other-worker") -> None:
        """Another worker took the task (our lock expired and it fetched it)."""
        with self._cond:
            task = self.tasks[task_id]
            task.worker_id = worker_id
            task.lock_expires_at = self._clock() + self.lock_duration_ms / 1000

    def delete(self, task_id: str) -> None:
        """The task is gone (its process instance was cancelled)."""
        with self._cond:
            self.tasks[task_id].state = "deleted"
            self._cond.notify_all()

    def state(self, task_id: str) -> TaskState:
        with self._cond:
            return self.tasks[task_id].state

    def wait_polling(self, timeout_s: float = 5.0) -> None:
        """Block until a long poll is waiting in the engine (the worker is idle and polling)."""
        with self._cond:
            if not self._cond.wait_for(lambda: self.polls_waiting > 0, timeout=timeout_s):
                raise AssertionError(f"no long poll waiting after {timeout_s}s")

    # -- the EngineApi -----------------------------------------------------------------------------

    def fetch_and_lock(self, topics: Sequence[Subscription], *, max_tasks: int,
                       max_answer_bytes: int | None = None) -> list[Task] | None:
        """Camunda's long poll; each task comes with its topic's variables (a Bytes value as base64, a
        File's without its content) and lock duration. None when the answer would be over
        ``max_answer_bytes``: its tasks stay locked, as in Camunda when the client stops reading."""
        by_topic = {sub.topic: sub for sub in topics}
        variables = list(dict.fromkeys(v for sub in topics for v in sub.variables))
        self._called("fetch_and_lock", topics=list(by_topic), max_tasks=max_tasks, variables=variables,
                     max_answer_bytes=max_answer_bytes)
        deadline = time.monotonic() + self.poll_timeout_s
        with self._cond:
            self.polls_waiting += 1
            self._cond.notify_all()
            try:
                while not self.closed:
                    free = [t for t in self.tasks.values() if t.topic in by_topic and self._free(t)][:max_tasks]
                    if free:
                        locked = [self._lock(t, by_topic[t.topic]) for t in free]
                        if self.before_return is not None:
                            self.before_return()
                        if max_answer_bytes is not None and _answer_bytes(locked) > max_answer_bytes:
                            return None
                        return locked
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    self._cond.wait(left)
            finally:
                self.polls_waiting -= 1
            return []

    def complete(self, task_id: str, variables: Mapping[str, Any],
                 local_variables: Mapping[str, Any] | None = None) -> None:
        self._called("complete", task_id=task_id, variables=dict(variables),
                     local_variables=dict(local_variables or {}))
        with self._cond:
            task = self._held(task_id, "complete")
            task.state = "completed"
            task.reported = {"variables": dict(variables), "local_variables": dict(local_variables or {})}
            self._release(task)

    def handle_failure(self, task_id: str, *, message: str, details: str, retries: int,
                       retry_timeout_ms: int) -> None:
        self._called("handle_failure", task_id=task_id, message=message, details=details, retries=retries,
                     retry_timeout_ms=retry_timeout_ms)
        with self._cond:
            task = self._held(task_id, "handle_failure")
            task.retries = retries
            task.reported = {"message": message, "details": details, "retry_timeout_ms": retry_timeout_ms}
            if retries == 0:
                task.state = "incident"
            task.free_at = self._clock() + retry_timeout_ms / 1000
            self._release(task)

    def handle_bpmn_error(self, task_id: str, *, code: str, message: str,
                          variables: Mapping[str, Any] | None = None) -> None:
        self._called("handle_bpmn_error", task_id=task_id, code=code, message=message,
                     variables=dict(variables or {}))
        with self._cond:
            task = self._held(task_id, "handle_bpmn_error")
            task.state = "bpmn_error"
            task.reported = {"code": code, "message": message, "variables": dict(variables or {})}
            self._release(task)

    def extend_lock(self, task_id: str, new_duration_ms: int) -> None:
        self._called("extend_lock", task_id=task_id, new_duration_ms=new_duration_ms)
        with self._cond:
            task = self._held(task_id, "extend_lock")
            if task.lock_expires_at is None or task.lock_expires_at <= self._clock():
                raise LockExpired(f"task {task_id}: Cannot extend a lock that expired")
            task.lock_expires_at = self._clock() + new_duration_ms / 1000

    def lock(self, task_id: str, lock_duration_ms: int) -> None:
        self._called("lock", task_id=task_id, lock_duration_ms=lock_duration_ms)
        with self._cond:
            task = self._existing(task_id)
            now = self._clock()
            if task.state != "open":
                raise EngineRejected(400, "BadUserRequestException", f"task {task_id} is not open")
            if task.worker_id not in (None, self.worker_id) and (task.lock_expires_at or 0.0) > now:
                raise LockLost(f"task {task_id}: it is locked by worker '{task.worker_id}'")
            task.worker_id = self.worker_id
            task.lock_expires_at = now + lock_duration_ms / 1000

    def unlock(self, task_id: str, *, timeout_s: float | None = None) -> None:
        self._called("unlock", task_id=task_id)
        with self._cond:
            self._release(self._existing(task_id))

    def locked_task_ids(self, *, timeout_s: float | None = None) -> list[str]:
        self._called("locked_task_ids")
        return [task_id for task_id, _left in self._locked_by(self.worker_id)]

    def locked_tasks(self, worker_id: str, *, timeout_s: float | None = None) -> list[tuple[str, float | None]]:
        self._called("locked_tasks", worker_id=worker_id)
        return self._locked_by(worker_id)

    def variable_instances(self, process_instance_id: str, names: list[str], *,
                           max_bytes: int) -> list[dict[str, Any]] | None:
        self._called("variable_instances", process_instance_id=process_instance_id, names=list(names))
        with self._cond:
            task = next((t for t in self.tasks.values() if t.process_instance_id == process_instance_id), None)
            variables = {} if task is None else dict(task.variables)
        rows = [{"id": _instance_id(process_instance_id, name), "name": name, "type": v.type,
                 "value": None if v.type in ("Bytes", "File") else v.value, "valueInfo": dict(v.value_info),
                 "processInstanceId": process_instance_id, "executionId": process_instance_id,
                 "activityInstanceId": process_instance_id, "taskId": None, "caseExecutionId": None}
                for name, v in variables.items() if name in names]
        return None if len(json.dumps(rows)) > max_bytes else rows

    def activity_instance_ancestry(self, process_instance_id: str, activity_instance_id: str) -> list[str]:
        self._called("activity_instance_ancestry", process_instance_id=process_instance_id,
                     activity_instance_id=activity_instance_id)
        return [activity_instance_id, process_instance_id]

    def binary_length(self, variable_instance_id: str, *, up_to: int) -> int:
        self._called("binary_length", variable_instance_id=variable_instance_id, up_to=up_to)
        return min(len(self._binary(variable_instance_id)), up_to + 1)

    def binary_value(self, variable_instance_id: str, *, max_bytes: int) -> bytes | None:
        self._called("binary_value", variable_instance_id=variable_instance_id, max_bytes=max_bytes)
        data = self._binary(variable_instance_id)
        return None if len(data) > max_bytes else data

    def process_definition_xml(self, definition_id: str) -> str:
        self._called("process_definition_xml", definition_id=definition_id)
        if definition_id not in self.definitions:
            raise EngineRejected(404, "InvalidRequestException", f"No matching definition with id {definition_id}")
        return self.definitions[definition_id]

    def calling_activity(self, process_instance_id: str) -> tuple[str, str, str] | None:
        self._called("calling_activity", process_instance_id=process_instance_id)
        return self.callers.get(process_instance_id)

    def engine_name(self) -> str:
        self._called("engine_name")
        return "default"

    def close(self) -> None:
        """Ends pending long polls (they return no tasks), as a closed HTTP session would."""
        with self._cond:
            self.closed = True
            self._cond.notify_all()

    # -- inside ------------------------------------------------------------------------------------

    def _free(self, task: EngineTask) -> bool:
        now = self._clock()
        expired = task.lock_expires_at is None or task.lock_expires_at <= now
        return task.state == "open" and expired and task.free_at <= now

    def _lock(self, task: EngineTask, sub: Subscription) -> Task:
        variables = sub.variables
        task.worker_id = self.worker_id
        task.lock_expires_at = self._clock() + sub.lock_duration_ms / 1000
        return Task(id=task.id, topic=task.topic, worker_id=self.worker_id,
                    process_instance_id=task.process_instance_id, execution_id=task.process_instance_id,
                    activity_id=task.activity_id, activity_instance_id=f"{task.activity_id}:{task.id}",
                    process_definition_id=task.definition_id,
                    retries=task.retries,
                    variables={k: _as_fetched(v) for k, v in task.variables.items() if k in variables},
                    extension_properties=dict(task.properties), fetched_variables=frozenset(variables))

    def _existing(self, task_id: str) -> EngineTask:
        task = self.tasks.get(task_id)
        if task is None or task.state == "deleted":
            raise LockLost(f"task {task_id}: External task with id {task_id} does not exist")
        return task

    def _held(self, task_id: str, call: str) -> EngineTask:
        task = self._existing(task_id)
        if task.state == "open" and task.worker_id is None:
            raise LockExpired(f"task {task_id}: {call}: it is locked by worker 'null'")
        if task.state != "open" or task.worker_id != self.worker_id:
            raise LockLost(f"task {task_id}: {call}: it is locked by worker '{task.worker_id}'")
        return task

    def _locked_by(self, worker_id: str) -> list[tuple[str, float | None]]:
        with self._cond:
            now = self._clock()
            return [(t.id, t.lock_expires_at - now) for t in self.tasks.values()
                    if t.state == "open" and t.worker_id == worker_id and t.lock_expires_at is not None
                    and t.lock_expires_at > now]

    def _binary(self, variable_instance_id: str) -> bytes:
        with self._cond:
            for task in self.tasks.values():
                for name, v in task.variables.items():
                    if _instance_id(task.process_instance_id, name) == variable_instance_id:
                        return v.value if isinstance(v.value, bytes) else b""
        raise EngineRejected(404, "InvalidRequestException", f"variable instance {variable_instance_id} not found")

    def _release(self, task: EngineTask) -> None:
        task.worker_id = None
        task.lock_expires_at = None
        self._cond.notify_all()


def _instance_id(process_instance_id: str, name: str) -> str:
    return f"{process_instance_id}/{name}"


def _as_fetched(variable: Variable) -> Variable:
    """A variable as fetchAndLock sends it: Bytes as base64 text, a File without its content."""
    if variable.type in ("File", "file"):
        return replace(variable, value=None)
    if isinstance(variable.value, bytes):
        return replace(variable, value=base64.b64encode(variable.value).decode("ascii"))
    return variable


def _answer_bytes(tasks: list[Task]) -> int:
    """About what fetchAndLock's JSON answer for ``tasks`` takes (the values dominate)."""
    return sum(512 + sum(len(str(v.value)) + 64 for v in t.variables.values())
               + sum(len(k) + len(v) for k, v in t.extension_properties.items()) for t in tasks)


def _variable(value: Any) -> Variable:
    if isinstance(value, str):
        return Variable(value=value, type="String")
    if isinstance(value, bytes):
        return Variable(value=value, type="Bytes")
    return Variable(value=json.dumps(value), type="Json")
