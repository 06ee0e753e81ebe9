"""What the in-memory doubles share: a record of the calls they got, and failures a test scripts.

A test makes a double fail the way the real service would: ``double.fail("complete", LockLost(...))``
raises that error from the next ``complete`` call (several errors: the next several calls, in
order); ``double.down = True`` makes every call raise the service's "unreachable" error until it is
set back to False.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Call", "Scripted"]


@dataclass(frozen=True)
class Call:
    """One call a double received: its name and its arguments."""

    name: str
    args: dict[str, Any] = field(default_factory=dict)


class Scripted:
    """Base of the doubles. ``unreachable`` builds the error a call raises while ``down``."""

    def __init__(self, unreachable: Callable[[str], BaseException]) -> None:
        self.down = False
        self.calls: list[Call] = []
        self._unreachable = unreachable
        self._failures: dict[str, deque[BaseException]] = {}
        self._calls_lock = threading.Lock()

    def fail(self, call: str, *errors: BaseException) -> None:
        """The next ``len(errors)`` calls named ``call`` raise these errors, in order."""
        with self._calls_lock:
            self._failures.setdefault(call, deque()).extend(errors)

    def calls_to(self, name: str) -> list[Call]:
        with self._calls_lock:
            return [c for c in self.calls if c.name == name]

    def _called(self, name: str, **args: Any) -> None:
        """Record the call, then raise what the test scripted for it (if anything)."""
        with self._calls_lock:
            self.calls.append(Call(name, args))
            queued = self._failures.get(name)
            error = queued.popleft() if queued else None
        if error is not None:
            raise error
        if self.down:
            raise self._unreachable(name)
