"""Conversation memory (``procos.memory``): which earlier turns a task may be given, and how they are
rebuilt as chat messages.

A *turn* is an earlier task's final question and answer: the user message its model saw (the input
row's ``content_text``) and the answer (its output row). A task with several stored attempts (a retry
after a changed input, a repaired structured answer) counts once, with its latest answer.

- ``none`` (default): no earlier turns.
- ``process``: the turns of this process instance, any activity, in the order they were answered.
- ``variable:NAME``: the turns stored under the same key, ``NAME=<value of NAME>``, by any task with
  ``procos.memory=variable:NAME`` in any process instance, so a conversation about one customer or case
  continues across processes. The key is written on the rows of such tasks (``memory_key``).

Which of them are sent is the budget's choice (``ai.window``): the newest that fit, never part of one.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

from procos_worker.errors import InputError
from procos_worker.models import Task, Turn

__all__ = [
    "MEMORY_KEY_MAX_CHARS",
    "NO_MEMORY",
    "MemoryScope",
    "memory_key",
    "parse_memory",
    "turn_messages",
]

# procos_ai_context.memory_key is VARCHAR(255); a longer key is stored as NAME=sha256:<hex>.
MEMORY_KEY_MAX_CHARS = 255
# Camunda variable names are free text; these are the ones a BPMN author can reasonably mean.
_VARIABLE_NAME = re.compile(r"^[A-Za-z_$][\w$.-]{0,199}$")
_KEY_TYPES = {"String", "string", "Long", "long", "Integer", "integer", "Short", "short", "Double", "double",
              "Boolean", "boolean"}


@dataclass(frozen=True, slots=True)
class MemoryScope:
    """What ``procos.memory`` says: ``none``, ``process`` or ``variable:NAME``."""

    kind: Literal["none", "process", "variable"] = "none"
    variable: str | None = None

    @property
    def enabled(self) -> bool:
        return self.kind != "none"

    def __str__(self) -> str:
        return f"variable:{self.variable}" if self.kind == "variable" else self.kind


NO_MEMORY = MemoryScope()


def parse_memory(raw: Any) -> MemoryScope:
    """The parser of ``procos.memory`` (``ValueError`` says what is wrong)."""
    if not isinstance(raw, str):
        raise ValueError(f"must be text, got {type(raw).__name__}")
    value = raw.strip()
    if value == "none":
        return NO_MEMORY
    if value == "process":
        return MemoryScope("process")
    if value.startswith("variable:"):
        name = value.removeprefix("variable:").strip()
        if not _VARIABLE_NAME.match(name):
            raise ValueError(f"variable:NAME needs a process variable name, got {name[:80]!r}")
        return MemoryScope("variable", name)
    raise ValueError(f"must be 'none', 'process' or 'variable:NAME', got {value[:80]!r}")


def memory_key(task: Task, scope: MemoryScope) -> str | None:
    """The key a ``variable:NAME`` task's turns are stored and found under: ``NAME=<value>`` (prefixed with
    the tenant id when the task has one); None for the other scopes. ``InputError`` when the variable is
    missing or not a plain value."""
    if scope.kind != "variable" or scope.variable is None:
        return None
    name = scope.variable
    variable = task.variables.get(name)
    if variable is None or variable.value is None:
        raise InputError(f"variable '{name}' is missing; procos.memory=variable:{name} continues the "
                         f"conversation of every process instance with the same value of '{name}'")
    if variable.type not in _KEY_TYPES or isinstance(variable.value, dict | list):
        raise InputError(f"variable '{name}' (procos.memory) has type {variable.type}; the memory key must be a "
                         "String, a number or a Boolean")
    value = variable.value
    text = ("true" if value else "false") if isinstance(value, bool) else str(value)
    key = f"{task.tenant_id}/{name}={text}" if task.tenant_id else f"{name}={text}"
    if len(key) > MEMORY_KEY_MAX_CHARS:
        digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()
        key = f"{key.split('=', 1)[0]}=sha256:{digest}"
    return key


def turn_messages(turns: Iterable[Turn]) -> list[dict[str, str]]:
    """The turns (oldest first) as chat messages: each question as ``user``, its answer as ``assistant``."""
    messages: list[dict[str, str]] = []
    for turn in turns:
        messages.append({"role": "user", "content": turn.question})
        messages.append({"role": "assistant", "content": turn.answer})
    return messages
