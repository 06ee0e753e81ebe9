"""What the tests of the worker's threads (``test_worker.py``, ``test_worker_faults.py``) share besides
their fixtures (``conftest.py``): waiting for an event, and picking log events."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from procos_testkit.engine import wait_until

Logs = list[dict[str, Any]]


def soon(predicate: Callable[[], object], what: str) -> None:
    """Wait (5 s at most, polling every ms) until ``predicate()`` is true."""
    wait_until(predicate, 5.0, what, interval_s=0.001)


def events(logs: Logs, name: str, **fields: Any) -> Logs:
    """The captured events called ``name`` whose fields include ``fields``."""
    return [e for e in logs if e["event"] == name and all(e.get(k) == v for k, v in fields.items())]
