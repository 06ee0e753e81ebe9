"""The PostgreSQL side of retention: scan procos_ai_context oldest first, delete in small batches.

One session of its own (``RetentionStore``): it holds the purge's advisory lock (one purge at a time,
whether scheduled in a worker or run by ``procos-worker purge``), and runs with a short
``lock_timeout`` so a purge never queues behind, or makes others queue behind, a long lock. Each
statement is its own short transaction: a delete takes row locks on at most one batch, never a table lock.
The engine side (which instances still run) is ``procos_worker.retention``.

psycopg errors are converted here: unreachable -> ``StoreUnavailable``; a lock or statement timeout, or
anything else PostgreSQL refuses -> ``PurgeStopped``.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import psycopg

from procos_worker.errors import PurgeStopped, StoreUnavailable
from procos_worker.settings import DatabaseSettings

__all__ = ["PURGE_LOCK_KEY", "RetentionStore", "ScannedRow"]

# pg_advisory_lock key of the purge ("procosP" in ASCII); migrations use "procos".
PURGE_LOCK_KEY = 0x70726F636F7350
_FIRST_KEY = (datetime(1, 1, 1, tzinfo=UTC), UUID(int=0))
# A purge waits at most this long for a row lock, and no statement runs longer than the timeout.
_LOCK_TIMEOUT = "2s"
_STATEMENT_TIMEOUT = "60s"


@dataclass(frozen=True, slots=True)
class ScannedRow:
    created_at: datetime
    id: UUID
    process_instance_id: str


class RetentionStore:
    """One autocommit session on the ProcOS database for a purge run."""

    def __init__(self, settings: DatabaseSettings) -> None:
        self._settings = settings
        self._conn: psycopg.Connection[Any] | None = None

    def __enter__(self) -> RetentionStore:
        with self._converting():
            self._conn = psycopg.connect(self._settings.url.get_secret_value(), autocommit=True,
                                         connect_timeout=max(1, int(self._settings.connect_timeout_s)),
                                         application_name="procos-purge")
            self._conn.execute(f"SET lock_timeout = '{_LOCK_TIMEOUT}'")
            self._conn.execute(f"SET statement_timeout = '{_STATEMENT_TIMEOUT}'")
        return self

    def __exit__(self, *_exc: object) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def try_lock(self) -> bool:
        """Take the purge lock for this session unless another session holds it."""
        row = self._execute("SELECT pg_try_advisory_lock(%s)", (PURGE_LOCK_KEY,)).fetchone()
        return bool(row and row[0])

    def unlock(self) -> None:
        self._execute("SELECT pg_advisory_unlock(%s)", (PURGE_LOCK_KEY,))

    def scan(self, before: datetime, after: tuple[datetime, UUID] | None, limit: int) -> list[ScannedRow]:
        """Up to ``limit`` rows created before ``before``, oldest first, after the key ``after``
        (keyset pagination on (created_at, id): each call reads only the next stretch of the index)."""
        last_at, last_id = after or _FIRST_KEY
        rows = self._execute(
            """SELECT created_at, id, process_instance_id FROM procos_ai_context
               WHERE created_at < %(before)s AND created_at >= %(last_at)s
                 AND (created_at, id) > (%(last_at)s, %(last_id)s)
               ORDER BY created_at, id LIMIT %(limit)s""",
            {"before": before, "last_at": last_at, "last_id": last_id, "limit": limit},
        ).fetchall()
        return [ScannedRow(created_at=r[0], id=UUID(str(r[1])), process_instance_id=str(r[2])) for r in rows]

    def with_rows_since(self, process_instance_ids: Collection[str], since: datetime) -> set[str]:
        """Which of the instances have a row created at or after ``since`` (still in use: kept whole)."""
        if not process_instance_ids:
            return set()
        rows = self._execute(
            """SELECT DISTINCT process_instance_id FROM procos_ai_context
               WHERE process_instance_id = ANY(%s) AND created_at >= %s""",
            (list(process_instance_ids), since),
        ).fetchall()
        return {str(r[0]) for r in rows}

    def count(self, process_instance_ids: Collection[str], before: datetime) -> int:
        """How many rows a delete of these instances would remove (for a dry run)."""
        if not process_instance_ids:
            return 0
        row = self._execute(
            "SELECT count(*) FROM procos_ai_context WHERE process_instance_id = ANY(%s) AND created_at < %s",
            (list(process_instance_ids), before),
        ).fetchone()
        return int(row[0]) if row else 0

    def delete(self, process_instance_ids: Collection[str], before: datetime, *, limit: int) -> int:
        """Delete up to ``limit`` rows of these instances created before ``before``; returns how many went.
        Callers repeat it until it returns less than ``limit``: each statement stays one short transaction."""
        if not process_instance_ids:
            return 0
        cursor = self._execute(
            """DELETE FROM procos_ai_context WHERE id IN (
                   SELECT id FROM procos_ai_context
                   WHERE process_instance_id = ANY(%s) AND created_at < %s LIMIT %s)""",
            (list(process_instance_ids), before, limit),
        )
        return cursor.rowcount

    def _execute(self, sql: str, params: Any = None) -> psycopg.Cursor[Any]:
        if self._conn is None:
            raise RuntimeError("RetentionStore used outside its 'with' block")
        with self._converting():
            return self._conn.execute(sql.encode(), params)

    @contextmanager
    def _converting(self) -> Iterator[None]:
        try:
            yield
        except psycopg.OperationalError as exc:
            if isinstance(exc, psycopg.errors.LockNotAvailable | psycopg.errors.QueryCanceled):
                raise PurgeStopped(f"purge gave up waiting on a lock or a slow statement: {_first_line(exc)}",
                                   details=repr(exc)) from exc
            raise StoreUnavailable(f"PostgreSQL unavailable: {_first_line(exc)}", details=repr(exc)) from exc
        except psycopg.Error as exc:
            raise PurgeStopped(f"PostgreSQL rejected the purge: {_first_line(exc)}", details=repr(exc)) from exc


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
