"""A task's input variables, sizes first (fetchAndLock -> **variables** -> inputs).

fetchAndLock brings the values of the variables a topic's tasks read, but only while its whole answer
stays under ``WORKER_FETCH_VALUES_MAX_BYTES`` per task (``EngineClient.fetch_and_lock`` stops reading
a bigger one, and the worker fetches without values for a while): a Bytes variable comes inline as
base64 there, so a 300 MB one must never be downloaded before anyone could look at its size. A name the
fetch brought is used as it came (a Bytes value decoded); the others, and a File (whose content never
comes inline), are read per task:

1. ``measure``: one variable-instance query for those names (serialized values, Bytes values left out
   by the engine; the answer is read only up to what the limit allows), the instance visible from the
   task's execution picked per name (local, then enclosing scopes, then the process instance, as
   fetchAndLock would), and for a Bytes variable its length (counted as it streams by, up to the limit,
   never kept: the engine sends no Content-Length for large values). Over TASK_MAX_INPUT_CHARS together
   -> ``InputError`` (BPMN error), nothing held.
2. ``load``: the Bytes values downloaded (each capped at the limit) into the task, once the task has its
   share of the memory budget (``budget``).

Lengths count the stored form: a String's characters, a Json variable's JSON text, a Bytes variable's
bytes (UTF-8 text never has more characters than bytes, so the check never lets too much through).
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from procos_worker.engine.api import EngineApi
from procos_worker.errors import InputError
from procos_worker.models import Task, Variable
from procos_worker.settings import TaskSettings

__all__ = ["SizedTask", "VariableLoader"]

_BINARY_TYPES = frozenset({"Bytes", "bytes", "File", "file"})
# The JSON answer of the variable query: a character takes at most 6 bytes there (a \\uXXXX escape), plus
# the fields around the values.
_JSON_BYTES_PER_CHAR = 6
_ANSWER_OVERHEAD_BYTES = 1 << 20


@dataclass(frozen=True, slots=True)
class SizedTask:
    """A task with its input variables' metadata (Bytes values not yet downloaded) and their total length."""

    task: Task
    chars: int


class VariableLoader:
    """Reads the input variables of one task at a time (called from the task's own thread)."""

    def __init__(self, engine: EngineApi, settings: TaskSettings) -> None:
        self._engine = engine
        self._limit = settings.max_input_chars

    def measure(self, task: Task, names: list[str]) -> SizedTask:
        """Metadata and lengths of the task's variables ``names`` (its inputs, or what its templates read);
        ``InputError`` when they are over the limit together."""
        visible = {name: _decoded(name, v) for name, v in task.variables.items()
                   if name in names and name in task.fetched_variables and _came_whole(v)}
        unread = [name for name in names if name not in visible
                  and (name not in task.fetched_variables or name in task.variables)]
        if unread:
            rows = self._engine.variable_instances(
                task.process_instance_id, unread, max_bytes=_JSON_BYTES_PER_CHAR * self._limit + _ANSWER_OVERHEAD_BYTES)
            if rows is None:
                raise InputError(f"the inputs are over {self._limit:,} characters (TASK_MAX_INPUT_CHARS): "
                                 "their values were not read")
            visible.update(self._visible(task, rows))
        sizes = {name: self._length(v) for name, v in visible.items()}
        total = sum(sizes.values())
        if total > self._limit:
            each = ", ".join(f"'{name}' {size:,}" for name, size in sizes.items())
            raise InputError(f"inputs are {total:,} characters ({each}); the limit is {self._limit:,} "
                             "(TASK_MAX_INPUT_CHARS)")
        return SizedTask(task=replace(task, variables=visible), chars=total)

    def load(self, sized: SizedTask) -> Task:
        """The task with its Bytes values downloaded (``bytes``)."""
        variables = dict(sized.task.variables)
        for name, variable in variables.items():
            if variable.type in _BINARY_TYPES and variable.value is None and variable.instance_id is not None:
                data = self._engine.binary_value(variable.instance_id, max_bytes=self._limit)
                if data is None:
                    raise InputError(f"variable '{name}' grew over {self._limit:,} bytes (TASK_MAX_INPUT_CHARS) "
                                     "while the task waited")
                variables[name] = replace(variable, value=data)
        return replace(sized.task, variables=variables)

    def _length(self, variable: Variable) -> int:
        if isinstance(variable.value, bytes):
            return len(variable.value)
        if variable.type in _BINARY_TYPES:
            return self._engine.binary_length(variable.instance_id, up_to=self._limit) if variable.instance_id else 0
        if isinstance(variable.value, str):
            return len(variable.value)
        return 0 if variable.value is None else len(str(variable.value))

    def _visible(self, task: Task, rows: list[dict[str, Any]]) -> dict[str, Variable]:
        """Per name, the instance the task's execution sees: the nearest scope wins (as fetchAndLock)."""
        by_name: dict[str, list[Mapping[str, Any]]] = {}
        for row in rows:
            if row.get("taskId") or row.get("caseExecutionId"):
                continue  # a user task's local variable, or a case: not in the execution's scope chain
            by_name.setdefault(str(row["name"]), []).append(row)
        ancestry: list[str] | None = None
        visible: dict[str, Variable] = {}
        for name, candidates in by_name.items():
            chosen = _obvious(task, candidates)
            if chosen is None:
                if ancestry is None:
                    ancestry = (self._engine.activity_instance_ancestry(task.process_instance_id,
                                                                        task.activity_instance_id)
                                if task.activity_instance_id else [task.process_instance_id])
                chosen = _nearest(ancestry, candidates)
            if chosen is not None:
                visible[name] = Variable(value=chosen.get("value"), type=str(chosen.get("type") or "String"),
                                         value_info=chosen.get("valueInfo") or {}, instance_id=str(chosen["id"]))
        return visible


def _came_whole(variable: Variable) -> bool:
    """A File's content never comes with fetchAndLock (only its name and type): it is read like a variable
    the fetch did not bring."""
    return not (variable.type in _BINARY_TYPES and variable.value is None)


def _decoded(name: str, variable: Variable) -> Variable:
    """A Bytes value as fetchAndLock sends it (base64) -> ``bytes``, as ``load`` would have read it."""
    if variable.type not in _BINARY_TYPES or not isinstance(variable.value, str):
        return variable
    try:
        return replace(variable, value=base64.b64decode(variable.value, validate=True))
    except binascii.Error as exc:
        raise InputError(f"variable '{name}' ({variable.type}) came as invalid base64: {exc}") from exc


def _obvious(task: Task, candidates: list[Mapping[str, Any]]) -> Mapping[str, Any] | None:
    """The common cases without asking the engine for the scope tree: a variable local to the task's own
    execution, or the only instance, held by the process instance itself."""
    for row in candidates:
        if task.execution_id is not None and row.get("executionId") == task.execution_id:
            return row
    if len(candidates) == 1 and candidates[0].get("activityInstanceId") == task.process_instance_id:
        return candidates[0]
    return None


def _nearest(ancestry: list[str], candidates: list[Mapping[str, Any]]) -> Mapping[str, Any] | None:
    rank = {activity_instance: depth for depth, activity_instance in enumerate(ancestry)}
    in_scope = [row for row in candidates if row.get("activityInstanceId") in rank]
    return min(in_scope, key=lambda row: rank[str(row["activityInstanceId"])], default=None)
