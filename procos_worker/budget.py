"""One memory budget for the inputs of all tasks in flight (TASK_MAX_INPUT_CHARS_IN_FLIGHT).

TASK_MAX_INPUT_CHARS bounds one task; this bounds their sum, so that several large inputs arriving
together are worked one after another instead of being held at once. A task whose inputs don't fit
waits (its lock kept alive by the heartbeat) until others give their share back; a run given up while
it waits raises ``RunCancelled``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from procos_worker.errors import RunCancelled

__all__ = ["InputBudget"]

_CANCEL_CHECK_S = 0.2


class InputBudget:
    """Characters of input held by tasks in flight, at most ``capacity``."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.used = 0
        self._cond = threading.Condition()

    @contextmanager
    def reserve(self, chars: int, cancel: threading.Event,
                on_wait: Callable[[int], None] | None = None) -> Iterator[None]:
        """Hold ``chars`` of the budget for the block; wait while it is spent (``on_wait(used)`` once)."""
        chars = min(chars, self.capacity)  # one task always fits (TASK_MAX_INPUT_CHARS <= the capacity)
        with self._cond:
            waited = False
            while self.used + chars > self.capacity:
                if not waited and on_wait is not None:
                    on_wait(self.used)
                waited = True
                if cancel.is_set():
                    raise RunCancelled("the run was given up while waiting for input memory")
                self._cond.wait(_CANCEL_CHECK_S)
            self.used += chars
        try:
            yield
        finally:
            with self._cond:
                self.used -= chars
                self._cond.notify_all()
