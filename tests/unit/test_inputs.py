from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from procos_worker.ai.taskconfig import TaskConfig
from procos_worker.ai.template import compile_template
from procos_worker.errors import InputError
from procos_worker.inputs import build_inputs, parse_inputs, requested_variables
from procos_worker.models import Task, Variable
from procos_worker.settings import TaskSettings

SETTINGS = TaskSettings(max_input_chars=1000)


def _task(**variables: Variable) -> Task:
    return Task(id="t1", topic="ai-query", worker_id="w", process_instance_id="p1", variables=variables)


def _s(value: Any) -> Variable:
    return Variable(value=value, type="String")


def test_query_context_and_system_prompt_are_read() -> None:
    inputs = parse_inputs(_task(query=_s("Why?"), context=_s("Because."), system_prompt=_s("Be brief.")), SETTINGS)
    assert (inputs.query, inputs.context, inputs.system_prompt) == ("Why?", "Because.", "Be brief.")


def test_optional_inputs_may_be_absent_or_null() -> None:
    inputs = parse_inputs(_task(query=_s("Why?"), context=Variable(value=None, type="Null")), SETTINGS)
    assert inputs.context is None and inputs.system_prompt is None


def test_variable_names_are_configurable() -> None:
    custom = TaskSettings(query_variable="frage", context_variable="kontext")
    inputs = parse_inputs(_task(frage=_s("Wie?"), kontext=_s("So.")), custom)
    assert (inputs.query, inputs.context) == ("Wie?", "So.")
    assert requested_variables(custom) == ["frage", "kontext", "system_prompt"]


def test_long_text_comes_as_json_string_or_utf8_bytes() -> None:
    long = "ä" * 900
    by_json = parse_inputs(_task(query=Variable(value=json.dumps(long), type="Json")), SETTINGS)
    by_bytes = parse_inputs(
        _task(query=Variable(value=base64.b64encode(long.encode()).decode(), type="Bytes")), SETTINGS)
    assert by_json.query == long == by_bytes.query


def test_json_context_keeps_its_shape() -> None:
    context = {"customer": {"id": 7, "notes": ["a", "b"]}}
    inputs = parse_inputs(_task(query=_s("Q"), context=Variable(value=json.dumps(context), type="Json")), SETTINGS)
    assert inputs.context == context


@pytest.mark.parametrize(
    ("variables", "message"),
    [
        ({}, "variable 'query' is missing"),
        ({"query": Variable(value=None, type="Null")}, "variable 'query' is missing"),
        ({"query": _s("")}, "variable 'query' is empty"),
        ({"query": _s("  \n\t")}, "variable 'query' is empty"),
        ({"query": Variable(value=42, type="Long")}, "must be text"),
        ({"query": Variable(value=True, type="Boolean")}, "must be text"),
        ({"query": Variable(value="{not json", type="Json")}, "does not parse"),
        ({"query": Variable(value="[1, 2]", type="Json")}, "must be text"),
        ({"query": Variable(value=base64.b64encode(b"\xff\xfe").decode(), type="Bytes")}, "not UTF-8"),
        ({"query": _s("Q"), "context": Variable(value="12", type="Json")}, "must be a JSON object"),
        ({"query": _s("x" * 600), "context": _s("y" * 600)}, "the limit is 1,000 (TASK_MAX_INPUT_CHARS)"),
    ],
)
def test_bad_inputs_raise_input_error_with_a_clear_message(variables: dict[str, Variable], message: str) -> None:
    with pytest.raises(InputError) as info:
        parse_inputs(_task(**variables), SETTINGS)
    assert message in info.value.message


# -- templates (procos.prompt / procos.systemPrompt) ---------------------------------------------

def _templated(prompt: str | None = None, system: str | None = None) -> TaskConfig:
    return TaskConfig(activity="summarise", model="m",
                      prompt=compile_template(prompt) if prompt else None,
                      system_prompt=compile_template(system) if system else None)


def test_a_template_renders_over_typed_variables_and_keeps_what_it_used() -> None:
    config = _templated("Doc {{ n + 1 }} ({{ doc.title }}, urgent={{ urgent }}): {{ body }} {{ text }}",
                        "You are {{ persona }}.")
    task = _task(n=Variable(value=2, type="Integer"), urgent=Variable(value=True, type="Boolean"),
                 doc=Variable(value=json.dumps({"title": "T"}), type="Json"),
                 body=Variable(value=base64.b64encode("grüß".encode()).decode(), type="Bytes"),
                 text=Variable(value=json.dumps("long text"), type="Json"),
                 persona=_s("an editor"), unrelated=_s("not read"))
    inputs = build_inputs(task, config, SETTINGS)
    assert inputs.query == "Doc 3 (T, urgent=true): grüß long text"
    assert inputs.system_prompt == "You are an editor."
    assert inputs.context is None
    assert inputs.templates == {"procos.prompt": config.prompt.source,  # type: ignore[union-attr]
                                "procos.systemPrompt": config.system_prompt.source}  # type: ignore[union-attr]
    assert inputs.template_variables == {"n": 2, "urgent": True, "doc": {"title": "T"}, "body": "grüß",
                                         "text": "long text", "persona": "an editor"}


def test_without_a_template_the_variables_fill_in_as_before() -> None:
    only_system = build_inputs(_task(query=_s("Q"), context=_s("C"), who=_s("a poet")),
                               _templated(system="You are {{ who }}."), SETTINGS)
    assert (only_system.query, only_system.context, only_system.system_prompt) == ("Q", "C", "You are a poet.")
    only_prompt = build_inputs(_task(x=_s("X"), system_prompt=_s("S")), _templated(prompt="{{ x }}"), SETTINGS)
    assert (only_prompt.query, only_prompt.system_prompt) == ("X", "S")
    plain = build_inputs(_task(query=_s("Q")), TaskConfig(activity="a", model="m"), SETTINGS)
    assert plain == parse_inputs(_task(query=_s("Q")), SETTINGS)


@pytest.mark.parametrize(
    ("variables", "message"),
    [
        ({}, "activity 'summarise', property procos.prompt: variable 'doc' is missing"),
        ({"doc": Variable(value=None, type="Null")}, "variable 'doc' is missing"),
        ({"doc": _s("   ")}, "procos.prompt: the template rendered to empty text"),
        ({"doc": Variable(value="rO0AB", type="Object")}, "variable 'doc' has type Object"),
        ({"doc": Variable(value="{bad", type="Json")}, "variable 'doc' is a Json variable that does not parse"),
        ({"doc": _s("x" * 1001)}, "the limit is 1,000 (TASK_MAX_INPUT_CHARS)"),
    ],
)
def test_bad_template_input_is_a_bpmn_error_naming_the_variable(variables: dict[str, Variable], message: str) -> None:
    with pytest.raises(InputError) as info:
        build_inputs(_task(**variables), _templated("{{ doc }}"), SETTINGS)
    assert message in info.value.message


def test_a_system_template_rendering_to_nothing_sends_no_system_message() -> None:
    config = _templated("{{ q }}", "{% if persona is defined %}{{ persona }}{% endif %}")
    inputs = build_inputs(_task(q=_s("Q")), config, SETTINGS)
    assert inputs.system_prompt is None
