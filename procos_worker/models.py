"""Immutable data that flows through the worker: task -> inputs -> LLM result -> stored row -> outcome."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from uuid import UUID

__all__ = [
    "FLAG_NAMES",
    "RESERVED_FLAG_NAMES",
    "BpmnError",
    "Complete",
    "Failure",
    "LlmResult",
    "ModelFacts",
    "ModelRow",
    "Outcome",
    "StoredContext",
    "StoredOutput",
    "Task",
    "TaskInputs",
    "Turn",
    "TurnSize",
    "TypedValue",
    "Variable",
]

FLAG_NAMES: tuple[str, ...] = ("context_id", "response_stored", "response_length", "model", "provider",
                               "prompt_tokens", "completion_tokens", "total_tokens", "done_reason")
"""The variables every answered task gets, after its result prefix (``flags.build_flags``)."""
RESERVED_FLAG_NAMES: tuple[str, ...] = (*FLAG_NAMES, "prompt_truncated")
"""No answer property may take one of these names (``ai.structured``): the flags, and ``prompt_truncated``,
which only tasks with ``procos.onOverflow=truncate`` get."""


@dataclass(frozen=True, slots=True)
class Variable:
    """One Camunda variable as the REST API returns it (serialized: a Json variable's value is its JSON
    text). A Bytes variable read by ``engine.variables`` holds ``bytes``; ``instance_id`` is the variable
    instance it was read from."""

    value: Any
    type: str = "String"
    value_info: Mapping[str, Any] = field(default_factory=dict)
    instance_id: str | None = None


@dataclass(frozen=True, slots=True)
class TypedValue:
    """A variable to send with its Camunda type (``Boolean``, ``Long``, ``Double``, ``String``, ``Json``,
    ``Null``), where the type the engine would infer from the bare JSON value is not the one wanted (a
    JSON integer becomes an Integer, not a Long). ``source`` says where the value came from, for the
    message when it can't be sent."""

    value: Any
    type: str
    source: str = ""


@dataclass(frozen=True, slots=True)
class Task:
    """An external task fetched and locked by this worker."""

    id: str
    topic: str
    worker_id: str
    process_instance_id: str
    execution_id: str | None = None
    activity_id: str | None = None
    activity_instance_id: str | None = None
    process_definition_key: str | None = None
    process_definition_id: str | None = None
    tenant_id: str | None = None
    business_key: str | None = None
    retries: int | None = None
    variables: Mapping[str, Variable] = field(default_factory=dict)
    extension_properties: Mapping[str, str] = field(default_factory=dict)
    fetched_variables: frozenset[str] = frozenset()
    """The names fetchAndLock was asked to bring with their values: one of them missing from
    ``variables`` does not exist in the task's scope (``engine.variables`` reads the others itself)."""

    @classmethod
    def from_rest(cls, data: Mapping[str, Any], fetched_variables: frozenset[str] = frozenset()) -> Task:
        """Build from one element of ``fetchAndLock``'s answer (asked for ``fetched_variables``)."""
        variables = {
            name: Variable(value=v.get("value"), type=v.get("type") or "String", value_info=v.get("valueInfo") or {})
            for name, v in (data.get("variables") or {}).items()
        }
        return cls(
            id=str(data["id"]),
            topic=str(data.get("topicName") or ""),
            worker_id=str(data.get("workerId") or ""),
            process_instance_id=str(data.get("processInstanceId") or ""),
            execution_id=data.get("executionId"),
            activity_id=data.get("activityId"),
            activity_instance_id=data.get("activityInstanceId"),
            process_definition_key=data.get("processDefinitionKey"),
            process_definition_id=data.get("processDefinitionId"),
            tenant_id=data.get("tenantId"),
            business_key=data.get("businessKey"),
            retries=data.get("retries"),
            variables=variables,
            extension_properties=dict(data.get("extensionProperties") or {}),
            fetched_variables=fetched_variables,
        )


@dataclass(frozen=True, slots=True)
class TaskInputs:
    """The validated inputs of one task. ``context`` keeps its JSON shape when it came as Json.

    A task with a ``procos.prompt`` template has ``query`` = the rendered prompt (and no context);
    ``templates`` then holds each template's text by property name, and ``template_variables`` the
    values the templates were rendered with (both stored with the input row).
    """

    query: str
    context: str | dict[str, Any] | list[Any] | None = None
    system_prompt: str | None = None
    templates: Mapping[str, str] = field(default_factory=dict)
    template_variables: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class LlmResult:
    """What Ollama answered, with its own timings (nanoseconds) and token counts. ``thinking``: a reasoning
    model's thinking text (asked with ``think``), kept apart from the answer in ``content``."""

    content: str
    model: str
    done_reason: str | None
    prompt_eval_count: int
    eval_count: int
    total_duration_ns: int
    load_duration_ns: int
    prompt_eval_duration_ns: int
    eval_duration_ns: int
    wall_s: float
    thinking: str = ""


@dataclass(frozen=True, slots=True)
class ModelRow:
    """One row of procos_ai_models, as the model registry reads it."""

    name: str
    provider: str
    version: str | None
    active: bool
    config_data: Mapping[str, Any]
    # performance_stats.chars_per_token_prompt: characters of the messages per prompt token, measured.
    chars_per_token: float | None = None


@dataclass(frozen=True, slots=True)
class ModelFacts:
    """What Ollama's ``/api/show`` says about a model's context window."""

    num_ctx: int | None  # the Modelfile's ``PARAMETER num_ctx``, if it sets one
    trained_ctx: int | None  # ``<architecture>.context_length``: Ollama caps num_ctx at it


@dataclass(frozen=True, slots=True)
class TurnSize:
    """An earlier turn (a task's final question and answer) as the budget sees it: its sizes and the figures
    of the request it came from, read without its texts."""

    id: UUID  # the output row (the answer)
    input_id: UUID  # the input row (the question: its user message)
    question_chars: int
    question_bytes: int
    answer_chars: int
    answer_bytes: int
    model: str | None = None
    prompt_chars: int | None = None  # characters of every message of that request
    prompt_tokens: int | None = None  # Ollama's prompt_eval_count for them
    prompt_messages: int | None = None  # how many messages that request had


@dataclass(frozen=True, slots=True)
class Turn:
    """An earlier turn with its texts: the user message the model saw and the answer it gave."""

    id: UUID  # the output row
    input_id: UUID
    question: str
    answer: str
    process_instance_id: str
    task_id: str | None
    activity_id: str | None
    memory_key: str | None
    model: str | None
    created_at: datetime


@dataclass(frozen=True, slots=True)
class StoredOutput:
    """The committed output row a completion points at (and everything its flags need)."""

    id: UUID
    response_length: int
    model: str
    provider: str
    prompt_tokens: int
    completion_tokens: int
    done_reason: str | None
    prompt_truncated: bool = False  # procos.onOverflow=truncate cut the context of the prompt it answered


@dataclass(frozen=True, slots=True)
class StoredContext:
    """One row of procos_ai_context as the read API returns it (text decoded back losslessly)."""

    id: UUID
    process_instance_id: str
    task_id: str | None
    activity_id: str | None
    process_definition_key: str | None
    activity_instance_id: str | None
    context_type: str
    content_text: str | None
    content_data: Mapping[str, Any]
    ai_provider: str | None
    model_used: str | None
    token_usage: Mapping[str, Any] | None
    created_at: datetime


@dataclass(frozen=True, slots=True)
class Complete:
    """Complete the task with these (small) variables, pointing at the committed output row.
    ``local_variables`` go to the task's own scope (``procos.resultScope=local``)."""

    variables: Mapping[str, Any]
    context_id: UUID
    local_variables: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Failure:
    """Report a failure; ``retries == 0`` creates an incident."""

    message: str
    details: str
    retries: int
    retry_timeout_ms: int


@dataclass(frozen=True, slots=True)
class BpmnError:
    """Throw a BPMN error the process model can catch."""

    code: str
    message: str
    variables: Mapping[str, Any] = field(default_factory=dict)


Outcome = Complete | Failure | BpmnError
