"""A monotonic clock that moves only when a test says so (for ``Worker(clock=...)`` and the doubles)."""

from __future__ import annotations

import threading

__all__ = ["FakeClock"]


class FakeClock:
    """Callable like ``time.monotonic``; ``advance`` moves it. Thread-safe."""

    def __init__(self, start_s: float = 1_000.0) -> None:
        self._now = start_s
        self._lock = threading.Lock()

    def __call__(self) -> float:
        with self._lock:
            return self._now

    def advance(self, seconds: float) -> None:
        with self._lock:
            self._now += seconds
