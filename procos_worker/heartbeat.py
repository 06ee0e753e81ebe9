"""Keeps the locks of running tasks alive, and notices when one is lost.

A generation can outlast the lock many times over. Each tick, every held task whose lock runs out
within half its lock duration (the topic's: ``TaskRun.lock_duration_ms``) gets ``extendLock``, each in
a daemon thread of its own (at most one per task at a time): one slow call (a hung connection) does not
let the other tasks' locks run out, and does not hold the process at exit either. What the engine
answers decides:

* the lock is another worker's, or the task is gone (``LockLost``): the run is marked LOST, which stops
  its work (the LLM call honours the run's ``cancel``); it will not be reported;
* the lock expired or was released and nobody holds the task (``LockExpired``): it is locked again
  (``lock``): a run whose answer is stored or coming is never thrown away for a late extension;
* anything else (unreachable, 5xx, 401/403/429): not a lost lock; tried again next tick (``complete``
  does not check the lock's expiry, only the worker id).

Liveness (``on_tick``, read by ``/healthz``): a tick counts as progress only while no extension has been
in flight for longer than its lock's duration: a call hung that long (a wedged connection to the engine)
can't keep that lock, and the loop is reported as making no progress until it returns.
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Callable

import structlog
from structlog.stdlib import BoundLogger

from procos_worker import metrics
from procos_worker.engine.api import EngineApi
from procos_worker.errors import EngineError, EngineUnavailable, LockExpired, LockLost
from procos_worker.taskrun import RunState, TaskRun

__all__ = ["Heartbeat"]


class Heartbeat:
    """A daemon thread deciding which locks of the runs ``snapshot()`` returns to extend, and one
    short-lived daemon thread per extension; ``clock`` is the monotonic time the runs' lock expiry is
    measured in."""

    def __init__(self, engine: EngineApi, snapshot: Callable[[], list[TaskRun]], shortest_lock_duration_ms: int, *,
                 clock: Callable[[], float] = time.monotonic, on_tick: Callable[[], None] = lambda: None,
                 start_extension: Callable[[Callable[[], None], str], object] | None = None) -> None:
        """``shortest_lock_duration_ms``: the shortest lock of any topic (it sets how often to look);
        each task's lock is extended by its own topic's duration (``TaskRun.lock_duration_ms``).
        ``start_extension(call, name)`` runs one extension: by default in a daemon thread of its own
        (tests may run it in place)."""
        self._engine = engine
        self._on_tick = on_tick  # liveness: the loop came round (health.Progress)
        self._snapshot = snapshot
        self._clock = clock
        self._start_extension = start_extension or _in_daemon_thread
        self._tick_s = min(1.0, shortest_lock_duration_ms / 4000)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="procos-heartbeat", daemon=True)
        # Task ids with an extension in flight (never two at once): when it started, how long it may take.
        self._busy: dict[str, tuple[float, float]] = {}
        self._busy_lock = threading.Lock()
        self._log = structlog.get_logger("procos_worker.heartbeat")

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def tick(self) -> None:
        """One pass: start an extension of every held lock that is due and has none in flight (the
        thread calls this every tick)."""
        now = self._clock()
        if not self._stuck(now):
            self._on_tick()
        for run in self._snapshot():
            if run.state in (RunState.RUNNING, RunState.REPORTING) and self._due(run, now) and self._claim(run):
                self._start_extension(functools.partial(self._extend_then_release, run),
                                      f"procos-extend-{run.task.id[:8]}")

    def _loop(self) -> None:
        while not self._stop.wait(self._tick_s):
            self.tick()

    def _due(self, run: TaskRun, now: float) -> bool:
        return run.lock_expires_at - now < run.lock_duration_ms / 2000

    def _claim(self, run: TaskRun) -> bool:
        with self._busy_lock:
            if run.task.id in self._busy:
                return False
            self._busy[run.task.id] = (self._clock(), run.lock_duration_ms / 1000)
            return True

    def _stuck(self, now: float) -> bool:
        with self._busy_lock:
            return any(now - started > limit_s for started, limit_s in self._busy.values())

    def _extend_then_release(self, run: TaskRun) -> None:
        try:
            self._extend(run)
        finally:
            with self._busy_lock:
                self._busy.pop(run.task.id, None)

    def _extend(self, run: TaskRun) -> None:
        log = self._log.bind(task_id=run.task.id, process_instance_id=run.task.process_instance_id,
                             topic=run.task.topic)
        try:
            self._engine.extend_lock(run.task.id, run.lock_duration_ms)
        except LockExpired as exc:
            if not self._relock(run, exc, log):
                return
        except LockLost as exc:
            self._lost(run, exc, log)
            return
        except EngineError as exc:
            # Unreachable, refused (5xx), 401/403/429: not a lost lock. Try again next tick.
            level = log.debug if isinstance(exc, EngineUnavailable) else log.warning
            level("task.lock_extend_failed", error=exc.message)
            return
        run.lock_expires_at = self._clock() + run.lock_duration_ms / 1000
        metrics.lock_extended(run.task.topic)
        log.debug("task.lock_extended", elapsed_s=run.elapsed_s())

    def _relock(self, run: TaskRun, expired: LockExpired, log: BoundLogger) -> bool:
        """The lock ran out and nobody holds the task: take it again. False if that did not work."""
        try:
            self._engine.lock(run.task.id, run.lock_duration_ms)
        except LockLost as exc:
            self._lost(run, exc, log)
            return False
        except EngineError as exc:
            log.warning("task.lock_extend_failed", error=exc.message)
            return False
        log.warning("task.lock_renewed", reason=expired.message, elapsed_s=run.elapsed_s())
        return True

    def _lost(self, run: TaskRun, exc: LockLost, log: BoundLogger) -> None:
        if run.give_up(RunState.LOST):
            metrics.lock_lost(run.task.topic)
            log.warning("task.lock_lost", error=str(exc), elapsed_s=run.elapsed_s())


def _in_daemon_thread(call: Callable[[], None], name: str) -> None:
    # A daemon: an extension hanging on a dead connection must not hold the process at exit.
    threading.Thread(target=call, name=name, daemon=True).start()
