"""Structured answers (ai/structured.py): the schema and variable properties, the check of an answer,
the typed variables, the repair request and the BPMN error after the last attempt."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from procos_worker.ai.structured import (
    Checked,
    StructuredOutput,
    check_answer,
    output_invalid,
    parse_output_schema,
    parse_output_variables,
    repair_messages,
    structured_output,
)
from procos_worker.errors import BusinessError, OutputInvalid, VariableTooLong
from procos_worker.flags import build_flags
from procos_worker.models import FLAG_NAMES, RESERVED_FLAG_NAMES, StoredOutput
from procos_worker.outcomes import complete

TRIAGE: dict[str, Any] = {
    "type": "object",
    "properties": {
        "category": {"type": "string", "enum": ["billing", "outage", "account", "other"]},
        "urgent": {"type": "boolean"},
        "priority": {"type": "integer", "minimum": 1, "maximum": 5},
        "summary": {"type": "string", "maxLength": 120},
        "score": {"type": "number"},
        "note": {"type": ["string", "null"]},
        "tags": {"type": "array", "items": {"type": "string"}},
        "details": {"type": "object"},
    },
    "required": ["category", "urgent", "priority", "summary"],
}
VALID = {"category": "outage", "urgent": True, "priority": 2, "summary": "Site down", "score": 3,
         "tags": ["web"], "details": {"region": "eu"}}


def _spec(schema: dict[str, Any] | None = None, names: tuple[str, ...] | None = None) -> StructuredOutput:
    return structured_output(parse_output_schema(json.dumps(schema or TRIAGE)), names)


# -- the schema ----------------------------------------------------------------------------------------

def test_a_schema_is_json_text_or_an_object_and_is_kept_as_written() -> None:
    assert parse_output_schema(json.dumps(TRIAGE)) == TRIAGE
    assert parse_output_schema(TRIAGE) == TRIAGE  # from TASK_TOPIC_DEFAULTS
    with_defs = {"type": "object", "$defs": {"cat": {"enum": ["a", "b"]}},
                 "properties": {"category": {"$ref": "#/$defs/cat"}}}
    assert parse_output_schema(with_defs) == with_defs


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        ("{type: object}", "is not valid JSON"),
        ('["object"]', "must be a JSON Schema object"),
        ('{"type": "object", "properties": {"a": {"type": "strin"}}}',
         "is not a valid JSON Schema: at /properties/a/type"),
        ('{"type": "object", "required": "a"}', "is not a valid JSON Schema: at /required"),
        ('{"type": "array", "items": {"type": "string"}}',
         'must describe a JSON object: "type": "object" at the top level, got "type": "array"'),
        ('{"properties": {"a": {"type": "string"}}}', 'got "type": null'),
        ('{"type": "object", "properties": {"a": {"$ref": "https://example.com/a.json"}}}',
         "refers to 'https://example.com/a.json'"),
    ],
)
def test_a_bad_schema_says_what_is_wrong(raw: str, problem: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_output_schema(raw)
    assert problem in str(info.value)


def test_variables_are_a_comma_list_of_names() -> None:
    assert parse_output_variables(" category, urgent ") == ("category", "urgent")
    assert parse_output_variables(["category"]) == ("category",)
    for bad, problem in (("a,,b", "empty name"), ("a, a", "names a more than once"), ("5", None)):
        with pytest.raises(ValueError) as info:
            parse_output_variables(bad if problem else 5)
        assert problem is None or problem in str(info.value)


def test_by_default_every_declared_scalar_property_is_exposed() -> None:
    spec = _spec()
    assert spec.variables == ("category", "urgent", "priority", "summary", "score", "note")
    assert not spec.explicit
    assert spec.types["category"] == frozenset({"string"}) and spec.types["note"] == frozenset({"string", "null"})


def test_output_variables_limit_and_may_name_a_structure() -> None:
    spec = _spec(names=("urgent", "tags"))
    assert spec.variables == ("urgent", "tags") and spec.explicit
    checked = check_answer(spec, json.dumps(VALID))
    assert _values(checked) == {"urgent": (True, "Boolean"), "tags": ('["web"]', "Json")}


@pytest.mark.parametrize(
    ("schema", "names", "problem"),
    [
        (TRIAGE, ("category", "colour"), "'colour' is not a property of procos.outputSchema (it declares: category, "),
        (TRIAGE, ("a", "b"), "'a', 'b' are not properties"),
        ({"type": "object", "properties": {"first name": {"type": "string"}}}, None,
         "answer property 'first name' can't be a variable name"),
        ({"type": "object", "properties": {"model": {"type": "string"}}}, None,
         "answer property 'model' would overwrite the flag <prefix>_model: rename it, or leave it out"),
        ({"type": "object", "properties": {"context_id": {"type": "string"}}}, ("context_id",),
         "would overwrite the flag <prefix>_context_id: rename it"),
        # Written only under procos.onOverflow=truncate, reserved all the same.
        ({"type": "object", "properties": {"prompt_truncated": {"type": "boolean"}}}, None,
         "answer property 'prompt_truncated' would overwrite the flag <prefix>_prompt_truncated"),
    ],
)
def test_names_that_cant_be_variables_are_refused(schema: dict[str, Any], names: tuple[str, ...] | None,
                                                  problem: str) -> None:
    with pytest.raises(ValueError) as info:
        _spec(schema, names)
    assert problem in str(info.value)


def test_the_flag_names_are_the_flags() -> None:
    output = StoredOutput(id=__import__("uuid").uuid4(), response_length=1, model="m", provider="p",
                          prompt_tokens=1, completion_tokens=1, done_reason="stop")
    flags = build_flags(output, "p")
    assert {name.removeprefix("p_") for name in flags} == set(FLAG_NAMES)
    truncating = build_flags(output, "p", report_truncation=True)
    assert {name.removeprefix("p_") for name in truncating} == set(RESERVED_FLAG_NAMES)


# -- answers ---------------------------------------------------------------------------------------------

def _values(checked: Checked) -> dict[str, tuple[Any, str]]:
    return {name: (v.value, v.type) for name, v in checked.values.items()}


def test_a_valid_answer_becomes_typed_values_as_declared() -> None:
    checked = check_answer(_spec(), json.dumps({**VALID, "note": None}))
    assert checked.valid and checked.data == {**VALID, "note": None}
    assert _values(checked) == {
        "category": ("outage", "String"), "urgent": (True, "Boolean"), "priority": (2, "Long"),
        "summary": ("Site down", "String"), "score": (3.0, "Double"), "note": (None, "Null"),
    }
    assert isinstance(checked.values["score"].value, float)
    assert "answer property 'summary'" in checked.values["summary"].source


def test_an_absent_optional_property_is_a_null_variable() -> None:
    answer = {k: VALID[k] for k in ("category", "urgent", "priority", "summary")}
    assert _values(check_answer(_spec(), json.dumps(answer)))["score"] == (None, "Null")


def test_integer_written_as_a_float_is_a_long_and_undeclared_types_follow_the_value() -> None:
    assert _values(check_answer(_spec(), json.dumps({**VALID, "priority": 2.0})))["priority"] == (2, "Long")
    free = {"type": "object", "properties": {"n": {}, "x": {}, "s": {}, "b": {}, "o": {}}}
    checked = check_answer(_spec(free), '{"n": 7, "x": 1.5, "s": "t", "b": false, "o": {"k": 1}}')
    # An object answered for a property of no declared type is not exposed unless named explicitly.
    assert _values(checked) == {"n": (7, "Long"), "x": (1.5, "Double"), "s": ("t", "String"), "b": (False, "Boolean")}
    assert _values(check_answer(_spec(free, ("o",)), '{"o": {"k": 1}}')) == {"o": ('{"k": 1}', "Json")}


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("Sure! The category is outage.", "the answer is not JSON: Expecting value"),
        ('{"category": "outage", "urgent": tru', "the answer is not JSON"),
        ("NaN", "NaN is not a JSON number"),
        ("[" * 100_000, "the answer is not JSON"),
        (json.dumps({**VALID, "category": "weather"}), "at /category: 'weather' is not one of ['billing', 'outage'"),
        (json.dumps({k: v for k, v in VALID.items() if k != "urgent"}),
         "at the top level: 'urgent' is a required property"),
        (json.dumps({**VALID, "priority": 9}), "at /priority: 9 is greater than the maximum of 5"),
        (json.dumps({**VALID, "summary": "x" * 500}), "at /summary: 'xxxx"),
        (json.dumps([VALID]), "at the top level: [{"),
        (json.dumps({**VALID, "score": 1}).replace('"score": 1', '"score": 1e400'), "1e400 is beyond a Double"),
        (json.dumps({**VALID, "priority": 2**70}).replace(str(2**70), str(2**70)), "at /priority"),
    ],
)
def test_an_invalid_answer_says_what_is_wrong(text: str, problem: str) -> None:
    checked = check_answer(_spec(), text)
    assert not checked.valid and checked.values == {}
    assert problem in checked.errors[0], checked.errors
    assert all(len(error) <= 320 for error in checked.errors)


def test_values_camunda_cant_hold_make_the_answer_invalid() -> None:
    free = {"type": "object", "properties": {"n": {"type": "integer"}, "s": {"type": "string"}}}
    assert check_answer(_spec(free), json.dumps({"n": 2**63})).errors == (
        f"at /n: {2**63} is beyond a Long (64-bit integer)",)
    assert check_answer(_spec(free), json.dumps({"n": 2**63 - 1})).valid
    assert check_answer(_spec(free), json.dumps({"s": "a\x00b"})).errors == (
        "at /s: holds a character Camunda can't store (NUL or a lone surrogate)",)
    assert not check_answer(_spec(free), '{"s": "\\ud800"}').valid


def test_an_answer_too_deep_to_check_is_invalid_not_a_crash() -> None:
    spec = _spec({"type": "object", "properties": {"a": {"uniqueItems": True}}})
    deep = "[" * 400 + "]" * 400
    assert check_answer(spec, f'{{"a": [{deep}, {deep}]}}').errors == ("the answer is nested too deeply to check",)


def test_a_cut_answer_says_it_was_cut() -> None:
    checked = check_answer(_spec(), '{"category": "out', done_reason="length")
    assert "cut by num_predict" in checked.errors[0]


def test_errors_come_in_a_fixed_order_and_at_most_five() -> None:
    answer = {"category": 1, "urgent": "yes", "priority": "high", "summary": 2, "score": "x", "note": 3}
    first = check_answer(_spec(), json.dumps(answer))
    again = check_answer(_spec(), json.dumps(dict(reversed(list(answer.items())))))
    assert first.errors == again.errors and len(first.errors) == 5
    assert [e.split(":")[0] for e in first.errors] == ["at /category", "at /category", "at /note", "at /priority",
                                                        "at /score"]


def test_a_format_keyword_is_checked() -> None:
    dated = {"type": "object", "properties": {"due": {"type": "string", "format": "date"}}}
    assert check_answer(_spec(dated), '{"due": "2026-11-25"}').valid
    assert "is not a 'date'" in check_answer(_spec(dated), '{"due": "next week"}').errors[0]


@settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])  # a shared, busy machine
@given(st.fixed_dictionaries(
    {"category": st.sampled_from(["billing", "outage", "account", "other"]), "urgent": st.booleans(),
     "priority": st.integers(1, 5) | st.integers(1, 5).map(float), "summary": st.text(max_size=120)},
    optional={"score": st.integers() | st.floats(allow_nan=False, allow_infinity=False),
              "note": st.none() | st.text(max_size=20), "tags": st.lists(st.text(max_size=5), max_size=3)}))
def test_a_valid_answer_always_gives_the_declared_types(answer: dict[str, Any]) -> None:
    checked = check_answer(_spec(), json.dumps(answer))
    if not checked.valid:  # only a character Camunda can't store is refused here
        assert all("Camunda can't store" in error for error in checked.errors), checked.errors
        assert r"\u0000" in json.dumps(answer)
        return
    declared = {"category": {"String"}, "urgent": {"Boolean"}, "priority": {"Long"}, "summary": {"String"},
                "score": {"Double"}, "note": {"String", "Null"}}
    assert set(checked.values) == set(declared)
    for name, value in checked.values.items():
        assert value.type in declared[name] | ({"Null"} if name not in answer else set()), (name, value)
        if name in answer and answer[name] is not None:
            assert value.value == answer[name]


# -- repair and giving up -----------------------------------------------------------------------------------

def test_the_repair_request_repeats_the_first_messages_the_answer_and_what_was_wrong() -> None:
    spec = _spec()
    first = [{"role": "system", "content": "You triage tickets."}, {"role": "user", "content": "Ticket: site down"}]
    checked = check_answer(spec, '{"category": "weather"}')
    messages = repair_messages(first, '{"category": "weather"}', checked, spec)
    assert messages[:2] == first
    assert messages[2] == {"role": "assistant", "content": '{"category": "weather"}'}
    assert messages[3]["role"] == "user"
    assert "- at /category: 'weather' is not one of" in messages[3]["content"]
    assert json.dumps(TRIAGE, separators=(",", ":")) in messages[3]["content"]
    # Built only from stored things: the same inputs give the same messages (the same stored attempt).
    again = check_answer(spec, '{"category": "weather"}')
    assert repair_messages(first, '{"category": "weather"}', again, spec) == messages
    long = repair_messages(first, "x" * 10_000, check_answer(spec, "x" * 10_000), spec)
    assert len(long[2]["content"]) == 4001


def test_giving_up_is_ai_output_invalid_naming_every_stored_answer() -> None:
    spec = _spec()
    attempts = [("row-1", check_answer(spec, "no")), ("row-2", check_answer(spec, '{"category": "x"}'))]
    error = output_invalid("activity 'triage', property procos.outputSchema", attempts)
    assert isinstance(error, OutputInvalid) and isinstance(error, BusinessError)
    assert error.code == "AI_OUTPUT_INVALID"
    assert error.message.startswith("activity 'triage', property procos.outputSchema: 2 answer(s) did not match "
                                    "the schema; stored as procos_ai_context rows row-1, row-2; last error: at ")
    assert "attempt 1 (procos_ai_context row row-1):\n  - the answer is not JSON" in error.details


def test_a_value_over_4000_characters_is_an_incident_naming_the_property() -> None:
    spec = _spec({"type": "object", "properties": {"summary": {"type": "string"}}})
    checked = check_answer(spec, json.dumps({"summary": "s" * 4001}))
    assert checked.valid
    with pytest.raises(VariableTooLong) as info:
        complete({f"triage_{k}": v for k, v in checked.values.items()}, __import__("uuid").uuid4())
    assert info.value.message.startswith("variable 'triage_summary' (answer property 'summary' of "
                                         "procos.outputSchema; bound it (maxLength, maxItems)")
    assert "would be 4001 characters; Camunda stores at most 4000" in info.value.message
