"""Read and validate a task's inputs from its Camunda variables (poll -> **task inputs** -> LLM)."""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

from procos_worker.errors import InputError
from procos_worker.models import Task, TaskInputs, Variable
from procos_worker.settings import TaskSettings

__all__ = ["parse_inputs", "requested_variables"]

_TEXT_TYPES = {"String", "string"}
_JSON_TYPES = {"Json", "json"}
_BYTES_TYPES = {"Bytes", "bytes"}


def requested_variables(settings: TaskSettings) -> list[str]:
    """The only variables fetchAndLock asks for: a process with thousands of variables costs nothing."""
    return [settings.query_variable, settings.context_variable, settings.system_prompt_variable]


def parse_inputs(task: Task, settings: TaskSettings) -> TaskInputs:
    """Validate the task's variables; raise ``InputError`` with a message a modeller can act on."""
    query = _required_text(task, settings.query_variable)
    context = _optional_context(task, settings.context_variable)
    system_prompt = _optional_text(task, settings.system_prompt_variable)
    total = len(query) + len(system_prompt or "") + _length(context)
    if total > settings.max_input_chars:
        raise InputError(
            f"inputs are {total:,} characters; the limit is {settings.max_input_chars:,} (TASK_MAX_INPUT_CHARS)"
        )
    return TaskInputs(query=query, context=context, system_prompt=system_prompt)


def _required_text(task: Task, name: str) -> str:
    variable = task.variables.get(name)
    if variable is None or variable.value is None:
        raise InputError(f"variable '{name}' is missing; set it to the question for the model")
    text = _as_text(variable, name)
    if not text.strip():
        raise InputError(f"variable '{name}' is empty; set it to the question for the model")
    return text


def _optional_text(task: Task, name: str) -> str | None:
    variable = task.variables.get(name)
    if variable is None or variable.value is None:
        return None
    return _as_text(variable, name) or None


def _as_text(variable: Variable, name: str) -> str:
    """Text from a String variable, or (for text over Camunda's 4000-char String limit) from a Json
    variable holding a JSON string, or a Bytes variable holding UTF-8."""
    if variable.type in _TEXT_TYPES and isinstance(variable.value, str):
        return variable.value
    if variable.type in _JSON_TYPES and isinstance(variable.value, str):
        parsed = _parse_json(variable.value, name)
        if isinstance(parsed, str):
            return parsed
    if variable.type in _BYTES_TYPES and isinstance(variable.value, bytes | str):
        try:
            # bytes as engine.variables downloads them; base64 text as fetchAndLock would carry them.
            raw = variable.value if isinstance(variable.value, bytes) else base64.b64decode(variable.value,
                                                                                              validate=True)
            return raw.decode("utf-8")
        except (binascii.Error, UnicodeDecodeError) as exc:
            raise InputError(f"variable '{name}' is a Bytes variable that is not UTF-8 text: {exc}") from exc
    raise InputError(
        f"variable '{name}' must be text (a String, a Json string or UTF-8 Bytes), "
        f"got {variable.type} ({type(variable.value).__name__})"
    )


def _parse_json(value: str, name: str) -> Any:
    try:
        return json.loads(value)
    except json.JSONDecodeError as exc:
        raise InputError(f"variable '{name}' is a Json variable that does not parse: {exc}") from exc


def _optional_context(task: Task, name: str) -> str | dict[str, Any] | list[Any] | None:
    variable = task.variables.get(name)
    if variable is None or variable.value is None:
        return None
    if variable.type in _JSON_TYPES:
        parsed = _parse_json(variable.value, name) if isinstance(variable.value, str) else variable.value
        if not isinstance(parsed, dict | list | str):
            raise InputError(f"variable '{name}' must be a JSON object, array or string")
        return parsed
    text = _as_text(variable, name)
    return text or None


def _length(context: str | dict[str, Any] | list[Any] | None) -> int:
    if context is None:
        return 0
    if isinstance(context, str):
        return len(context)
    return len(json.dumps(context, ensure_ascii=False))
