"""Indexes on Camunda's tables, built without holding up the engine (migration 0040 explains them).

``tune(conn)`` builds every index of ``procos_camunda_ai_indexes()`` with ``CREATE INDEX
CONCURRENTLY`` (a SHARE UPDATE EXCLUSIVE lock: the engine keeps reading and writing the table while it
builds; it can't run in a transaction, hence here and not in a migration), drops an invalid one left
by an interrupted build first, and then calls ``optimize_camunda_for_ai()``, which finds them present
and analyzes procos' tables. Camunda creates its tables at its first start, possibly after
``init-db``: a missing table is reported and skipped, and the next ``init-db`` or worker start builds
its index. Run twice, it builds nothing the second time. One session at a time (advisory lock).
Only a table's owner may index it: a login that is not (compose's DML-only worker login) checks, and
leaves the building to ``init-db`` run with the owner's login.
"""

from __future__ import annotations

import time
from typing import Any

import psycopg

__all__ = ["TUNING_LOCK_KEY", "tune"]

# pg_advisory_lock key ("procosT" in ASCII); a second caller skips instead of waiting.
TUNING_LOCK_KEY = 0x70726F636F7354
# The first release's indexes, which matched no variable the worker writes.
_OBSOLETE = ("idx_act_ru_variable_name_text", "idx_act_hi_varinst_proc_inst_ai")
# optimize_camunda_for_ai() must never queue for a table lock (it would stall the engine behind it).
_LOCK_TIMEOUT = "2s"


def tune(conn: psycopg.Connection[Any]) -> list[str]:
    """Build the Camunda indexes concurrently, then ``optimize_camunda_for_ai()``; one line per step.

    ``conn`` must be in autocommit mode and have the ProcOS schema (migration 0040 or later).
    """
    if not conn.autocommit:
        raise ValueError("tune() needs an autocommit connection (CREATE INDEX CONCURRENTLY)")
    got = conn.execute("SELECT pg_try_advisory_lock(%s)", (TUNING_LOCK_KEY,)).fetchone()
    if not (got and got[0]):
        return ["another session is tuning Camunda's indexes: skipped"]
    conn.execute("SET application_name = 'procos-tune'")
    try:
        steps = [f"{name} (obsolete) dropped" for name in _OBSOLETE if _drop_if_exists(conn, name)]
        wanted = conn.execute("SELECT index_name, table_name, definition FROM procos_camunda_ai_indexes()").fetchall()
        missing = False
        for name, table, definition in wanted:
            step = _build(conn, str(name), str(table), str(definition))
            missing = missing or step.startswith("not the owner")
            steps.append(step)
        if missing:  # the function would try a plain CREATE INDEX with this login, and fail
            return [*steps, "optimize_camunda_for_ai() not called"]
        conn.execute(f"SET lock_timeout = '{_LOCK_TIMEOUT}'")
        row = conn.execute("SELECT optimize_camunda_for_ai()").fetchone()
        steps.append(f"optimize_camunda_for_ai(): {row[0] if row else ''}")
        return steps
    finally:
        conn.execute("RESET lock_timeout")
        conn.execute("RESET application_name")
        conn.execute("SELECT pg_advisory_unlock(%s)", (TUNING_LOCK_KEY,))


def _build(conn: psycopg.Connection[Any], name: str, table: str, definition: str) -> str:
    if not _exists(conn, table):
        return f"{table} not in this database yet: {name} skipped (init-db or a worker start builds it later)"
    valid = conn.execute(
        "SELECT i.indisvalid FROM pg_index i WHERE i.indexrelid = to_regclass(%s)", (name,)).fetchone()
    if valid is not None and valid[0]:
        return f"{name} present"
    if not _owns(conn, table):
        return f"not the owner of {table}: {name} not built (run procos-worker init-db with the owner's login)"
    if valid is not None:  # an interrupted CONCURRENTLY build leaves an invalid index behind
        conn.execute(f'DROP INDEX CONCURRENTLY IF EXISTS "{name}"')
    started = time.monotonic()
    conn.execute(f'CREATE INDEX CONCURRENTLY IF NOT EXISTS "{name}" ON {definition}'.encode())
    return f"{name} built concurrently in {time.monotonic() - started:.2f} s"


def _drop_if_exists(conn: psycopg.Connection[Any], name: str) -> bool:
    if not _exists(conn, name) or not _owns(conn, name):
        return False
    conn.execute(f'DROP INDEX CONCURRENTLY IF EXISTS "{name}"')
    return True


def _owns(conn: psycopg.Connection[Any], relation: str) -> bool:
    row = conn.execute("SELECT pg_has_role(current_user, c.relowner, 'USAGE') FROM pg_class c "
                       "WHERE c.oid = to_regclass(%s)", (relation,)).fetchone()
    return bool(row and row[0])


def _exists(conn: psycopg.Connection[Any], name: str) -> bool:
    row = conn.execute("SELECT to_regclass(%s) IS NOT NULL", (name,)).fetchone()
    return bool(row and row[0])
