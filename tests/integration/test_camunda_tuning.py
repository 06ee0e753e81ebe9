"""Camunda index tuning (migration 0040) on an engine of the test's own, on a scratch database.

``procos-worker init-db`` says when Camunda's tables are not there yet; once they are, it builds the
indexes with CREATE INDEX CONCURRENTLY while the engine serves, holding no lock that stops the
engine's writes (sampled from pg_locks; the engine's own calls timed meanwhile), and run twice it
builds nothing. For contrast, the plain build of ``optimize_camunda_for_ai()`` is sampled too: it holds
a SHARE lock, during which the engine's writes wait (and may even deadlock with it). The indexes fit
the variable a real worker task writes, and the documented lookup uses them.
"""

from __future__ import annotations

import json
import statistics
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import requests
from pydantic import SecretStr

from procos_testkit.cli import run_cli
from procos_testkit.engine import EngineRest
from procos_testkit.own_engine import own_engine
from procos_testkit.pg import scratch_database
from procos_worker.settings import Settings
from procos_worker.store import migrations

pytestmark = pytest.mark.integration

INDEXES = {"idx_act_ru_variable_ai_context_id": "act_ru_variable", "idx_act_hi_varinst_ai_context_id": "act_hi_varinst"}
BULK_ROWS = 1_000_000
LOOKUP = "SELECT proc_inst_id_ FROM {table} WHERE name_ LIKE '%%\\_context\\_id' AND text_ = %s"


@pytest.fixture(scope="module")
def engine_db(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """(database URL, engine REST URL): the ProcOS schema first, then an engine of our own creates Camunda's."""
    with scratch_database(settings.database.url.get_secret_value(), prefix="procos_ops_tune") as url:
        with psycopg.connect(url, autocommit=True) as conn:
            migrations.upgrade(conn)
        log = tmp_path_factory.mktemp("engine") / "engine.log"
        before = _init_db(url, tmp_path_factory.mktemp("cli"))
        assert any("act_ru_variable not in this database yet" in step for step in before), before
        with own_engine(url, log) as rest:
            yield url, rest


def _init_db(url: str, cwd: Path) -> list[str]:
    result = run_cli("init-db", cwd=cwd, env={"DATABASE_URL": url})
    assert result.returncode == 0, result.stderr.decode()
    events = [json.loads(line) for line in result.stderr.decode().splitlines() if line.startswith("{")]
    [tuned] = [e for e in events if e.get("event") == "camunda.tuned"]
    return [str(step) for step in tuned["steps"]]


class EngineLoad:
    """Starts instances of a process with variables, one after another, timing each call."""

    def __init__(self, engine: EngineRest, key: str) -> None:
        self.engine, self.key = engine, key
        self.calls: list[tuple[float, float]] = []  # (start, seconds)
        self.failures: list[tuple[float, str]] = []  # (start, what the engine said)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        n = 0
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                self.engine.start(self.key, {"query": f"load {n}", "ai_context_id": f"load-{n}"})
            except requests.HTTPError as exc:  # e.g. a deadlock with a plain CREATE INDEX
                body = exc.response.text[:300] if exc.response is not None else ""
                self.failures.append((started, body))
            self.calls.append((started, time.monotonic() - started))
            n += 1

    def __enter__(self) -> EngineLoad:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join(60)

    def slowest_between(self, start: float, end: float) -> float:
        return max((s for t, s in self.calls if start <= t <= end), default=0.0)


class LockSampler:
    """Samples the table locks a session (by application_name) holds on Camunda's variable tables."""

    def __init__(self, url: str, application_name: str) -> None:
        self.url, self.name = url, application_name
        self.modes: set[str] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with psycopg.connect(self.url, autocommit=True) as conn:
            while not self._stop.is_set():
                self.modes.update(str(m) for (m,) in conn.execute(
                    """SELECT l.mode FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
                       WHERE a.application_name = %s AND l.granted
                         AND l.relation IN ('act_ru_variable'::regclass, 'act_hi_varinst'::regclass)""",
                    (self.name,)).fetchall())
                time.sleep(0.005)

    def __enter__(self) -> LockSampler:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join(30)


def _bulk_history(url: str) -> None:
    """A history of a million variables (every tenth a *_context_id), so that a build takes a while."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"""INSERT INTO act_hi_varinst (id_, name_, var_type_, text_, proc_inst_id_, state_, create_time_)
                         SELECT 'bulk-' || g, CASE WHEN g % 10 = 0 THEN 'ai_context_id' ELSE 'v' || (g % 7) END,
                                'string', md5(g::text), 'bulk-pi-' || (g / 10), 'CREATED', now()
                         FROM generate_series(1, {BULK_ROWS}) AS g""")
        conn.execute("ANALYZE act_hi_varinst")


def _index_state(url: str) -> dict[str, bool]:
    with psycopg.connect(url, autocommit=True) as conn:
        rows = conn.execute("""SELECT c.relname, i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
                               WHERE c.relname = ANY(%s)""", (list(INDEXES),)).fetchall()
    return {str(name): bool(valid) for name, valid in rows}


def _timed(fn: Callable[[], Any]) -> tuple[float, float]:
    start = time.monotonic()
    fn()
    return start, time.monotonic()


def test_init_db_builds_the_indexes_concurrently_while_the_engine_serves_and_twice_changes_nothing(
    engine_db: tuple[str, str], tmp_path: Path,
) -> None:
    url, rest = engine_db
    engine = EngineRest(rest)
    _topic, key = engine.deploy_example()
    _bulk_history(url)

    with EngineLoad(engine, key) as load, LockSampler(url, "procos-tune") as sampler:
        time.sleep(1.0)
        start, end = _timed(lambda: _init_db(url, tmp_path))
        time.sleep(0.5)
    steps = _init_db(url, tmp_path)  # twice
    assert _index_state(url) == dict.fromkeys(INDEXES, True)
    assert all(f"{name} present" in steps for name in INDEXES), steps
    assert not [s for s in steps if "built" in s or "dropped" in s], steps

    assert "ShareUpdateExclusiveLock" in sampler.modes, "the sampling saw the concurrent build"
    assert sampler.modes <= {"ShareUpdateExclusiveLock", "AccessShareLock"}, sampler.modes
    during = [s for t, s in load.calls if start <= t <= end]
    concurrent_worst = load.slowest_between(start, end)
    print(f"\nconcurrent build: {end - start:.2f} s of init-db, engine calls meanwhile {len(during)}, "
          f"median {statistics.median(during):.3f} s, slowest {concurrent_worst:.3f} s; locks {sorted(sampler.modes)}")
    assert len(during) >= 3 and concurrent_worst < 3.0, "the engine's writes went on during the build"
    assert load.failures == [], "no engine call failed during the concurrent build"

    # The contrast: the plain build of optimize_camunda_for_ai() stops the engine's writes while it runs.
    with psycopg.connect(url, autocommit=True) as conn:
        for name in INDEXES:
            conn.execute(f"DROP INDEX CONCURRENTLY {name}")
    deadlocks: list[str] = []

    def plain_build(conn: psycopg.Connection[Any]) -> None:
        try:
            conn.execute("SELECT optimize_camunda_for_ai()")
        except psycopg.errors.DeadlockDetected as exc:  # PostgreSQL chose the build as the victim this time
            deadlocks.append(str(exc).splitlines()[0])

    with EngineLoad(engine, key) as load, LockSampler(url, "procos-plain") as plain:
        time.sleep(1.0)
        with psycopg.connect(url, autocommit=True, application_name="procos-plain") as conn:
            start, end = _timed(lambda: plain_build(conn))
        time.sleep(0.5)
    plain_worst = load.slowest_between(start - 0.5, end)
    # The plain build holds SHARE on act_ru_variable until it has built on act_hi_varinst too: an engine
    # transaction holding act_hi_varinst and waiting for act_ru_variable then deadlocks (seen, not forced;
    # either side may be the one PostgreSQL aborts).
    failed = [body for t, body in load.failures if start - 0.5 <= t <= end]
    print(f"plain build: {end - start:.2f} s, slowest engine call meanwhile {plain_worst:.3f} s; "
          f"locks {sorted(plain.modes)}; engine calls failed meanwhile: {len(failed)}; build aborted: {deadlocks}")
    assert "ShareLock" in plain.modes, plain.modes
    if not deadlocks:
        assert _index_state(url) == dict.fromkeys(INDEXES, True)


def test_the_indexes_fit_what_a_real_worker_task_writes(
    engine_db: tuple[str, str], run_worker: Callable[..., Any], ollama_up: str, tmp_path: Path,
) -> None:
    url, rest = engine_db
    _init_db(url, tmp_path)  # built here, whatever the test before left (its plain build may have been aborted)
    engine = EngineRest(rest)
    topic, key = engine.deploy_example()
    pi = engine.start(key, {"query": "Say yes."})
    run_worker(topic, camunda={"base_url": rest}, database={"url": SecretStr(url)},
               ollama={"options": {"num_predict": 8, "seed": 1, "temperature": 0}})
    engine.wait_for(lambda: engine.passed_task(pi), timeout_s=180, what="instance past the AI task")
    context_id = str(engine.variables(pi)["ai_context_id"]["value"])
    with psycopg.connect(url, autocommit=True) as conn:
        assert _index_state(url) == dict.fromkeys(INDEXES, True)
        conn.execute("SET enable_seqscan = off")
        conn.execute("SET enable_bitmapscan = on")
        for name, table in INDEXES.items():
            sql = LOOKUP.format(table=table)
            # The instance waits at its user task: the variable is in the runtime table and in history.
            assert conn.execute(sql, (context_id,)).fetchall() == [(pi,)], table
            plan = json.dumps(conn.execute(f"EXPLAIN (FORMAT JSON) {sql}", (context_id,)).fetchone())
            assert name in plan, plan
        # The same predicate covers every result prefix (procos.resultPrefix): triage_context_id too.
        assert conn.execute(r"SELECT 'triage_context_id' LIKE '%\_context\_id', 'ai_context' LIKE '%\_context\_id'"
                            ).fetchone() == (True, False)
