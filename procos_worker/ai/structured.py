"""Structured answers (``procos.outputSchema``): the schema an answer must match, the check of an answer,
the request that asks the model to repair one, and the typed variables its properties become
(LLM -> **structured check** -> output row -> flags).

The schema goes to Ollama as ``format``, which constrains generation; every answer is still parsed
and validated here with ``jsonschema``, because an answer cut by ``num_predict`` is not JSON, and
Ollama's grammar does not enforce every keyword (``maxLength``, ``minimum``, ``pattern``, ...).

Each exposed top-level property (``procos.outputVariables``; by default every declared property that
is not an object or array) becomes a variable with an explicit Camunda type: boolean -> Boolean,
integer -> Long, number -> Double, string -> String, null or absent -> Null; an object or array named in
``procos.outputVariables`` -> Json. The declared type decides between Long and Double (a ``number``
answered as ``3`` is the Double 3.0). A value Camunda can't hold as its type (an integer beyond a
Long, a number beyond a Double, a string with NUL or a lone surrogate) makes the answer invalid, as
a schema error does. A value over 4000 characters is refused where outcomes are built (``outcomes``):
an incident naming the property.

Nothing here talks to Ollama, PostgreSQL or Camunda.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import jsonschema
from jsonschema.protocols import Validator

from procos_worker import textcodec
from procos_worker.errors import OutputInvalid
from procos_worker.models import RESERVED_FLAG_NAMES, TypedValue

__all__ = [
    "Checked",
    "StructuredOutput",
    "check_answer",
    "output_invalid",
    "parse_output_schema",
    "parse_output_variables",
    "repair_messages",
    "structured_output",
]

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# The result prefix (at most 64) + "_" + the property must fit Camunda's variable NAME_ varchar(255).
_MAX_NAME_CHARS = 190
_LONG_MIN, _LONG_MAX = -(2**63), 2**63 - 1
_STRUCTURE_TYPES = frozenset({"object", "array"})
# What a repair request (and the BPMN error's details) repeats of each check.
_MAX_ERRORS = 5
_MAX_ERROR_CHARS = 300
_MAX_ECHO_CHARS = 4000
_EXAMPLE = '{"type": "object", "properties": {"urgent": {"type": "boolean"}}, "required": ["urgent"]}'


@dataclass(frozen=True, slots=True)
class StructuredOutput:
    """A task's answer schema, checked, with the properties it exposes as variables.

    ``variables``: the exposed top-level properties, in the schema's order; ``explicit``: they were named
    in ``procos.outputVariables`` (otherwise an object or array answered for a property of no declared
    type is left out); ``types``: each one's declared JSON types (None: not declared).
    """

    schema: Mapping[str, Any]
    variables: tuple[str, ...]
    explicit: bool
    types: Mapping[str, frozenset[str] | None]
    validator: Validator = field(compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class Checked:
    """One answer, checked: ``data`` is the parsed JSON (None when the text is not JSON), ``errors`` what
    is wrong with it (empty: valid), ``values`` the typed value of each exposed property (when valid)."""

    data: Any = None
    errors: tuple[str, ...] = ()
    values: Mapping[str, TypedValue] = field(default_factory=dict)

    @property
    def valid(self) -> bool:
        return not self.errors


# -- the two properties (parsers of ai.taskconfig: raw value -> parsed, or ValueError) ---------------

def parse_output_schema(raw: Any) -> dict[str, Any]:
    """``procos.outputSchema``: JSON text (or, in TASK_TOPIC_DEFAULTS, an object) holding a valid JSON
    Schema whose top-level type is ``object``, with references only inside itself."""
    schema = raw
    if isinstance(raw, str):
        try:
            schema = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise ValueError(f"is not valid JSON ({exc}); write a JSON Schema such as {_EXAMPLE}") from exc
    if not isinstance(schema, dict):
        raise ValueError(f"must be a JSON Schema object such as {_EXAMPLE}, got {type(schema).__name__}")
    validator_class = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
    try:
        validator_class.check_schema(schema)
    except jsonschema.SchemaError as exc:
        where = "/".join(str(part) for part in exc.absolute_path)
        raise ValueError(f"is not a valid JSON Schema: at /{where}: {_clip(exc.message)}") from exc
    if schema.get("type") != "object":
        raise ValueError('must describe a JSON object: "type": "object" at the top level, got "type": '
                         f"{_clip(json.dumps(schema.get('type')))}")
    outside = next(_outside_references(schema), None)
    if outside is not None:
        raise ValueError(f'refers to {_clip(outside)!r}: only references inside the schema ("#/$defs/...") '
                         "are allowed")
    return schema


def parse_output_variables(raw: Any) -> tuple[str, ...]:
    """``procos.outputVariables``: a comma list of top-level property names (a JSON list of names in
    TASK_TOPIC_DEFAULTS); whether each is a property of the schema is checked by ``structured_output``."""
    if isinstance(raw, str):
        parts = raw.split(",")
    elif isinstance(raw, list) and all(isinstance(part, str) for part in raw):
        parts = raw
    else:
        raise ValueError("must be a comma list of answer property names, e.g. 'category, urgent'")
    names = tuple(part.strip() for part in parts)
    if not all(names):
        raise ValueError(f"has an empty name in {_clip(str(raw))!r}; write names separated by commas")
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise ValueError(f"names {', '.join(repeated)} more than once")
    return names


def structured_output(schema: Mapping[str, Any], names: Sequence[str] | None) -> StructuredOutput:
    """The exposed properties of ``schema``: ``names`` (``procos.outputVariables``) or, when None, every
    declared property that is not an object or array. ``ValueError`` when a name is not a declared
    property, can't be a variable name, or is the name of a flag."""
    declared: Mapping[str, Any] = schema.get("properties") or {}
    if names is None:
        chosen = tuple(name for name, sub in declared.items() if not (_types_of(sub) or set()) & _STRUCTURE_TYPES)
        hint = ", or leave it out with procos.outputVariables"
    else:
        unknown = [name for name in names if name not in declared]
        if unknown:
            verb = "is not a property" if len(unknown) == 1 else "are not properties"
            raise ValueError(f"{', '.join(repr(n) for n in unknown)} {verb} of procos.outputSchema (it declares: "
                             f"{', '.join(declared) or 'none'})")
        chosen, hint = tuple(names), ""
    for name in chosen:
        if not _NAME.match(name) or len(name) > _MAX_NAME_CHARS:
            raise ValueError(f"answer property {_clip(name)!r} can't be a variable name (letters, digits and _, "
                             f"not starting with a digit, at most {_MAX_NAME_CHARS}): rename it{hint}")
        if name in RESERVED_FLAG_NAMES:
            raise ValueError(f"answer property {name!r} would overwrite the flag <prefix>_{name}: rename it{hint}")
    validator_class = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
    # "format" is checked too (a date, an email ...), for the formats jsonschema knows.
    validator = validator_class(schema, format_checker=validator_class.FORMAT_CHECKER)
    return StructuredOutput(schema=schema, variables=chosen, explicit=names is not None,
                            types={name: _types_of(declared[name]) for name in chosen}, validator=validator)


# -- answers -----------------------------------------------------------------------------------------

def check_answer(output: StructuredOutput, text: str, *, done_reason: str | None = None) -> Checked:
    """Parse and validate one answer; the typed values of its exposed properties when it is valid."""
    try:
        data = json.loads(text, parse_constant=_refuse_constant, parse_float=_finite)
    except (ValueError, RecursionError) as exc:
        cut = " (it was cut by num_predict: done_reason length)" if done_reason == "length" else ""
        return Checked(errors=(f"the answer is not JSON{cut}: {_clip(str(exc))}",))
    try:
        found = sorted(output.validator.iter_errors(data), key=lambda e: ([str(p) for p in e.absolute_path], e.message))
    except RecursionError:
        return Checked(data=data, errors=("the answer is nested too deeply to check",))
    if found:
        return Checked(data=data, errors=tuple(_at(e.absolute_path, e.message) for e in found[:_MAX_ERRORS]))
    values: dict[str, TypedValue] = {}
    problems: list[str] = []
    for name in output.variables:
        value = data.get(name)
        if not output.explicit and isinstance(value, dict | list):
            continue  # a property of no declared type answered with a structure: not a scalar variable
        try:
            values[name] = _typed(value, output.types[name], name)
        except ValueError as exc:
            problems.append(_at([name], str(exc)))
    if problems:
        return Checked(data=data, errors=tuple(problems))
    return Checked(data=data, values=values)


def repair_messages(first: Sequence[Mapping[str, str]], answer: str, checked: Checked,
                    output: StructuredOutput) -> list[dict[str, str]]:
    """The next attempt's messages: the first attempt's, the invalid answer, and a request naming what is
    wrong. Made only of stored things (the first messages, the stored answer, its check), so a task
    fetched again asks exactly the same and finds that attempt's stored rows."""
    echoed = answer if len(answer) <= _MAX_ECHO_CHARS else answer[:_MAX_ECHO_CHARS] + "\u2026"
    problems = "\n".join(f"- {error}" for error in checked.errors)
    schema = json.dumps(output.schema, ensure_ascii=False, separators=(",", ":"))
    request = (f"Your answer does not match the required JSON schema:\n{problems}\n"
               f"Answer the same request again, with only a JSON object that matches this schema:\n{schema}")
    return [*(dict(m) for m in first), {"role": "assistant", "content": echoed}, {"role": "user", "content": request}]


def output_invalid(where: str, attempts: Sequence[tuple[str, Checked]]) -> OutputInvalid:
    """The BPMN error after the last attempt: ``attempts`` are (stored row id, its check), oldest first."""
    rows = ", ".join(row for row, _ in attempts)
    last = attempts[-1][1].errors[0] if attempts and attempts[-1][1].errors else "?"
    details = "\n".join(f"attempt {n} (procos_ai_context row {row}):\n" + "\n".join(f"  - {e}" for e in checked.errors)
                        for n, (row, checked) in enumerate(attempts, start=1))
    return OutputInvalid(f"{where}: {len(attempts)} answer(s) did not match the schema; stored as procos_ai_context "
                         f"rows {rows}; last error: {last}", details=details)


# -- helpers -----------------------------------------------------------------------------------------

def _typed(value: Any, declared: frozenset[str] | None, name: str) -> TypedValue:
    """The Camunda typed value of one answer property (``ValueError``: Camunda can't hold it)."""
    camunda_type, converted = _camunda(value, declared)
    return TypedValue(converted, camunda_type, f"answer property '{name}' of procos.outputSchema; bound it "
                                               "(maxLength, maxItems) or leave it out with procos.outputVariables")


def _camunda(value: Any, declared: frozenset[str] | None) -> tuple[str, Any]:
    if value is None:
        return "Null", None
    if isinstance(value, bool):
        return "Boolean", value
    if isinstance(value, int | float):
        return _number(value, declared)
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    if textcodec.needs_escape(text):
        raise ValueError("holds a character Camunda can't store (NUL or a lone surrogate)")
    return ("String", value) if isinstance(value, str) else ("Json", text)


def _number(value: float, declared: frozenset[str] | None) -> tuple[str, Any]:
    """Long or Double, as declared: ``3`` for a ``number`` is the Double 3.0, ``3.0`` for an ``integer``
    the Long 3; with no declared type the JSON value decides."""
    only_number = declared is not None and "number" in declared and "integer" not in declared
    only_integer = declared is not None and "integer" in declared and "number" not in declared
    if isinstance(value, int) and not only_number:
        return "Long", _long(value)
    if isinstance(value, float) and only_integer and value.is_integer():
        return "Long", _long(int(value))
    return "Double", _double(value)


def _long(value: int) -> int:
    if not _LONG_MIN <= value <= _LONG_MAX:
        raise ValueError(f"{_clip(str(value))} is beyond a Long (64-bit integer)")
    return value


def _double(value: float) -> float:
    try:
        number = float(value)
    except OverflowError as exc:
        raise ValueError(f"{_clip(str(value))} is beyond a Double") from exc
    if not math.isfinite(number):
        raise ValueError(f"{_clip(str(value))} is beyond a Double")
    return number


def _types_of(schema: Any) -> frozenset[str] | None:
    """The JSON types a (sub)schema declares: ``type``, else those of its ``enum`` / ``const`` values."""
    if not isinstance(schema, dict):
        return None  # a boolean schema
    declared = schema.get("type")
    if isinstance(declared, str):
        return frozenset({declared})
    if isinstance(declared, list):
        return frozenset(t for t in declared if isinstance(t, str))
    if isinstance(schema.get("enum"), list):
        return frozenset(_json_type(v) for v in schema["enum"])
    return frozenset({_json_type(schema["const"])}) if "const" in schema else None


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    return "array" if isinstance(value, list) else "object"


def _outside_references(schema: Any) -> Iterator[str]:
    """Every ``$ref`` / ``$dynamicRef`` that does not point inside the schema (it would be fetched)."""
    if isinstance(schema, dict):
        for key, value in schema.items():
            if key in ("$ref", "$dynamicRef") and isinstance(value, str) and not value.startswith("#"):
                yield value
            else:
                yield from _outside_references(value)
    elif isinstance(schema, list):
        for item in schema:
            yield from _outside_references(item)


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _finite(text: str) -> float:
    """Python reads 1e400 as infinity, which neither PostgreSQL's JSONB nor a Camunda Double can hold."""
    number = float(text)
    if not math.isfinite(number):
        raise ValueError(f"the number {_clip(text)} is beyond a Double")
    return number


def _at(path: Any, message: str) -> str:
    where = "/".join(str(part) for part in path)
    return f"at /{where}: {_clip(message)}" if where else f"at the top level: {_clip(message)}"


def _clip(text: str) -> str:
    return text if len(text) <= _MAX_ERROR_CHARS else text[: _MAX_ERROR_CHARS - 1] + "\u2026"
