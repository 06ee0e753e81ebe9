"""Readers for the deployment checks: .env parsing and compose-style ${VAR} interpolation.

No docker engine is needed. ``interpolate`` follows the Compose Specification's interpolation rules
(``$$``, ``$VAR``, ``${VAR}``, ``${VAR:-default}``, ``${VAR-default}``, ``${VAR:?error}``,
``${VAR?error}``, ``${VAR:+alt}``, ``${VAR+alt}``, nested expressions in the default), so the compose
file can be resolved with the values of .env.example exactly as `docker compose` resolves it with a
.env copied from that file.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO / "docker-compose.yml"
ENV_EXAMPLE = REPO / ".env.example"
DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"
INIT_SQL = REPO / "sql" / "init-db.sql"
BPMN_DIR = REPO / "bpmn"
CAMUNDA_DEFAULT_YML = REPO / "deploy" / "camunda" / "default.yml"
COMPOSE_SCHEMA = Path(__file__).resolve().parent / "compose-spec.json"

WORKER_BLOCK = "Worker settings"
COMPOSE_BLOCK = "Compose only"

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_ENV_LINE = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)=(.*)$")
_OPERATORS = (":-", ":?", ":+", "-", "?", "+")


class InterpolationError(ValueError):
    """A required variable is missing (``${VAR:?msg}``) or the template is malformed."""


@dataclass(frozen=True)
class EnvEntry:
    """One KEY=VALUE line of an env file, with the block it stands in and the comment above it."""

    block: str
    key: str
    value: str
    comment: str
    line: int


def parse_env_file(path: Path) -> list[EnvEntry]:
    """Parse a compose-style .env file. Blocks start at lines ``# ==== <title> ====``."""
    entries: list[EnvEntry] = []
    block = ""
    comment = ""
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        line = raw.strip()
        if not line:
            comment = ""
            continue
        if line.startswith("# ===="):
            block = line.strip("#= ").split(":")[0].strip()
            comment = ""
            continue
        if line.startswith("#"):
            comment = f"{comment} {line.lstrip('# ').strip()}".strip()
            continue
        match = _ENV_LINE.match(line)
        if match is None:
            raise ValueError(f"{path.name}:{number}: not a KEY=VALUE line: {raw!r}")
        entries.append(EnvEntry(block, match.group(1), _unquote(match.group(2)), comment, number))
        comment = ""
    return entries


def _unquote(value: str) -> str:
    value = value.strip()
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
        return value[1:-1]
    # An unquoted value ends at " #" (an inline comment), as in compose's dotenv reader.
    return value.split(" #", 1)[0].rstrip()


def _closing_brace(text: str, start: int) -> int:
    depth = 0
    index = start
    while index < len(text):
        if text.startswith("${", index):
            depth += 1
            index += 2
            continue
        if text[index] == "}":
            if depth == 0:
                return index
            depth -= 1
        index += 1
    raise InterpolationError(f"unclosed '${{' in {text!r}")


def _expand(body: str, env: Mapping[str, str]) -> str:
    match = _NAME.match(body)
    if match is None:
        raise InterpolationError(f"invalid variable name in '${{{body}}}'")
    name, rest = match.group(), body[match.end() :]
    if not rest:
        return env.get(name, "")
    operator = next((op for op in _OPERATORS if rest.startswith(op)), None)
    if operator is None:
        raise InterpolationError(f"invalid interpolation '${{{body}}}'")
    argument = rest[len(operator) :]
    is_set = name in env
    is_non_empty = bool(env.get(name))
    present = is_non_empty if operator.startswith(":") else is_set
    if operator in (":-", "-"):
        return env[name] if present else interpolate(argument, env)
    if operator in (":?", "?"):
        if not present:
            raise InterpolationError(f"required variable {name} is missing: {interpolate(argument, env)}")
        return env[name]
    return interpolate(argument, env) if present else ""


def interpolate(text: str, env: Mapping[str, str]) -> str:
    """Resolve compose ``$`` expressions in ``text`` from ``env``."""
    out: list[str] = []
    index = 0
    while index < len(text):
        char = text[index]
        if char != "$":
            out.append(char)
            index += 1
            continue
        following = text[index + 1 : index + 2]
        if following == "$":
            out.append("$")
            index += 2
        elif following == "{":
            end = _closing_brace(text, index + 2)
            out.append(_expand(text[index + 2 : end], env))
            index = end + 1
        else:
            match = _NAME.match(text, index + 1)
            if match is None:
                raise InterpolationError(f"lone '$' in {text!r} (write '$$' for a literal dollar)")
            out.append(env.get(match.group(), ""))
            index = match.end()
    return "".join(out)


def interpolate_tree(node: Any, env: Mapping[str, str]) -> Any:
    """Interpolate every string value of a loaded YAML document (keys are left alone, as compose does)."""
    if isinstance(node, str):
        return interpolate(node, env)
    if isinstance(node, list):
        return [interpolate_tree(item, env) for item in node]
    if isinstance(node, dict):
        return {key: interpolate_tree(value, env) for key, value in node.items()}
    return node


def referenced_names(node: Any) -> set[str]:
    """Every variable name the ``$`` expressions in a loaded YAML document's string values refer to
    (``$$`` is a literal dollar; comments are not values, so they do not count)."""
    if isinstance(node, str):
        return set(re.findall(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)", node.replace("$$", "")))
    if isinstance(node, list):
        return set().union(*(referenced_names(item) for item in node))
    if isinstance(node, dict):
        return set().union(*(referenced_names(value) for value in node.values()))
    return set()


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))
