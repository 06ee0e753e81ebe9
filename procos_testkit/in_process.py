"""A ``Worker`` in a thread of the test process: on the real clients (integration tests) or on the
in-memory doubles (unit tests of the threads, where it is built by ``worker_on_doubles``).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from procos_testkit.clock import FakeClock
from procos_testkit.memory_engine import InMemoryEngine
from procos_testkit.memory_llm import ScriptedLlm
from procos_testkit.memory_store import InMemoryLeases, InMemoryModels, InMemoryStore
from procos_worker.settings import Settings
from procos_worker.worker import Worker

__all__ = ["Doubles", "RunningWorker", "worker_on_doubles"]


class RunningWorker:
    """A Worker serving in a background thread of the test process."""

    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        self.exit_code: int | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        self.exit_code = self.worker.run(install_signal_handlers=False)

    def start(self) -> RunningWorker:
        self._thread.start()
        return self

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def stop(self, timeout_s: float = 60.0) -> int | None:
        self.worker.stop()
        self._thread.join(timeout_s)
        assert not self._thread.is_alive(), "worker did not stop"
        return self.exit_code


@dataclass
class Doubles:
    """The worker's neighbours in memory (engine, context store, model table, leases, LLM), sharing one fake
    clock."""

    clock: FakeClock = field(default_factory=FakeClock)
    engine: InMemoryEngine = field(init=False)
    store: InMemoryStore = field(default_factory=InMemoryStore)
    models: InMemoryModels = field(default_factory=InMemoryModels)
    llm: ScriptedLlm = field(default_factory=ScriptedLlm)
    leases: InMemoryLeases = field(init=False)

    def __post_init__(self) -> None:
        self.engine = InMemoryEngine(clock=self.clock)
        self.leases = InMemoryLeases(self.clock)


def worker_on_doubles(settings: Settings, doubles: Doubles, *, draw: Callable[[], float] = lambda: 0.5,
                      sleep: Callable[[float], None] = lambda _s: None,
                      exit_process: Callable[[int], object] = lambda _code: None,
                      health_interval_s: float = 2.0) -> Worker:
    """A Worker on the doubles: the engine serves ``settings.worker.id`` with its lock duration, jitter
    is off (``draw`` 0.5), a report retry does not sleep, and a second signal does not end the process."""
    doubles.engine.worker_id = settings.worker.id
    doubles.engine.lock_duration_ms = settings.worker.lock_duration_ms
    return Worker(settings, engine=doubles.engine, store=doubles.store, llm=doubles.llm, models=doubles.models,
                  leases=doubles.leases, clock=doubles.clock, draw=draw, sleep=sleep, exit_process=exit_process,
                  health_interval_s=health_interval_s)
