"""Prompt templates (``procos.prompt``, ``procos.systemPrompt``): Jinja2 in a sandbox.

A template is compiled once per distinct text (cached) together with the names of the variables it
reads (``jinja2.meta.find_undeclared_variables``), so the worker can ask fetchAndLock for exactly
those. Rendering is strict: a name without a value is an error, never an empty string.

Jinja2's exceptions become the project's here: a syntax error is a ``ValueError`` for the property
parser (``ai.taskconfig`` turns it into an incident naming the activity and property); at render time
an undefined name or a failing expression is bad input (``InputError``: BPMN error), and an
operation the sandbox forbids is a modelling mistake (``TaskConfigError``: incident).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import jinja2
from jinja2 import meta
from jinja2.exceptions import SecurityError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from procos_worker.errors import InputError, TaskConfigError

__all__ = ["PromptTemplate", "compile_template"]

_UNDEFINED = re.compile(r"^'([^']+)' is undefined$")


def _finalize(value: Any) -> Any:
    """How a value prints: JSON for objects and arrays (a Json variable), ``true``/``false`` as in
    JSON and Camunda, nothing for a JSON null inside a structure."""
    if isinstance(value, dict | list):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return ""
    return value


# Immutable: a template can't change the values it is given (list.append, dict.update, ...).
_ENV = ImmutableSandboxedEnvironment(
    undefined=jinja2.StrictUndefined, autoescape=False, keep_trailing_newline=True, finalize=_finalize,
)
_GLOBALS = frozenset(_ENV.globals)


@dataclass(frozen=True, slots=True, eq=False)
class PromptTemplate:
    """A compiled template and the variable names it reads."""

    source: str
    names: frozenset[str]
    _template: jinja2.Template

    def render(self, values: Mapping[str, Any], *, where: str) -> str:
        """Render with ``values``; ``where`` names the template in errors (activity and property)."""
        try:
            return self._template.render(values)
        except SecurityError as exc:
            raise TaskConfigError(f"{where}: the template does something the sandbox forbids: {exc}") from exc
        except jinja2.UndefinedError as exc:
            match = _UNDEFINED.match(str(exc.message))
            problem = f"variable '{match.group(1)}' is missing" if match else str(exc.message)
            raise InputError(f"{where}: {problem}; set it in the process or fix the template") from exc
        except (jinja2.TemplateError, TypeError, ValueError, ArithmeticError, LookupError) as exc:
            raise InputError(f"{where}: the template failed on the task's variables: "
                             f"{type(exc).__name__}: {exc}") from exc


@lru_cache(maxsize=1024)
def compile_template(source: str) -> PromptTemplate:
    """Compile ``source`` (cached per text); ``ValueError`` naming the line of a syntax error."""
    if not isinstance(source, str):
        raise ValueError(f"must be text, got {type(source).__name__}")
    if not source.strip():
        raise ValueError("is empty")
    try:
        tree = _ENV.parse(source)
        template = _ENV.from_string(tree)
    except jinja2.TemplateSyntaxError as exc:
        raise ValueError(f"template syntax error on line {exc.lineno}: {exc.message}") from exc
    names = frozenset(meta.find_undeclared_variables(tree)) - _GLOBALS
    return PromptTemplate(source=source, names=names, _template=template)
