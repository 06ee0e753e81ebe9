"""Issue 9, item 2: database errors classified by SQLSTATE, each with a defined outcome.

Connection loss is waited out by the gate (tests/faults/test_backoff.py). Everything else PostgreSQL
answers while it is reachable — a table locked by another session, a statement that hangs, too many
connections, a full disk, a database gone read-only after a failover — is tried DATABASE_ATTEMPTS times
in-process and then reported as a failure that spends one Camunda retry: never an endless gate loop
(each turn re-sending the answer), never a task held without an incident, never an incident for what
heals by itself.

Each case runs on a scratch database of its own (the worker's DATABASE_URL points there); the fault is
injected by a PostgreSQL session (LOCK TABLE, a trigger, ALTER DATABASE) and removed again, after which
the task completes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import psycopg
import pytest
from pydantic import SecretStr

from procos_testkit.engine import EngineRest, wait_until
from procos_testkit.fake_ollama import FakeOllama
from procos_testkit.pg import as_superuser, scratch_database
from procos_testkit.worker_process import WorkerProcess
from procos_worker.settings import DatabaseSettings
from procos_worker.store import migrations
from procos_worker.store.context import ContextStore
from tests.faults.faultkit import DB_URL, completed

pytestmark = pytest.mark.faults

RETRIES = 3

_TRIGGER = """
CREATE FUNCTION procos_fault() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN {body} RETURN NEW; END $$;
CREATE TRIGGER procos_fault BEFORE INSERT ON procos_ai_context FOR EACH ROW EXECUTE FUNCTION procos_fault();
"""
_DISK_FULL = "RAISE EXCEPTION 'could not extend file: No space left on device' USING ERRCODE = 'disk_full';"
_HEAL_TRIGGER = "DROP TRIGGER IF EXISTS procos_fault ON procos_ai_context; DROP FUNCTION IF EXISTS procos_fault();"


@dataclass
class Scratch:
    url: str
    name: str
    held: psycopg.Connection[Any] | None = None

    def execute(self, sql: str) -> None:
        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute(sql.encode())


def _lock_table(db: Scratch) -> None:
    db.held = psycopg.connect(db.url)
    db.held.execute("LOCK TABLE procos_ai_context IN ACCESS EXCLUSIVE MODE")  # transaction left open


def _unlock_table(db: Scratch) -> None:
    assert db.held is not None
    db.held.rollback()
    db.held.close()
    db.held = None


def _hold_all_connections(db: Scratch) -> None:
    as_superuser(f'ALTER DATABASE "{db.name}" CONNECTION LIMIT 1')
    db.held = psycopg.connect(db.url)


def _release_connections(db: Scratch) -> None:
    as_superuser(f'ALTER DATABASE "{db.name}" CONNECTION LIMIT -1')
    assert db.held is not None
    db.held.close()
    db.held = None


FAULTS: dict[str, tuple[Callable[[Scratch], None], Callable[[Scratch], None], str]] = {
    "table-locked-by-another-session": (_lock_table, _unlock_table, "lock timeout"),
    "statement-hangs": (lambda db: db.execute(_TRIGGER.format(body="PERFORM pg_sleep(30);")),
                        lambda db: db.execute(_HEAL_TRIGGER), "statement timeout"),
    "too-many-connections": (_hold_all_connections, _release_connections, "too many connections"),
    "disk-full": (lambda db: db.execute(_TRIGGER.format(body=_DISK_FULL)), lambda db: db.execute(_HEAL_TRIGGER),
                  "disk full"),
    "read-only-after-failover": (
        lambda db: as_superuser(f'ALTER DATABASE "{db.name}" SET default_transaction_read_only = on'),
        lambda db: as_superuser(f'ALTER DATABASE "{db.name}" RESET default_transaction_read_only'), "read-only"),
}


@pytest.fixture()
def scratch() -> Iterator[Scratch]:
    with scratch_database(DB_URL, prefix="procos_faults") as url:
        with psycopg.connect(url, autocommit=True) as conn:
            migrations.upgrade(conn)
        db = Scratch(url=url, name=url.rsplit("/", 1)[1])
        try:
            yield db
        finally:
            if db.held is not None:
                db.held.close()


@pytest.mark.parametrize("fault", list(FAULTS))
def test_database_fault_spends_one_retry_then_the_task_completes(
    fault: str, scratch: Scratch, engine_rest: EngineRest, deployed: tuple[str, str], fake: FakeOllama,
    spawn: Callable[..., WorkerProcess],
) -> None:
    inject, heal, words = FAULTS[fault]
    topic, key = deployed
    inject(scratch)
    pi = engine_rest.start(key, {"query": f"store me despite {fault}"})
    worker = spawn(topic, OLLAMA_BASE_URL=fake.base_url, DATABASE_URL=scratch.url, WORKER_RETRIES=str(RETRIES),
                   WORKER_RETRY_TIMEOUT_MS="1000", WORKER_MAX_TASKS_IN_FLIGHT="1", DATABASE_ATTEMPTS="2",
                   DATABASE_LOCK_TIMEOUT_MS="500", DATABASE_STATEMENT_TIMEOUT_MS="1500",
                   DATABASE_CONNECT_TIMEOUT_S="2")

    def failed_once() -> dict[str, Any] | None:
        tasks = engine_rest.external_tasks(processInstanceId=pi)
        return tasks[0] if tasks and tasks[0]["retries"] is not None else None

    task = engine_rest.wait_for(failed_once, timeout_s=60, what=f"a failure reported for {fault}")
    assert task["retries"] == RETRIES - 1, "one retry spent, not an incident"
    assert words in task["errorMessage"], task["errorMessage"]
    assert not engine_rest.incidents(pi)
    assert not worker.find("service.down"), "not taken for PostgreSQL being unreachable"

    heal(scratch)
    engine_rest.wait_for(lambda: completed(engine_rest, pi), timeout_s=60, what=f"completion after {fault} healed")
    with psycopg.connect(scratch.url) as conn:
        rows = conn.execute("SELECT context_type, count(*) FROM procos_ai_context WHERE process_instance_id = %s "
                            "GROUP BY 1 ORDER BY 1", (pi,)).fetchall()
    assert rows == [("input", 1), ("output", 1)]
    wait_until(lambda: worker.alive, 1, "the worker still serving")


def test_worker_connections_carry_timeouts_and_keepalives(scratch: Scratch) -> None:
    """What makes the faults above end: every pooled connection has the session limits and keepalives."""
    settings = DatabaseSettings(url=SecretStr(scratch.url), statement_timeout_ms=1234, lock_timeout_ms=567,
                                keepalives_idle_s=11, keepalives_interval_s=7, keepalives_count=2)
    with ContextStore(settings) as store:
        shown = store.run(lambda cur: cur.execute("SELECT current_setting('statement_timeout') AS st, "
                                                  "current_setting('lock_timeout') AS lt").fetchone())
        params = store.run(lambda cur: cur.connection.info.get_parameters())
    assert shown == {"st": "1234ms", "lt": "567ms"}
    assert (params["keepalives"], params["keepalives_idle"], params["keepalives_interval"],
            params["keepalives_count"]) == ("1", "11", "7", "2")
