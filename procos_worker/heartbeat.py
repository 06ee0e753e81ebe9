"""Keeps the locks of running tasks alive, and notices when one is lost.

A generation can outlast the lock many times over. Each tick, every held task whose lock runs out
within half its lock duration (the topic's: ``TaskRun.lock_duration_ms``) gets ``extendLock`` for
another lock duration. When the engine answers that the lock is gone
(expired and taken, or the task deleted) the task is marked LOST: it will not be completed.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import structlog

from procos_worker import metrics
from procos_worker.engine.api import EngineApi
from procos_worker.errors import EngineError, EngineUnavailable
from procos_worker.taskrun import RunState, TaskRun

__all__ = ["Heartbeat"]


class Heartbeat:
    """A daemon thread extending locks for the runs ``snapshot()`` returns; ``clock`` is the
    monotonic time the runs' lock expiry is measured in."""

    def __init__(self, engine: EngineApi, snapshot: Callable[[], list[TaskRun]], shortest_lock_duration_ms: int, *,
                 clock: Callable[[], float] = time.monotonic, on_tick: Callable[[], None] = lambda: None) -> None:
        """``shortest_lock_duration_ms``: the shortest lock of any topic (it sets how often to look);
        each task's lock is extended by its own topic's duration (``TaskRun.lock_duration_ms``)."""
        self._engine = engine
        self._on_tick = on_tick  # liveness: the loop came round (health.Progress)
        self._snapshot = snapshot
        self._clock = clock
        self._tick_s = min(1.0, shortest_lock_duration_ms / 4000)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="procos-heartbeat", daemon=True)
        self._log = structlog.get_logger("procos_worker.heartbeat")

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def tick(self) -> None:
        """One pass: extend every held lock that is due (the thread calls this every tick)."""
        self._on_tick()
        now = self._clock()
        for run in self._snapshot():
            if run.state in (RunState.RUNNING, RunState.REPORTING) and self._due(run, now):
                self._extend(run)

    def _loop(self) -> None:
        while not self._stop.wait(self._tick_s):
            self.tick()

    def _due(self, run: TaskRun, now: float) -> bool:
        return run.lock_expires_at - now < run.lock_duration_ms / 2000

    def _extend(self, run: TaskRun) -> None:
        log = self._log.bind(task_id=run.task.id, process_instance_id=run.task.process_instance_id,
                             topic=run.task.topic)
        try:
            self._engine.extend_lock(run.task.id, run.lock_duration_ms)
        except EngineUnavailable as exc:
            # The engine is down; try again next tick. complete() does not check expiry anyway.
            log.debug("task.lock_extend_failed", error=exc.message)
            return
        except EngineError as exc:  # lock lost, or the engine refused the extension
            if run.give_up(RunState.LOST):
                metrics.lock_lost(run.task.topic)
                log.warning("task.lock_lost", error=str(exc), elapsed_s=run.elapsed_s())
            return
        run.lock_expires_at = self._clock() + run.lock_duration_ms / 1000
        metrics.lock_extended(run.task.topic)
        log.debug("task.lock_extended", elapsed_s=run.elapsed_s())
