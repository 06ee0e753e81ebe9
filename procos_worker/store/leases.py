"""procos_worker_leases: one row per running worker, renewed while it lives (orphan recovery's memory).

Times are the database's (``now()``), one clock for every worker. ``reap`` locks the expired rows it works
on (``FOR UPDATE SKIP LOCKED``: one live worker per dead one at a time), and a beat of a worker whose row is
being reaped waits for that to finish, so a worker is either alive or reaped, never both at once.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import psycopg

from procos_worker.store.context import ContextStore

__all__ = ["LeaseStore"]

# ``old`` reads the row as the statement's snapshot saw it (no FOR UPDATE: that would follow the update to
# the new version); the upsert itself waits for a reaper holding the row.
_BEAT = """
    WITH old AS (SELECT expires_at FROM procos_worker_leases WHERE worker_id = %(id)s)
    INSERT INTO procos_worker_leases AS l (worker_id, host, pid, topics, expires_at, sweep_until)
    VALUES (%(id)s, %(host)s, %(pid)s, %(topics)s, now() + make_interval(secs => %(lease)s),
            now() + make_interval(secs => %(lease)s + %(sweep)s))
    ON CONFLICT (worker_id) DO UPDATE
        SET beat_at = now(), expires_at = EXCLUDED.expires_at, sweep_until = EXCLUDED.sweep_until, stopped_at = NULL
    RETURNING (SELECT expires_at < now() FROM old) AS was_expired
"""


class LeaseStore:
    """The lease queries, on the worker's connection pool."""

    def __init__(self, store: ContextStore) -> None:
        self._store = store

    def beat(self, worker_id: str, *, host: str, pid: int, topics: Sequence[str], lease_s: float,
             sweep_s: float) -> bool | None:
        """Renew (or create) the lease: True if it had expired meanwhile (others may have reaped its tasks),
        False if it was live, None if there was none (a first beat, or one forgotten after its sweep window)."""
        params = {"id": worker_id, "host": host, "pid": pid, "topics": list(topics), "lease": lease_s,
                  "sweep": sweep_s}

        def work(cur: psycopg.Cursor[dict[str, Any]]) -> bool | None:
            cur.execute(_BEAT, params)
            row = cur.fetchone()
            return None if row is None or row["was_expired"] is None else bool(row["was_expired"])

        return self._store.run(work)

    def release(self, worker_id: str, *, sweep_s: float) -> None:
        """A clean stop: expired now (nothing of it is alive), swept for ``sweep_s`` more (its last long poll)."""
        self._store.run(lambda cur: cur.execute(
            "UPDATE procos_worker_leases SET expires_at = now(), stopped_at = now(), "
            "sweep_until = now() + make_interval(secs => %s) WHERE worker_id = %s", (sweep_s, worker_id)))

    def reap(self, worker_id: str, sweep: Callable[[str], None]) -> int:
        """Call ``sweep(dead_id)`` for each expired lease still in its sweep window (the row locked meanwhile)
        and forget leases past it; returns how many dead workers were swept."""
        def work(cur: psycopg.Cursor[dict[str, Any]]) -> int:
            with cur.connection.transaction():
                cur.execute("SELECT worker_id FROM procos_worker_leases "
                            "WHERE expires_at < now() AND sweep_until > now() AND worker_id <> %s "
                            "ORDER BY expires_at FOR UPDATE SKIP LOCKED", (worker_id,))
                dead = [str(row["worker_id"]) for row in cur.fetchall()]
                for dead_id in dead:
                    sweep(dead_id)
                cur.execute("DELETE FROM procos_worker_leases WHERE sweep_until < now()")
            return len(dead)

        return self._store.run(work)
