"""Read and validate a task's inputs from its Camunda variables (poll -> **task inputs** -> LLM).

Without templates the inputs are the ``query``, ``context`` and ``system_prompt`` variables. A task
with ``procos.prompt`` / ``procos.systemPrompt`` gets its text from the template rendered over the
variables it names, as a Camunda input mapping would see them: each name resolved from the task's
execution (local before process), and only the names it needs are read (``engine.variables``, sizes
first; fetchAndLock itself carries no variable values).
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

from procos_worker.ai.taskconfig import TaskConfig
from procos_worker.ai.template import PromptTemplate
from procos_worker.errors import InputError
from procos_worker.models import Task, TaskInputs, Variable
from procos_worker.settings import TaskSettings

__all__ = ["build_inputs", "parse_inputs", "requested_variables"]

_TEXT_TYPES = {"String", "string"}
_JSON_TYPES = {"Json", "json"}
_BYTES_TYPES = {"Bytes", "bytes"}
_PLAIN_TYPES = {"Boolean", "boolean", "Long", "long", "Integer", "integer", "Short", "short", "Double", "double",
                "Date", "date"}


def requested_variables(settings: TaskSettings) -> list[str]:
    """The only variables fetchAndLock asks for: a process with thousands of variables costs nothing."""
    return [settings.query_variable, settings.context_variable, settings.system_prompt_variable]


def build_inputs(task: Task, config: TaskConfig, settings: TaskSettings) -> TaskInputs:
    """The task's inputs: its templates rendered, or its input variables; ``InputError`` if unusable."""
    if config.prompt is None and config.system_prompt is None:
        return parse_inputs(task, settings)
    templates: dict[str, str] = {}
    values: dict[str, Any] = {}
    context: str | dict[str, Any] | list[Any] | None = None
    if config.prompt is not None:
        query = _render(task, config.prompt, config.where("procos.prompt"), values)
        templates["procos.prompt"] = config.prompt.source
        if not query.strip():
            raise InputError(f"{config.where('procos.prompt')}: the template rendered to empty text")
    else:
        query = _required_text(task, settings.query_variable)
        context = _optional_context(task, settings.context_variable)
    system_prompt: str | None
    if config.system_prompt is not None:
        rendered = _render(task, config.system_prompt, config.where("procos.systemPrompt"), values)
        system_prompt = rendered if rendered.strip() else None
        templates["procos.systemPrompt"] = config.system_prompt.source
    else:
        system_prompt = _optional_text(task, settings.system_prompt_variable)
    _check_total(len(query) + len(system_prompt or "") + _length(context), settings)
    return TaskInputs(query=query, context=context, system_prompt=system_prompt,
                      templates=templates, template_variables=values)


def _render(task: Task, template: PromptTemplate, where: str, used: dict[str, Any]) -> str:
    """Render over the variables the template names (a null variable counts as missing); the values
    go into ``used`` (stored with the input row)."""
    values = {name: _template_value(task.variables[name], name)
              for name in template.names if name in task.variables and task.variables[name].value is not None}
    used.update(values)
    return template.render(values, where=where)


def _template_value(variable: Variable, name: str) -> Any:
    """A variable as a template sees it: text, parsed JSON, a number, a boolean."""
    if variable.type in _JSON_TYPES:
        return _parse_json(variable.value, name) if isinstance(variable.value, str) else variable.value
    if variable.type in _PLAIN_TYPES:
        return variable.value
    if variable.type in _TEXT_TYPES | _BYTES_TYPES:
        return _as_text(variable, name)
    raise InputError(f"variable '{name}' has type {variable.type}; a template reads String, Json, Bytes "
                     "(UTF-8), Boolean, numbers and Date")


def parse_inputs(task: Task, settings: TaskSettings) -> TaskInputs:
    """Validate the task's variables; raise ``InputError`` with a message a modeller can act on."""
    query = _required_text(task, settings.query_variable)
    context = _optional_context(task, settings.context_variable)
    system_prompt = _optional_text(task, settings.system_prompt_variable)
    _check_total(len(query) + len(system_prompt or "") + _length(context), settings)
    return TaskInputs(query=query, context=context, system_prompt=system_prompt)


def _check_total(total: int, settings: TaskSettings) -> None:
    if total > settings.max_input_chars:
        raise InputError(
            f"inputs are {total:,} characters; the limit is {settings.max_input_chars:,} (TASK_MAX_INPUT_CHARS)"
        )


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
