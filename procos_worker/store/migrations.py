"""The ProcOS schema's versions: a fresh database from ``sql/init-db.sql``, older ones upgraded by the
numbered files in ``sql/migrations/``.

``sql/init-db.sql`` is the one file that builds a fresh database (PostgreSQL's init script under
compose runs it too); it records every migration as applied. A database created by an earlier
``init-db.sql`` gets the migrations it has not recorded, in number order, each in its own
transaction together with its row in ``procos_schema_migrations``. Both paths run under one
advisory lock, so workers and ``procos-worker init-db`` started together apply each file once.
A migration whose first line is ``-- procos:no-transaction`` runs statement by statement outside a
transaction (for ``CREATE INDEX CONCURRENTLY``); it must be idempotent on its own.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources
from typing import Any

import psycopg

__all__ = ["Migration", "SchemaStatus", "grants_sql", "init_db_sql", "known_migrations", "schema_status",
           "upgrade"]

# pg_advisory_lock key: any constant both the worker and the CLI agree on ("procos" in ASCII).
_LOCK_KEY = 0x70726F636F73
_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
_NO_TRANSACTION = "-- procos:no-transaction"
_TABLE = "procos_schema_migrations"


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def in_transaction(self) -> bool:
        return not self.sql.startswith(_NO_TRANSACTION)


@dataclass(frozen=True, slots=True)
class SchemaStatus:
    """What a database holds against what this package knows."""

    applied: frozenset[int]
    known: frozenset[int]
    has_schema: bool

    @property
    def missing(self) -> list[int]:
        return sorted(self.known - self.applied)

    @property
    def current(self) -> bool:
        return self.has_schema and not self.missing

    def describe(self) -> str:
        if not self.has_schema:
            return "no ProcOS schema: run procos-worker init-db"
        if self.missing:
            return (f"schema behind: migrations {', '.join(f'{v:04d}' for v in self.missing)} not applied; "
                    "run procos-worker init-db")
        latest = max(self.known, default=0)
        return f"schema current (migration {latest:04d})"


def _sql_dir() -> Any:
    # A folder next to the modules: a symlink to the top-level sql/ in a checkout, a copy in a wheel.
    return resources.files("procos_worker.store").joinpath("sql")


def init_db_sql() -> str:
    """The text of sql/init-db.sql, as shipped inside the package."""
    text: str = _sql_dir().joinpath("init-db.sql").read_text(encoding="utf-8")
    return text


def grants_sql() -> str:
    """The text of sql/grants.sql: DML on the ProcOS tables for procos_dml, when that role exists."""
    text: str = _sql_dir().joinpath("grants.sql").read_text(encoding="utf-8")
    return text


def known_migrations() -> list[Migration]:
    """Every file of sql/migrations/, in version order."""
    found: list[Migration] = []
    for entry in _sql_dir().joinpath("migrations").iterdir():
        match = _NAME.match(entry.name)
        if match is not None:
            found.append(Migration(int(match.group(1)), match.group(2), entry.read_text(encoding="utf-8")))
    found.sort(key=lambda m: m.version)
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise ValueError(f"two migrations share a number: {versions}")
    return found


def schema_status(conn: psycopg.Connection[Any]) -> SchemaStatus:
    known = frozenset(m.version for m in known_migrations())
    has_schema = _exists(conn, "procos_ai_context")
    applied: frozenset[int] = frozenset()
    if _exists(conn, _TABLE):
        applied = frozenset(int(row[0]) for row in conn.execute(f"SELECT version FROM {_TABLE}").fetchall())
    return SchemaStatus(applied=applied, known=known, has_schema=has_schema)


def upgrade(conn: psycopg.Connection[Any], *, init_sql: str | None = None) -> list[str]:
    """Bring the database to this package's schema; returns what was done, one line per step.

    ``conn`` must be in autocommit mode. ``init_sql`` replaces the bundled init-db.sql (tests).
    """
    if not conn.autocommit:
        raise ValueError("upgrade() needs an autocommit connection")
    done: list[str] = []
    conn.execute("SELECT pg_advisory_lock(%s)", (_LOCK_KEY,))
    try:
        if not _exists(conn, "procos_ai_context"):
            conn.execute((init_sql if init_sql is not None else init_db_sql()).encode())
            done.append("created the schema from init-db.sql")
        _ensure_table(conn)
        applied = {int(row[0]) for row in conn.execute(f"SELECT version FROM {_TABLE}").fetchall()}
        for migration in known_migrations():
            if migration.version not in applied:
                _apply(conn, migration)
                done.append(f"applied migration {migration.version:04d}_{migration.name}")
        # Every time (idempotent, not recorded): tables added by any migration are granted as well.
        conn.execute(grants_sql().encode())
    finally:
        conn.execute("SELECT pg_advisory_unlock(%s)", (_LOCK_KEY,))
    return done


def _ensure_table(conn: psycopg.Connection[Any]) -> None:
    # The same definition as in init-db.sql, so both paths end with the same schema.
    conn.execute(
        f"""CREATE TABLE IF NOT EXISTS {_TABLE} (
                version INTEGER PRIMARY KEY,
                name VARCHAR(255) NOT NULL,
                applied_at TIMESTAMP WITH TIME ZONE NOT NULL DEFAULT NOW()
            )"""
    )


def _apply(conn: psycopg.Connection[Any], migration: Migration) -> None:
    record = f"INSERT INTO {_TABLE} (version, name) VALUES (%s, %s) ON CONFLICT (version) DO NOTHING"
    if migration.in_transaction:
        with conn.transaction():
            conn.execute(migration.sql.encode())
            conn.execute(record, (migration.version, migration.name))
        return
    for statement in _statements(migration.sql):
        conn.execute(statement.encode())
    conn.execute(record, (migration.version, migration.name))


def _statements(sql: str) -> list[str]:
    """Split a no-transaction migration on lines ending in ';' (such files hold simple statements)."""
    parts: list[str] = []
    current: list[str] = []
    for line in sql.splitlines():
        current.append(line)
        if line.rstrip().endswith(";"):
            parts.append("\n".join(current))
            current = []
    if "".join(current).strip():
        parts.append("\n".join(current))
    return [p for p in parts if re.sub(r"--[^\n]*", "", p).strip()]


def _exists(conn: psycopg.Connection[Any], table: str) -> bool:
    row = conn.execute("SELECT to_regclass(%s) IS NOT NULL", (table,)).fetchone()
    return bool(row and row[0])
