"""Jittered exponential backoff, one instance per unreachable service.

Pure arithmetic: the caller passes the random draw, so tests are deterministic. Delays grow
``initial * multiplier**n`` up to ``max`` and each is spread by +/- ``jitter`` so that many workers
coming back together don't hit a recovering service in lockstep.
"""

from __future__ import annotations

import random
from collections.abc import Callable

from procos_worker.settings import BackoffSettings

__all__ = ["Backoff"]


class Backoff:
    """Delays for consecutive failures of one service; ``reset()`` after a success."""

    def __init__(self, settings: BackoffSettings, *, draw: Callable[[], float] = random.random) -> None:
        self._settings = settings
        self._draw = draw
        self.failures = 0

    def next_delay_s(self) -> float:
        """The delay before the next try, and count one more failure."""
        s = self._settings
        base = min(s.max_s, s.initial_s * s.multiplier**self.failures)
        self.failures += 1
        spread = base * s.jitter * (2 * self._draw() - 1)
        return max(0.0, min(s.max_s, base + spread))

    def reset(self) -> None:
        self.failures = 0
