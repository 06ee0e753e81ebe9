"""How the store classifies PostgreSQL errors: by SQLSTATE, never by exception class alone (the faults
suite provokes each on the real database: tests/faults/test_store_errors.py)."""

from __future__ import annotations

from typing import Any

import psycopg
import psycopg_pool
import pytest
from pydantic import SecretStr

from procos_testkit.second_ollama import free_port
from procos_worker.errors import PermanentError, StoreRefused, StoreUnavailable
from procos_worker.settings import DatabaseSettings
from procos_worker.store.context import ContextStore, _classify


@pytest.mark.parametrize(
    ("exc", "expected", "words"),
    [
        (psycopg.errors.QueryCanceled("canceling statement due to statement timeout"), StoreRefused,
         "statement timeout"),
        (psycopg.errors.LockNotAvailable("canceling statement due to lock timeout"), StoreRefused, "lock timeout"),
        (psycopg.errors.TooManyConnections("too many connections"), StoreRefused, "too many connections"),
        (psycopg.errors.DiskFull("could not extend file"), StoreRefused, "disk full"),
        (psycopg.errors.ReadOnlySqlTransaction("cannot execute INSERT in a read-only transaction"), StoreRefused,
         "read-only"),
        (psycopg.errors.SerializationFailure("could not serialize"), StoreRefused, "serialization"),
        (psycopg.errors.IoError("could not read block"), StoreRefused, "I/O"),
        # A refused connection carries no SQLSTATE: only the server's words tell "no slots" from "down".
        (psycopg.OperationalError("connection failed: FATAL:  too many connections for database \"x\""), StoreRefused,
         "too many connections"),
        (psycopg.OperationalError("connection failed: Connection refused"), StoreUnavailable, "unavailable"),
        (psycopg.errors.AdminShutdown("terminating connection due to administrator command"), StoreUnavailable,
         "unavailable"),
        (psycopg.errors.ConnectionFailure("server closed the connection"), StoreUnavailable, "unavailable"),
        (psycopg_pool.PoolClosed("the pool is closed"), StoreUnavailable, "unavailable"),
        (psycopg.errors.UndefinedTable("relation does not exist"), PermanentError, "init-db"),
        (psycopg.errors.CheckViolation("violates check constraint"), PermanentError, "rejected"),
    ],
)
def test_errors_are_classified_by_sqlstate(exc: Exception, expected: type[Exception], words: str) -> None:
    converted = _classify(exc)
    assert type(converted) is expected
    assert words in str(converted)


def test_an_unreachable_database_is_waited_for_once_per_call(monkeypatch: pytest.MonkeyPatch) -> None:
    """No pooled connection within DATABASE_CONNECT_TIMEOUT_S: the call is given up after one wait, not
    retried as if a pooled connection had died (which doubled the wait)."""
    waits: list[float | None] = []
    getconn = psycopg_pool.ConnectionPool.getconn

    def counted(pool: psycopg_pool.ConnectionPool, timeout: float | None = None) -> psycopg.Connection[Any]:
        waits.append(timeout)
        return getconn(pool, timeout)

    monkeypatch.setattr(psycopg_pool.ConnectionPool, "getconn", counted)
    port = free_port()  # nothing listens on it
    settings = DatabaseSettings(url=SecretStr(f"postgresql://procos:x@127.0.0.1:{port}/procos"), connect_timeout_s=0.5,
                                attempts=1)
    with ContextStore(settings) as store, pytest.raises(StoreUnavailable, match="unavailable"):
        store.ping()
    assert len(waits) == 1
