"""Waiting out an unreachable dependency (Ollama or PostgreSQL) without burning Camunda retries.

When a call raises ``ServiceUnavailable`` the gate closes: the task that saw it waits with jittered
backoff (holding its lock, which the heartbeat keeps extending) and tries again, and the poll loop
fetches nothing new until the gate opens. The first success, or a successful probe by the poll loop,
opens it again, so work resumes within one backoff delay of the service coming back.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from typing import TypeVar

import structlog

from procos_worker import metrics
from procos_worker.backoff import Backoff
from procos_worker.errors import ServiceUnavailable
from procos_worker.settings import BackoffSettings

__all__ = ["ServiceGate"]

_T = TypeVar("_T")


class ServiceGate:
    """Up/down state and backoff of one dependency, shared by every thread that uses it.

    ``clock`` (monotonic seconds) times an outage for the log; ``draw`` is the backoff's jitter source.
    """

    def __init__(self, name: str, settings: BackoffSettings, probe: Callable[[], object], *,
                 clock: Callable[[], float] = time.monotonic, draw: Callable[[], float] = random.random) -> None:
        self.name = name
        self._probe = probe
        self._clock = clock
        self._backoff = Backoff(settings, draw=draw)
        self._lock = threading.Lock()
        self._down_since: float | None = None
        self._log = structlog.get_logger("procos_worker.gate").bind(service=name)

    @property
    def is_down(self) -> bool:
        return self._down_since is not None

    def call(self, fn: Callable[[], _T], cancel: threading.Event) -> _T:
        """Run ``fn`` until it doesn't raise ``ServiceUnavailable``; re-raise if ``cancel`` is set meanwhile."""
        while True:
            try:
                result = fn()
            except ServiceUnavailable as exc:
                if cancel.wait(self._mark_down(exc)):
                    raise
                continue
            self._mark_up()
            return result

    def wait_until_up(self, stop: threading.Event, on_wait: Callable[[], None] = lambda: None) -> bool:
        """Block while the service is down, probing it with backoff (``on_wait`` each time round).
        False if ``stop`` was set."""
        while self.is_down:
            on_wait()
            if stop.wait(self._next_delay_s()):
                return False
            try:
                self._probe()
            except ServiceUnavailable as exc:
                self._mark_down(exc)
                continue
            self._mark_up()
        return not stop.is_set()

    def _next_delay_s(self) -> float:
        with self._lock:
            return self._backoff.next_delay_s()

    def _mark_down(self, exc: ServiceUnavailable) -> float:
        with self._lock:
            if self._down_since is None:
                self._down_since = self._clock()
                metrics.service_state(self.name, False)
                self._log.warning("service.down", error=exc.message)
            return self._backoff.next_delay_s()

    def _mark_up(self) -> None:
        with self._lock:
            if self._down_since is None:
                return
            down_s = self._clock() - self._down_since
            self._down_since = None
            metrics.service_state(self.name, True)
            self._backoff.reset()
        self._log.info("service.up", down_s=round(down_s, 3))
