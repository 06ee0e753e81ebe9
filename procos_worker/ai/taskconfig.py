"""A task's settings, resolved from its BPMN (``procos.*`` extension properties) and the defaults.

First found wins, per setting:

1. the service task's extension properties (``<camunda:property name="procos.model" .../>``);
2. the per-topic defaults ``TASK_TOPIC_DEFAULTS`` (the same property names and parsers);
3. the model's row in procos_ai_models (``config_data.options``), for options only;
4. the global settings (``OLLAMA_MODEL``, ``OLLAMA_OPTIONS``, ``OLLAMA_THINK``).

Options are merged key by key in that order (a task's ``{"temperature": 0}`` keeps the topic's
``num_predict``). Properties without the ``procos.`` prefix are not ours and are ignored; an empty
value means "not set" (Camunda Modeler writes empty fields). An unknown ``procos.*`` name or a bad
value is a modelling mistake: ``TaskConfigError`` (an incident) naming the activity and property.

Adding a property (``procos.memory``, ...): one parser in ``_PARSERS`` (it raises ``ValueError`` with
what is wrong) and one field of ``TaskConfig`` filled in ``_spec``. Properties that are checked
together (``procos.outputSchema`` with ``procos.outputVariables``) are combined in ``_spec`` after
merging, and each topic's defaults are combined once when the worker starts.

The parsed properties are cached by their text (per topic), so a task costs a dictionary lookup,
the registry's cached row and a merge of small dicts.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import re
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Literal

from procos_worker.ai.memory import NO_MEMORY, MemoryScope, parse_memory
from procos_worker.ai.registry import ModelRegistry
from procos_worker.ai.structured import (
    StructuredOutput,
    parse_output_schema,
    parse_output_variables,
    structured_output,
)
from procos_worker.ai.template import PromptTemplate, compile_template
from procos_worker.ai.window import OnOverflow, parse_on_overflow
from procos_worker.errors import ModelNotFound, ModelRefused, TaskConfigError
from procos_worker.models import Task
from procos_worker.settings import OLLAMA_OPTION_NAMES, Settings, TaskSettings, ThinkLevel, option_problem

__all__ = ["KNOWN_PROPERTIES", "PROPERTY_PREFIX", "ResultScope", "TaskConfig", "TaskConfigs", "parse_properties"]

PROPERTY_PREFIX = "procos."
ResultScope = Literal["process", "local"]

_PREFIX_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
# procos_ai_context.model_used is VARCHAR(100).
_MAX_MODEL_CHARS = 100


@dataclass(frozen=True, slots=True)
class TaskConfig:
    """Everything the pipeline needs to know about one task's step (immutable)."""

    activity: str
    model: str
    model_source: str = "OLLAMA_MODEL"
    """The layer that set ``model``: ``procos.model``, ``TASK_TOPIC_DEFAULTS topic 'x'`` or ``OLLAMA_MODEL``."""
    options: Mapping[str, Any] = field(default_factory=dict)
    prompt: PromptTemplate | None = None
    system_prompt: PromptTemplate | None = None
    result_prefix: str = "ai"
    result_scope: ResultScope = "process"
    think: bool | ThinkLevel | None = None  # Ollama's think; None: not sent
    output: StructuredOutput | None = None
    memory: MemoryScope = NO_MEMORY
    on_overflow: OnOverflow = "error"

    def variables_needed(self, settings: TaskSettings) -> frozenset[str]:
        """The process variables this task reads: its templates' names, or the default inputs (and the
        variable whose value keys its memory)."""
        user = self.prompt.names if self.prompt else {settings.query_variable, settings.context_variable}
        system = self.system_prompt.names if self.system_prompt else {settings.system_prompt_variable}
        memory = {self.memory.variable} if self.memory.variable else set()
        return frozenset(user | system | memory)

    def where(self, prop: str) -> str:
        """How errors name a property of this task."""
        return f"activity '{self.activity}', property {prop}"

    @contextmanager
    def naming_model_source(self) -> Iterator[None]:
        """A refused or missing model's incident says which layer set the model (the code that finds the
        model missing knows only its name), so the engineer fixes the right one."""
        try:
            yield
        except (ModelNotFound, ModelRefused) as exc:
            exc.message = f"{exc.message} (this task's model comes from {self.model_source})"
            raise


# -- one parser per property: raw value (text, or JSON for a topic default) -> parsed, or ValueError --

def _text(raw: Any) -> str:
    if not isinstance(raw, str):
        raise ValueError(f"must be text, got {type(raw).__name__}")
    return raw


def _model(raw: Any) -> str:
    name = _text(raw).strip()
    if len(name) > _MAX_MODEL_CHARS or any(ch.isspace() for ch in name):
        raise ValueError(f"{name[:120]!r} is not an Ollama model name (no spaces, at most {_MAX_MODEL_CHARS} chars)")
    return name


def _options(raw: Any) -> dict[str, Any]:
    value = raw
    if isinstance(raw, str):
        try:
            value = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise ValueError(f"is not valid JSON ({exc}); write a JSON object such as "
                             '{"temperature": 0.2, "num_predict": 256}') from exc
    if not isinstance(value, dict):
        raise ValueError(f"must be a JSON object of Ollama options, got {type(value).__name__}")
    return value


def _template(raw: Any) -> PromptTemplate:
    return compile_template(_text(raw))


def _result_prefix(raw: Any) -> str:
    prefix = _text(raw).strip()
    if not _PREFIX_NAME.match(prefix):
        raise ValueError(f"{prefix[:80]!r} is not a variable name prefix (a letter or _, then letters, digits "
                         "or _, at most 64 characters)")
    return prefix


def _result_scope(raw: Any) -> ResultScope:
    scope = _text(raw).strip()
    if scope == "process":
        return "process"
    if scope == "local":
        return "local"
    raise ValueError(f"must be 'process' or 'local', got {scope[:80]!r}")


_THINK_WORDS: dict[str, bool | ThinkLevel] = {"true": True, "false": False, "low": "low", "medium": "medium",
                                              "high": "high", "max": "max"}


def _think(raw: Any) -> bool | ThinkLevel:
    if isinstance(raw, bool):  # a topic default written as JSON true/false
        return raw
    word = _text(raw).strip().lower()
    if word not in _THINK_WORDS:
        raise ValueError(f"must be true, false, low, medium, high or max, got {word[:80]!r}")
    return _THINK_WORDS[word]


_PARSERS: dict[str, Callable[[Any], Any]] = {
    "procos.model": _model,
    "procos.options": _options,
    "procos.prompt": _template,
    "procos.systemPrompt": _template,
    "procos.resultPrefix": _result_prefix,
    "procos.resultScope": _result_scope,
    # Ollama's think for reasoning models; the thinking text is stored apart from the answer.
    "procos.think": _think,
    "procos.outputSchema": parse_output_schema,
    "procos.outputVariables": parse_output_variables,
    "procos.memory": parse_memory,
    "procos.onOverflow": parse_on_overflow,
    # Free text for the people reading the model (the element template's "Description"); not used.
    "procos.description": _text,
}


KNOWN_PROPERTIES = frozenset(_PARSERS)


def parse_properties(properties: Mapping[str, Any], where: str, *,
                     option_names: frozenset[str] = OLLAMA_OPTION_NAMES) -> dict[str, Any]:
    """Parse the ``procos.*`` entries of ``properties``; ``TaskConfigError`` naming ``where`` and the
    property for an unknown name or a bad value (``procos.options`` naming an option outside
    ``option_names``: ``OllamaSettings.option_names``)."""
    parsed: dict[str, Any] = {}
    for name, raw in properties.items():
        if not name.startswith(PROPERTY_PREFIX) or raw is None or raw == "":
            continue
        parser = _PARSERS.get(name)
        if parser is None:
            raise TaskConfigError(f"{where}: unknown property {name}; {_hint(name, option_names)}known: "
                                  f"{', '.join(sorted(_PARSERS))}")
        try:
            parsed[name] = parser(raw)
        except ValueError as exc:
            raise TaskConfigError(f"{where}, property {name}: {exc}") from exc
    problem = option_problem(parsed.get("procos.options", {}), option_names)
    if problem:
        raise TaskConfigError(f"{where}, property procos.options: {problem}")
    return parsed


def _hint(name: str, option_names: frozenset[str]) -> str:
    """A property this unknown name may have meant, or the Ollama option it looks like."""
    # Compared without the shared prefix, which would make any name look close to any other.
    bare = name.removeprefix(PROPERTY_PREFIX)
    close = difflib.get_close_matches(bare, [known.removeprefix(PROPERTY_PREFIX) for known in _PARSERS], n=1)
    if close:
        return f"did you mean {PROPERTY_PREFIX}{close[0]}? "
    option = difflib.get_close_matches(bare, option_names, n=1)
    if option:
        return f'Ollama options go in procos.options, e.g. {{"{option[0]}": ...}}; '
    return ""


class TaskConfigs:
    """Resolves the ``TaskConfig`` of each task (thread-safe; shared by the poll loop and task threads)."""

    def __init__(self, settings: Settings, registry: ModelRegistry) -> None:
        """Raises ``TaskConfigError`` when ``TASK_TOPIC_DEFAULTS`` holds a bad property."""
        self._settings = settings
        self._registry = registry
        self._topics = {
            topic: parse_properties(values, f"TASK_TOPIC_DEFAULTS topic '{topic}'",
                                    option_names=settings.ollama.option_names)
            for topic, values in settings.task.topic_defaults.items()
        }
        for topic, parsed in self._topics.items():
            if "procos.outputSchema" in parsed:  # names alone may be meant for tasks that bring the schema
                _output(parsed, f"TASK_TOPIC_DEFAULTS topic '{topic}'")
        self._spec = lru_cache(maxsize=1024)(self._build_spec)

    @property
    def registry(self) -> ModelRegistry:
        return self._registry

    def resolve(self, task: Task) -> TaskConfig:
        """The task's settings; ``TaskConfigError`` / ``ModelRefused`` (incidents), ``StoreUnavailable``
        when the registry must be read and PostgreSQL can't be reached."""
        spec = self._spec_of(task)
        with spec.naming_model_source():
            defaults = self._registry.options_for(spec.model)
        options = {**self._settings.ollama.options, **defaults, **spec.options}
        return dataclasses.replace(spec, options=options)

    def variables_needed(self, task: Task) -> frozenset[str]:
        """The variables the task reads (no database access); ``TaskConfigError`` like ``resolve``."""
        return self._spec_of(task).variables_needed(self._settings.task)

    def topic_variables(self, topic: str) -> frozenset[str]:
        """The variables a task of ``topic`` reads when it sets no property of its own."""
        return self.topic_config(topic).variables_needed(self._settings.task)

    def topic_config(self, topic: str) -> TaskConfig:
        """The settings of a task of ``topic`` that sets no property of its own, without the registry."""
        return self._spec(topic, f"topic '{topic}'", ())

    def _spec_of(self, task: Task) -> TaskConfig:
        ours = tuple(sorted((k, v) for k, v in task.extension_properties.items() if k.startswith(PROPERTY_PREFIX)))
        return self._spec(task.topic, _activity(task), ours)

    def _build_spec(self, topic: str, activity: str, properties: tuple[tuple[str, str], ...]) -> TaskConfig:
        """The task's own properties over its topic's defaults (options merged), without the registry."""
        own = parse_properties(dict(properties), f"activity '{activity}'",
                               option_names=self._settings.ollama.option_names)
        topic_defaults = self._topics.get(topic, {})
        merged = {**topic_defaults, **own}
        return TaskConfig(
            activity=activity,
            model=merged.get("procos.model", self._settings.ollama.model),
            model_source=("procos.model" if "procos.model" in own else
                          f"TASK_TOPIC_DEFAULTS topic '{topic}'" if "procos.model" in topic_defaults else
                          "OLLAMA_MODEL"),
            options={**topic_defaults.get("procos.options", {}), **own.get("procos.options", {})},
            prompt=merged.get("procos.prompt"),
            system_prompt=merged.get("procos.systemPrompt"),
            result_prefix=merged.get("procos.resultPrefix", "ai"),
            result_scope=merged.get("procos.resultScope", "process"),
            think=merged.get("procos.think", self._settings.ollama.think),
            output=_output(merged, f"activity '{activity}'"),
            memory=merged.get("procos.memory", NO_MEMORY),
            on_overflow=merged.get("procos.onOverflow", "error"),
        )


def _output(properties: Mapping[str, Any], where: str) -> StructuredOutput | None:
    """``procos.outputSchema`` with the ``procos.outputVariables`` it exposes (both parsed)."""
    schema = properties.get("procos.outputSchema")
    names = properties.get("procos.outputVariables")
    if schema is None:
        if names is not None:
            raise TaskConfigError(f"{where}, property procos.outputVariables: names answer properties, but "
                                  "there is no procos.outputSchema")
        return None
    try:
        return structured_output(schema, names)
    except ValueError as exc:
        prop = "procos.outputSchema" if names is None else "procos.outputVariables"
        raise TaskConfigError(f"{where}, property {prop}: {exc}") from exc


def _activity(task: Task) -> str:
    return task.activity_id or "?"
