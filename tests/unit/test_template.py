"""Prompt templates: the names a template reads, strict and sandboxed rendering, compile errors."""

from __future__ import annotations

import pytest

from procos_worker.ai.template import compile_template
from procos_worker.errors import InputError, TaskConfigError

WHERE = "activity 'summarise', property procos.prompt"


def test_names_are_the_variables_read_not_loop_names_or_jinja_globals() -> None:
    template = compile_template(
        "{{ greeting }} {% for doc in documents %}{{ doc.title }} {{ loop.index }}{% endfor %}"
        "{% set n = range(3) | list %}{% if extra is defined %}{{ extra }}{% endif %}")
    assert template.names == {"greeting", "documents", "extra"}


def test_values_render_as_a_prompt_wants_them() -> None:
    template = compile_template("{{ obj }} | {{ items }} | {{ flag }} | {{ n + 1 }} | {{ obj.missing_ok }}|")
    text = template.render({"obj": {"a": "ä", "missing_ok": None}, "items": [1, "x"], "flag": False, "n": 41},
                           where=WHERE)
    assert text == '{"a": "ä", "missing_ok": null} | [1, "x"] | false | 42 | |'


def test_text_is_kept_exactly_trailing_newline_included() -> None:
    assert compile_template("line 1\n{{ x }}\n").render({"x": "  two  "}, where=WHERE) == "line 1\n  two  \n"


def test_a_missing_variable_is_bad_input_naming_it() -> None:
    with pytest.raises(InputError) as info:
        compile_template("Summarise {{ document }} for {{ reader }}").render({"document": "d"}, where=WHERE)
    assert info.value.message.startswith(f"{WHERE}: variable 'reader' is missing")


def test_an_optional_variable_may_be_absent() -> None:
    template = compile_template("Q{% if context is defined %} with {{ context }}{% endif %}")
    assert template.render({}, where=WHERE) == "Q"
    assert template.render({"context": "C"}, where=WHERE) == "Q with C"


def test_a_missing_attribute_or_failing_expression_is_bad_input() -> None:
    with pytest.raises(InputError, match="has no attribute 'title'"):
        compile_template("{{ doc.title }}").render({"doc": {}}, where=WHERE)
    with pytest.raises(InputError, match="TypeError"):
        compile_template("{{ n + 1 }}").render({"n": "text"}, where=WHERE)
    with pytest.raises(InputError, match="ZeroDivisionError"):
        compile_template("{{ 1 / n }}").render({"n": 0}, where=WHERE)


@pytest.mark.parametrize("source", ["{{ x.__class__.__mro__ }}", "{{ items.append(1) }}", "{{ d.update(a=1) }}"])
def test_the_sandbox_refuses_unsafe_or_mutating_access(source: str) -> None:
    with pytest.raises(TaskConfigError) as info:
        compile_template(source).render({"x": 1, "items": [], "d": {}}, where=WHERE)
    assert info.value.message.startswith(WHERE) and "sandbox" in info.value.message


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("Hello {{ name ", "template syntax error on line 1"),
        ("ok\n{% if x %}never closed", "template syntax error on line 2"),
        ("{% for %}", "template syntax error on line 1"),
        ("   ", "is empty"),
    ],
)
def test_a_template_that_does_not_compile_says_where(source: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        compile_template(source)


def test_a_template_is_compiled_once_per_text() -> None:
    assert compile_template("cached {{ x }}") is compile_template("cached {{ x }}")
