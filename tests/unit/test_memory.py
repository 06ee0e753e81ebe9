"""procos.memory and procos.onOverflow: parsing (bad values are incidents naming activity and property),
the memory key of variable:NAME, the variables a task then needs, turns rebuilt as messages."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import pytest

from procos_worker.ai.memory import NO_MEMORY, MemoryScope, memory_key, turn_messages
from procos_worker.ai.registry import ModelRegistry
from procos_worker.ai.taskconfig import KNOWN_PROPERTIES, TaskConfigs
from procos_worker.errors import InputError, TaskConfigError
from procos_worker.models import Task, Turn, Variable
from procos_worker.settings import RegistrySettings, Settings, TaskSettings


def _configs(topic_defaults: dict[str, Any] | None = None) -> TaskConfigs:
    settings = Settings(task=TaskSettings(topic_defaults=topic_defaults or {}))
    return TaskConfigs(settings, ModelRegistry(RegistrySettings(), lambda: []))


def _task(variables: dict[str, Variable] | None = None, tenant: str | None = None, **properties: str) -> Task:
    return Task(id="t", topic="ai-query", worker_id="w", process_instance_id="p", activity_id="chat",
                tenant_id=tenant, variables=variables or {}, extension_properties=properties)


def test_both_properties_are_known_and_default_to_todays_behaviour() -> None:
    assert {"procos.memory", "procos.onOverflow"} <= KNOWN_PROPERTIES
    config = _configs().resolve(_task())
    assert (config.memory, config.on_overflow) == (NO_MEMORY, "error")


@pytest.mark.parametrize(("value", "scope", "text"), [
    ("none", MemoryScope("none"), "none"),
    ("process", MemoryScope("process"), "process"),
    ("variable:customerId", MemoryScope("variable", "customerId"), "variable:customerId"),
    (" variable: case.id ", MemoryScope("variable", "case.id"), "variable:case.id"),
])
def test_memory_scopes(value: str, scope: MemoryScope, text: str) -> None:
    config = _configs().resolve(_task(**{"procos.memory": value}))
    assert config.memory == scope and str(config.memory) == text


@pytest.mark.parametrize(("properties", "problem"), [
    ({"procos.memory": "instance"},
     "property procos.memory: must be 'none', 'process' or 'variable:NAME', got 'instance'"),
    ({"procos.memory": "variable:"}, "property procos.memory: variable:NAME needs a process variable name, got ''"),
    ({"procos.memory": "variable:two words"}, "variable:NAME needs a process variable name, got 'two words'"),
    ({"procos.onOverflow": "cut"}, "property procos.onOverflow: must be 'error' or 'truncate', got 'cut'"),
    ({"procos.onoverflow": "truncate"}, "unknown property procos.onoverflow; did you mean procos.onOverflow?"),
])
def test_a_bad_value_is_an_incident_naming_activity_and_property(properties: dict[str, str], problem: str) -> None:
    with pytest.raises(TaskConfigError) as info:
        _configs().resolve(_task(**properties))
    assert info.value.message.startswith("activity 'chat'") and problem in info.value.message


def test_topic_defaults_take_both_properties() -> None:
    configs = _configs({"ai-query": {"procos.memory": "process", "procos.onOverflow": "truncate"}})
    config = configs.resolve(_task())
    assert (str(config.memory), config.on_overflow) == ("process", "truncate")
    with pytest.raises(TaskConfigError, match=r"TASK_TOPIC_DEFAULTS topic 'x', property procos\.onOverflow"):
        _configs({"x": {"procos.onOverflow": 1}})


def test_the_memory_variable_is_fetched_with_the_task() -> None:
    configs = _configs()
    assert "customerId" in configs.variables_needed(_task(**{"procos.memory": "variable:customerId"}))
    assert "customerId" not in configs.variables_needed(_task(**{"procos.memory": "process"}))


@pytest.mark.parametrize(("variable", "key"), [
    (Variable("42"), "customerId=42"),
    (Variable(42, "Long"), "customerId=42"),
    (Variable(True, "Boolean"), "customerId=true"),
    (Variable(1.5, "Double"), "customerId=1.5"),
])
def test_the_memory_key_is_the_variables_name_and_value(variable: Variable, key: str) -> None:
    scope = MemoryScope("variable", "customerId")
    assert memory_key(_task({"customerId": variable}), scope) == key
    assert memory_key(_task({"customerId": variable}, tenant="acme"), scope) == f"acme/{key}"


def test_no_key_without_variable_memory_and_a_long_value_is_hashed() -> None:
    assert memory_key(_task(), NO_MEMORY) is None
    assert memory_key(_task(), MemoryScope("process")) is None
    long_value = "x" * 1000
    key = memory_key(_task({"case": Variable(long_value)}), MemoryScope("variable", "case"))
    assert key is not None and key.startswith("case=sha256:") and len(key) <= 255
    assert key == memory_key(_task({"case": Variable(long_value)}), MemoryScope("variable", "case"))


@pytest.mark.parametrize(("variables", "problem"), [
    ({}, "variable 'customerId' is missing; procos.memory=variable:customerId continues"),
    ({"customerId": Variable(None)}, "variable 'customerId' is missing"),
    ({"customerId": Variable('{"a": 1}', "Json")}, "has type Json; the memory key must be a String, a number or a"),
    ({"customerId": Variable("AAEC", "Bytes")}, "has type Bytes"),
])
def test_a_missing_or_structured_key_variable_is_bad_input(variables: dict[str, Variable], problem: str) -> None:
    with pytest.raises(InputError) as info:
        memory_key(_task(variables), MemoryScope("variable", "customerId"))
    assert problem in info.value.message


def test_turns_become_user_and_assistant_messages_in_order() -> None:
    now = datetime.now(UTC)
    turns = [Turn(id=uuid.uuid4(), input_id=uuid.uuid4(), question=f"q{i}", answer=f"a{i}", process_instance_id="p",
                  task_id=None, activity_id=None, memory_key=None, model=None, created_at=now) for i in range(2)]
    assert turn_messages(turns) == [{"role": "user", "content": "q0"}, {"role": "assistant", "content": "a0"},
                                    {"role": "user", "content": "q1"}, {"role": "assistant", "content": "a1"}]
