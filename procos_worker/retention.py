"""Retention: delete old prompts and answers, never those of a process instance that still runs.

A purge walks procos_ai_context oldest first in batches of ``batch_size`` rows. For the process
instances of each batch it decides, and then deletes the purgeable instances' rows in statements of
at most ``batch_size`` rows each, every one its own short transaction (a dry run only counts them):

- ``older-than``: an instance is purged when its newest row is older than the cutoff (a conversation
  goes whole, never half) and the engine does not list it as running (active or suspended).
- ``history-removed``: an instance is purged when the engine has neither it running nor its
  process-instance history: Camunda's history cleanup removed it, so nobody can reach its answers
  through Camunda any more. An optional age limits it to older rows. It refuses to run against an
  engine whose history is empty (history level ``none`` would make every instance look removed).

The engine is asked, never assumed: when it can't be reached the purge stops (``EngineUnavailable``),
having deleted only what it had checked. ``PurgeSchedule`` runs purges in a worker every
``RETENTION_INTERVAL_S``; of all workers, only the one that gets the PostgreSQL advisory lock purges.
"""

from __future__ import annotations

import threading
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import structlog

from procos_worker import metrics
from procos_worker.engine.client import EngineClient
from procos_worker.errors import ProcosError, PurgeStopped
from procos_worker.settings import Settings
from procos_worker.store.retention import RetentionStore

__all__ = ["PurgeMode", "PurgeReport", "PurgeSchedule", "purge"]

PurgeMode = Literal["older-than", "history-removed"]
# Decisions remembered per run, so an instance whose rows span batches is asked about (and counted) once.
_DECISIONS_KEPT = 100_000


@dataclass
class PurgeReport:
    """What one purge did (or, with ``dry_run``, would do). Instance counts are distinct instances."""

    mode: PurgeMode
    before: datetime
    dry_run: bool
    batch_size: int
    batches: int = 0
    deletes: int = 0
    rows_scanned: int = 0
    rows_purged: int = 0
    instances_purged: int = 0
    instances_running: int = 0
    instances_recent: int = 0
    instances_in_history: int = 0
    elapsed_s: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["before"] = self.before.isoformat()
        return data


def purge(store: RetentionStore, engine: EngineClient, *, mode: PurgeMode, older_than: timedelta | None,
          batch_size: int, dry_run: bool = False, now: datetime | None = None) -> PurgeReport:
    """Run one purge to the end; ``store`` must be open. Raises ``EngineError``, ``StoreUnavailable``
    or ``PurgeStopped`` when it can't go on (the batches before it are done)."""
    if mode == "older-than" and older_than is None:
        raise ValueError("an older-than purge needs an age")
    started = time.monotonic()
    before = (now or datetime.now(UTC)) - (older_than or timedelta(0))
    if mode == "history-removed" and engine.historic_instance_count() == 0:
        raise PurgeStopped("the engine holds no process history at all (history level none?): "
                           "every instance would look removed, so nothing was purged")
    report = PurgeReport(mode=mode, before=before, dry_run=dry_run, batch_size=batch_size)
    decided: dict[str, str] = {}
    after = None
    while rows := store.scan(before, after, batch_size):
        after = (rows[-1].created_at, rows[-1].id)
        report.batches += 1
        report.rows_scanned += len(rows)
        fresh = {row.process_instance_id for row in rows} - decided.keys()
        _decide(store, engine, report, fresh, decided=decided, before=before)
        doomed = {pi for pi in fresh if decided[pi] == "purge"}
        report.rows_purged += store.count(doomed, before) if dry_run else _delete(store, report, doomed, before)
        report.instances_purged += len(doomed)
        if len(decided) > _DECISIONS_KEPT:
            decided.clear()
    report.elapsed_s = round(time.monotonic() - started, 3)
    return report


def _delete(store: RetentionStore, report: PurgeReport, doomed: set[str], before: datetime) -> int:
    """Delete the instances' rows in statements of at most one batch each."""
    limit = max(1, report.batch_size)
    total = 0
    while doomed:
        count = store.delete(doomed, before, limit=limit)
        report.deletes += 1
        metrics.rows_purged(count)
        total += count
        if count < limit:
            break
    return total


def _decide(store: RetentionStore, engine: EngineClient, report: PurgeReport, fresh: set[str], *,
            decided: dict[str, str], before: datetime) -> None:
    """Sort the batch's new instances into purge / recent / running / in-history (in ``decided``)."""
    recent = store.with_rows_since(fresh, before) if report.mode == "older-than" else set()
    running = engine.running_instance_ids(fresh - recent)
    left = fresh - recent - running
    in_history = engine.historic_instance_ids(left) if report.mode == "history-removed" else set()
    report.instances_recent += len(recent)
    report.instances_running += len(running)
    report.instances_in_history += len(in_history)
    for pi in fresh:
        decided[pi] = ("recent" if pi in recent else "running" if pi in running
                       else "in-history" if pi in in_history else "purge")


class PurgeSchedule:
    """A daemon thread that purges at start and then every ``RETENTION_INTERVAL_S``, when this worker
    gets the purge's advisory lock (one purge at a time across all workers and the CLI)."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        w = settings.worker
        self._engine = EngineClient(settings.camunda, w.id, async_response_timeout_ms=0, pool_size=1)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="procos-retention", daemon=True)
        self._log = structlog.get_logger("procos_worker.retention").bind(worker_id=settings.worker.id)

    def start(self) -> None:
        if self._settings.retention.scheduled:
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=self._settings.camunda.http_timeout_s)
        self._engine.close()

    def run_once(self) -> list[PurgeReport] | None:
        """One round: None when another session holds the lock, else what each configured purge did."""
        retention = self._settings.retention
        with RetentionStore(self._settings.database) as store:
            if not store.try_lock():
                self._log.info("retention.skipped", reason="another purge holds the lock")
                return None
            try:
                modes: list[tuple[PurgeMode, timedelta | None]] = []
                if retention.purge_older_than is not None:
                    modes.append(("older-than", retention.purge_older_than))
                if retention.history_removed:
                    modes.append(("history-removed", None))
                return [purge(store, self._engine, mode=mode, older_than=age, batch_size=retention.batch_size)
                        for mode, age in modes]
            finally:
                store.unlock()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                for report in self.run_once() or []:
                    self._log.info("retention.purged", **report.as_dict())
            except ProcosError as exc:
                self._log.warning("retention.failed", error=str(exc))
            self._stop.wait(self._settings.retention.interval_s)
