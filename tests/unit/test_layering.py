"""Which module of procos_worker may import which, read from the source with ``ast``.

The floors, lowest first (a module may import its own floor and the floors below, except where said):

* base: the top-level modules in ``BASE``; import nothing of the project but each other.
* clients: every module in ``engine/``, ``ai/`` and ``store/``; import base and their own folder only.
* pipeline: the top-level modules in ``PIPELINE``; import base, the clients and pipeline modules listed
  before them.
* ops: every module in ``ops/``; may import anything. Nothing imports ops but ``__main__``.

A new module in one of the folders fits by its folder; a new top-level module must be put in ``BASE``
or ``PIPELINE`` (the test says so). Imports under ``TYPE_CHECKING`` and inside functions count: they are
still dependencies. The runtime never imports the test doubles or the benchmarks.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator, Mapping
from pathlib import Path

PACKAGE = "procos_worker"
ROOT = Path(__file__).resolve().parents[2]
BASE = ("settings", "errors", "models", "textcodec", "backoff", "health", "metrics", "fingerprint", "runners")
PIPELINE = ("inputs", "flags", "outcomes", "gate", "taskrun", "heartbeat", "prompting", "handler", "budget", "orphans",
            "worker", "retention")
CLIENT_FOLDERS = ("engine", "ai", "store")
OPS_FOLDER = "ops"
OUTSIDE_THE_RUNTIME = ("procos_testkit", "procos_bench")
_BELOW_OPS = frozenset({"base", *CLIENT_FOLDERS, "pipeline"})
# floor -> the floors its modules may import ("package" is procos_worker/__init__.py, the lazy public
# API; "entry" is __main__). Pipeline modules may import only the pipeline modules listed before them.
MAY_IMPORT: dict[str, frozenset[str]] = {
    "base": frozenset({"base"}),
    **{folder: frozenset({"base", folder}) for folder in CLIENT_FOLDERS},
    "pipeline": _BELOW_OPS,
    "package": _BELOW_OPS,
    "ops": _BELOW_OPS | {"ops"},
    "entry": _BELOW_OPS | {"ops"},
}


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules(root: Path, package: str = PACKAGE) -> dict[str, Path]:
    return {module_name(path, root): path for path in sorted((root / package).rglob("*.py"))}


def imports_of(name: str, path: Path, known: Mapping[str, Path]) -> Iterator[str]:
    """Every module ``name`` imports (project modules resolved to the module, not the name imported)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                # `from procos_worker.engine import client` imports the module procos_worker.engine.client
                yield f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base


def floor(name: str) -> str:
    """The floor of one module of the package; AssertionError for a module on no floor."""
    parts = name.split(".")[1:]
    if not parts:
        return "package"
    if parts == ["__main__"]:
        return "entry"
    if parts[0] in CLIENT_FOLDERS:
        return parts[0]
    if parts[0] == OPS_FOLDER:
        return "ops"
    if len(parts) == 1 and parts[0] in BASE:
        return "base"
    if len(parts) == 1 and parts[0] in PIPELINE:
        return "pipeline"
    raise AssertionError(f"{name} is on no floor: add it to BASE or PIPELINE in {__name__}, or put it in "
                         f"one of {', '.join((*CLIENT_FOLDERS, OPS_FOLDER))}/")


def allowed(importer: str, imported: str) -> bool:
    """May ``importer`` import ``imported`` (both modules of the package)?"""
    mine, theirs = floor(importer), floor(imported)
    if theirs not in MAY_IMPORT[mine]:
        return False
    if mine == theirs == "pipeline":
        return PIPELINE.index(imported.split(".")[1]) < PIPELINE.index(importer.split(".")[1])
    return True


def violations(graph: Mapping[str, set[str]]) -> list[str]:
    found = []
    for importer, imported in sorted(graph.items()):
        for target in sorted(imported):
            if target.split(".")[0] in OUTSIDE_THE_RUNTIME:
                found.append(f"{importer} imports {target}: test doubles and benchmarks are not in the runtime")
            elif target.split(".")[0] == PACKAGE and target != importer and not allowed(importer, target):
                found.append(f"{importer} ({floor(importer)}) imports {target} ({floor(target)})")
    return found


def cycles(graph: Mapping[str, set[str]]) -> list[list[str]]:
    found: list[list[str]] = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                found.append([*path[path.index(nxt):], nxt])
            elif nxt in graph and nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    return found


def import_graph(root: Path = ROOT) -> dict[str, set[str]]:
    known = modules(root)
    return {name: {imp for imp in imports_of(name, path, known)
                   if imp.split(".")[0] in (PACKAGE, *OUTSIDE_THE_RUNTIME)} for name, path in known.items()}


def test_every_module_is_on_a_floor_and_imports_only_what_its_floor_may() -> None:
    graph = import_graph()
    for name in graph:
        floor(name)
    # The graph is read from the source: a few edges that must be in it.
    assert {"procos_worker.handler", "procos_worker.engine.client"} <= graph["procos_worker.worker"]
    assert "procos_worker.engine.api" in graph["procos_worker.heartbeat"]
    assert "procos_worker.ops.cli" in graph["procos_worker.__main__"]
    assert violations(graph) == []


def test_no_import_cycles() -> None:
    assert cycles(import_graph()) == []


def test_the_rules_catch_what_they_forbid() -> None:
    """The checks themselves: each forbidden kind of import is reported."""
    graph = {
        "procos_worker.errors": {"procos_worker.engine.client"},               # base importing a client
        "procos_worker.engine.client": {"procos_worker.worker",                # a client importing the pipeline
                                        "procos_worker.store.context"},        # ... or another client
        "procos_worker.ai.template": {"procos_worker.ai.taskconfig"},          # fine: its own folder
        "procos_worker.gate": {"procos_worker.handler"},                       # pipeline importing upward
        "procos_worker.handler": {"procos_worker.gate", "procos_worker.ops.metrics",  # fine; ops: no
                                  "procos_testkit.clock"},                     # the runtime importing doubles
        "procos_worker.ops.http": {"procos_worker.worker", "procos_worker.ops.metrics"},  # fine
        "procos_worker.__main__": {"procos_worker.ops.cli"},                   # fine
    }
    assert violations(graph) == [
        "procos_worker.engine.client (engine) imports procos_worker.store.context (store)",
        "procos_worker.engine.client (engine) imports procos_worker.worker (pipeline)",
        "procos_worker.errors (base) imports procos_worker.engine.client (engine)",
        "procos_worker.gate (pipeline) imports procos_worker.handler (pipeline)",
        "procos_worker.handler imports procos_testkit.clock: test doubles and benchmarks are not in the runtime",
        "procos_worker.handler (pipeline) imports procos_worker.ops.metrics (ops)",
    ]
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]


def test_a_module_outside_the_floors_is_named() -> None:
    try:
        floor("procos_worker.newthing")
    except AssertionError as exc:
        assert "add it to BASE or PIPELINE" in str(exc)
    else:
        raise AssertionError("a top-level module on no floor must fail the test")


def test_the_doubles_do_not_import_the_benchmarks() -> None:
    testkit = modules(ROOT, "procos_testkit")
    for name, path in testkit.items():
        assert not [imp for imp in imports_of(name, path, testkit) if imp.startswith("procos_bench")], name
