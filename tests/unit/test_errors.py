"""The error tree is one truth: the docstring of ``errors`` draws the classes as they are, the README's
"Outcomes and errors" table names every class with the outcome the tree gives it, and every route of
a handler error through ``outcome_for`` is the one the tree promises. (The worker's routes for the
other branches, wait / retry / abandon, are in ``test_worker.py``.)"""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest

from procos_worker import errors
from procos_worker.models import BpmnError, Failure, Task
from procos_worker.outcomes import outcome_for
from procos_worker.settings import Settings, WorkerSettings

ROOT = Path(__file__).resolve().parents[2]
_CLASS = re.compile(r"^(?P<name>[A-Z]\w*)(?:\s+(?P<text>.*))?$")
_OUTCOME = re.compile(r"^-> (?P<outcome>[^:]+):")


def _tree(doc: str) -> dict[str, tuple[str | None, str]]:
    """The class tree drawn in ``doc``: name -> (parent name, its own text, continuation lines joined)."""
    block = doc.split("::\n", 1)[1].strip("\n").split("\n\n", 1)[0]
    found: dict[str, tuple[str | None, str]] = {}
    stack: list[str] = []
    last = ""
    for line in block.splitlines():
        drawn = line.lstrip(" │├└─")
        match = _CLASS.match(drawn) if ("── " in line or not stack) else None
        if match is None:  # a continuation of the last class's text
            found[last] = (found[last][0], f"{found[last][1]} {drawn.strip()}")
            continue
        depth = (len(line) - len(drawn) - 4) // 4
        del stack[depth:]
        found[match["name"]] = (stack[-1] if stack else None, match["text"] or "")
        stack.append(match["name"])
        last = match["name"]
    return found


def _outcomes(tree: dict[str, tuple[str | None, str]]) -> dict[str, str]:
    """Class -> outcome word, its own (``-> word:``) or inherited from the nearest class above."""
    result: dict[str, str] = {}
    for name in tree:
        cls: str | None = name
        while cls is not None:
            own = _OUTCOME.match(tree[cls][1])
            if own:
                result[name] = own["outcome"]
                break
            cls = tree[cls][0]
    return result


def _readme_rows() -> list[dict[str, str]]:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Outcomes and errors", 1)[1].split("\n## ", 1)[0]
    lines = [line for line in section.splitlines() if line.startswith("|")]
    header = [cell.strip() for cell in lines[0].strip("|").split("|")]
    return [dict(zip(header, (cell.strip() for cell in line.strip("|").split("|")), strict=True))
            for line in lines[2:]]


TREE = _tree(errors.__doc__ or "")
OUTCOMES = _outcomes(TREE)


def test_the_docstring_draws_every_class_under_its_real_parent() -> None:
    classes = {name: getattr(errors, name) for name in errors.__all__}
    assert set(TREE) == set(classes), "the tree and __all__ list the same classes"
    for name, (parent, _text) in TREE.items():
        base = classes[name].__bases__[0].__name__
        assert (parent or "Exception") == base, f"{name}: drawn under {parent}, derives from {base}"
    assert {name for name, cls in inspect.getmembers(errors, inspect.isclass)
            if issubclass(cls, Exception) and cls.__module__ == errors.__name__} == set(classes)


def test_the_parser_reads_the_tree_it_is_given() -> None:
    doc = "x\n\n::\n\n    Root\n    ├── A                  -> one: text\n    │   └── B              more\n" \
          "    │                      and more\n    └── C                  no outcome\n\nafter\n"
    tree = _tree(doc)
    assert tree == {"Root": (None, ""), "A": ("Root", "-> one: text"), "B": ("A", "more and more"),
                    "C": ("Root", "no outcome")}
    assert _outcomes(tree) == {"A": "one", "B": "one"}


def test_every_class_with_an_outcome_is_in_the_readme_table_with_that_outcome() -> None:
    named: dict[str, str] = {}
    for row in _readme_rows():
        for name in re.findall(r"`([A-Z]\w+)`", row["error class"]):
            assert name in TREE, f"README names {name}, which errors.py does not define"
            assert row["outcome"] == OUTCOMES.get(name), (
                f"README: {name} -> {row['outcome']!r}; errors.py: {OUTCOMES.get(name)!r}")
            named[name] = row["outcome"]
    assert set(named) == set(OUTCOMES), f"missing from the README table: {sorted(set(OUTCOMES) - set(named))}"
    assert {"ProcosError", "TaskError", "EngineError"}.isdisjoint(OUTCOMES), "the roots have no single outcome"


# -- outcome_for: every handler error takes the route the tree draws ------------------------------------

SETTINGS = Settings(worker=WorkerSettings(retries=3, retry_timeout_ms=1000, retry_timeout_max_ms=8000))
TASK = Task(id="t", topic="ai-query", worker_id="w", process_instance_id="p", retries=None)
TASK_ERRORS = [cls for name in errors.__all__ if issubclass(cls := getattr(errors, name), errors.TaskError)
               and cls is not errors.TaskError]


@pytest.mark.parametrize("cls", TASK_ERRORS, ids=lambda cls: cls.__name__)
def test_every_handler_error_has_the_outcome_of_its_branch(cls: type[errors.TaskError]) -> None:
    outcome = outcome_for(cls("what happened", details="the whole story"), TASK, SETTINGS)
    expected = OUTCOMES[cls.__name__]
    if expected == "BPMN error":
        assert issubclass(cls, errors.BusinessError)
        code = SETTINGS.task.input_error_code if issubclass(cls, errors.InputError) else cls.code
        assert outcome == BpmnError(code=code, message="what happened")
    elif expected == "failure":
        assert outcome == Failure(message="what happened", details="the whole story", retries=2,
                                  retry_timeout_ms=1000)
    else:
        assert expected == "incident"
        assert outcome == Failure(message="what happened", details="the whole story", retries=0,
                                  retry_timeout_ms=0)


def test_only_handler_errors_go_through_outcome_for() -> None:
    """The other branches never reach it: ServiceUnavailable waits, RunCancelled stops a run that is no
    longer ours, engine errors happen while reporting or keeping the lock. Their routes are tested on the
    worker (tests/unit/test_worker.py) and the heartbeat (tests/unit/test_heartbeat.py)."""
    assert set(OUTCOMES) - {c.__name__ for c in TASK_ERRORS} == {
        "RunCancelled", "ServiceUnavailable", "LlmUnavailable", "LlmAuthFailed", "StoreUnavailable",
        "EngineUnavailable", "EngineRefused", "EngineRejected", "EngineAuthFailed", "LockExpired", "LockLost",
        "PurgeStopped"}
    with pytest.raises(TypeError):
        outcome_for(errors.TaskError("neither input, transient nor permanent"), TASK, SETTINGS)
