"""Orphan recovery: a dead worker's tasks back in work within seconds, not after their lock.

Camunda 7 keeps a task locked for its whole lock duration (60 s by default) when the worker holding it
dies (kill -9, OOM, a lost node), and a long poll that was still pending in the engine when a worker died
goes on to lock the next new task for it. No Camunda 7 worker recovers these; this one does:

* every worker keeps a lease in PostgreSQL (``procos_worker_leases``), renewed every ORPHANS_INTERVAL_S;
* a worker that renewed nothing for ORPHANS_LEASE_S is dead: a live worker asks the engine for the tasks
  locked by its id (``GET /external-task?workerId=...&locked=true``) and unlocks them; it keeps doing so
  until the dead worker's last long poll (WORKER_ASYNC_RESPONSE_TIMEOUT_MS) has surely ended;
* a clean stop marks the lease expired at once, so the same sweep covers a task its last poll locks.

Never a live worker's task: only ids whose lease expired are swept (the row stays locked while it is, and
a late beat waits for that); a lock with less than ``_MIN_LOCK_LEFT_S`` left (by the engine's clock) is left
to expire by itself, since between the query and the unlock it could pass to a live worker. A worker only
judges others after its own lease has been renewed for a full ORPHANS_LEASE_S (after a database outage
every lease looks expired; the others get that long to beat again). A worker that stalled past its lease
(SIGSTOP, a frozen VM) counts as dead: when it wakes its locks are gone or taken, which its heartbeat and
reports handle (it completes nothing a second time; the answer store is exactly once per attempt).
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable

import structlog

from procos_worker import metrics
from procos_worker.engine.api import EngineApi
from procos_worker.errors import EngineError, PermanentError, ProcosError
from procos_worker.health import Counters
from procos_worker.settings import Settings
from procos_worker.store.api import LeaseApi

__all__ = ["OrphanRecovery"]

# A lock with less than this left (engine clock, 1 s resolution) expires by itself; unlocking it could race
# a live worker that fetches it meanwhile.
_MIN_LOCK_LEFT_S = 3.0


class OrphanRecovery:
    """This worker's lease, and the sweep of dead workers' tasks (one daemon thread). ``clock`` (monotonic
    seconds) times how long this worker has been healthy; the leases' own times are the database's."""

    def __init__(self, settings: Settings, engine: EngineApi, leases: LeaseApi, counters: Counters, *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._id = settings.worker.id
        self._topics = settings.worker.topics
        self._lease_s = settings.orphans.lease_s
        self._interval_s = settings.orphans.interval_s
        # After its lease expires a dead worker's last long poll may still lock a task.
        self._sweep_s = settings.worker.async_response_timeout_ms / 1000 + 2 * self._interval_s + _MIN_LOCK_LEFT_S
        self._engine = engine
        self._leases = leases
        self._counters = counters
        self._clock = clock
        self._healthy_since: float | None = None
        self._had_lease = False
        self._disabled = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="procos-lease", daemon=True)
        self._log = structlog.get_logger("procos_worker.orphans").bind(worker_id=self._id)

    def start(self) -> None:
        """Take the lease before the first fetch (if the database answers), then keep it in the background."""
        self._beat()
        self._thread.start()

    def stop(self, *, clean: bool) -> None:
        """Stop renewing; ``clean``: mark the lease expired now so others sweep what our last poll locks."""
        self._stop.set()
        if self._thread.ident is not None:  # started (a worker that failed before serving never was)
            self._thread.join(timeout=self._interval_s + 5)
        if clean and not self._disabled:
            try:
                self._leases.release(self._id, sweep_s=self._sweep_s)
            except ProcosError as exc:
                self._log.warning("worker.lease_release_failed", error=exc.message)

    def tick(self) -> None:
        """One beat, and one sweep of dead workers once this worker has been alive long enough to judge."""
        self._beat()
        if self._disabled or self._healthy_since is None:
            return
        if self._clock() - self._healthy_since < self._lease_s:
            return
        try:
            self._leases.reap(self._id, self._sweep)
        except ProcosError as exc:
            self._log.warning("orphans.scan_failed", error=exc.message)

    def _loop(self) -> None:
        while not self._disabled and not self._stop.wait(self._interval_s):
            self.tick()

    def _beat(self) -> None:
        if self._disabled:
            return
        try:
            expired = self._leases.beat(self._id, host=socket.gethostname(), pid=os.getpid(), topics=self._topics,
                                        lease_s=self._lease_s, sweep_s=self._sweep_s)
        except PermanentError as exc:
            # The table is missing (schema behind) or the role may not write it: recovery can't work here.
            self._disabled = True
            self._log.error("orphans.disabled", error=exc.message, hint="procos-worker init-db applies migration 0021")
            return
        except ProcosError as exc:
            self._healthy_since = None
            self._log.warning("worker.lease_beat_failed", error=exc.message)
            return
        if self._healthy_since is None:
            self._healthy_since = self._clock()
        if expired or (expired is None and self._had_lease):
            # Others took us for dead meanwhile and may have unlocked our tasks (the heartbeat locks them again
            # where nobody else took them).
            self._log.warning("worker.lease_expired", lease_s=self._lease_s)
        self._had_lease = True

    def _sweep(self, dead_id: str) -> None:
        try:
            locked = self._engine.locked_tasks(dead_id)
        except EngineError as exc:
            self._log.warning("orphans.query_failed", dead_worker_id=dead_id, error=exc.message)
            return
        for task_id, left_s in locked:
            if left_s is None or left_s < _MIN_LOCK_LEFT_S:
                continue
            try:
                self._engine.unlock(task_id)
            except EngineError as exc:
                self._log.warning("task.orphan_release_failed", task_id=task_id, dead_worker_id=dead_id,
                                  error=exc.message)
                continue
            self._counters.add("reclaimed")
            metrics.orphans_reclaimed(1)
            self._log.info("task.orphan_released", task_id=task_id, dead_worker_id=dead_id,
                           lock_left_s=round(left_s, 1))
