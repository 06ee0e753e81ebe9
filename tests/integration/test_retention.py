"""Retention on the real stack: ``procos-worker purge`` and the scheduled purge.

The rows live in a scratch database (so a purge can only ever touch this test's rows); the process
instances they belong to are real ones on the shared engine: waiting at an external task (running),
ended with their history, or ended and removed by Camunda's own history cleanup (a process with
``historyTimeToLive="0"`` and ``POST /history/cleanup``).
"""

from __future__ import annotations

import json
import math
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from procos_testkit.cli import run_cli
from procos_testkit.engine import EngineRest, wait_until
from procos_testkit.pg import scratch_database
from procos_worker.models import LlmResult, Task, TaskInputs
from procos_worker.settings import DatabaseSettings, Settings
from procos_worker.store import migrations
from procos_worker.store.context import ContextStore
from procos_worker.store.retention import PURGE_LOCK_KEY

pytestmark = pytest.mark.integration

_USER = [{"role": "user", "content": "q"}]
_BPMN = """<?xml version="1.0" encoding="UTF-8"?>
<bpmn:definitions xmlns:bpmn="http://www.omg.org/spec/BPMN/20100524/MODEL"
    xmlns:camunda="http://camunda.org/schema/1.0/bpmn" id="defs" targetNamespace="http://procos/test">
  <bpmn:process id="{key}" isExecutable="true" camunda:historyTimeToLive="{ttl}">
    <bpmn:startEvent id="start"/>
    <bpmn:sequenceFlow id="flow" sourceRef="start" targetRef="end"/>
    <bpmn:endEvent id="end"/>
  </bpmn:process>
</bpmn:definitions>
"""


class Instances:
    """Real process instances on the shared engine, in the states retention tells apart."""

    def __init__(self, engine: EngineRest) -> None:
        self.engine = engine
        self.running: list[str] = []
        suffix = uuid.uuid4().hex[:8]
        self._waiting_key = engine.deploy_example()[1]
        self._ended_key = f"ops-ended-{suffix}"
        self._cleaned_key = f"ops-ttl0-{suffix}"
        engine.deploy(_BPMN.format(key=self._ended_key, ttl="P1D"), self._ended_key)
        engine.deploy(_BPMN.format(key=self._cleaned_key, ttl="0"), self._cleaned_key)

    def start_running(self) -> str:
        """An instance waiting at an external task nobody serves."""
        pi = self.engine.start(self._waiting_key, {"query": "kept while running"})
        self.running.append(pi)
        return pi

    def ended(self) -> str:
        """An instance that ended at once and keeps its history (time to live one day)."""
        return self.engine.start(self._ended_key)

    def history_removed(self, count: int) -> list[str]:
        """Instances that ended and whose history Camunda's history cleanup then removed."""
        pis = [self.engine.start(self._cleaned_key) for _ in range(count)]
        self.engine.post("/history/cleanup?immediatelyDue=true").raise_for_status()

        def gone() -> bool:
            found = self.engine.session.post(f"{self.engine.base_url}/history/process-instance",
                                             json={"processInstanceIds": pis}, timeout=30).json()
            return not found

        wait_until(gone, 120, "Camunda's history cleanup to remove the instances' history", interval_s=1)
        return pis

    def close(self) -> None:
        for pi in self.running:
            self.engine.delete_instance(pi)


@pytest.fixture()
def instances(engine_rest: EngineRest) -> Iterator[Instances]:
    made = Instances(engine_rest)
    yield made
    made.close()


@pytest.fixture()
def scratch(settings: Settings) -> Iterator[tuple[str, ContextStore]]:
    with scratch_database(settings.database.url.get_secret_value(), prefix="procos_ops_ret") as url:
        with psycopg.connect(url, autocommit=True) as conn:
            migrations.upgrade(conn)
        with ContextStore(DatabaseSettings(url=url)) as store:
            yield url, store


def _write(store: ContextStore, pi: str, tasks: int = 1, days_old: int = 0, url: str | None = None) -> list[str]:
    """``tasks`` input+output pairs for instance ``pi`` through the worker's store, ``days_old`` days old."""
    ids: list[str] = []
    for _ in range(tasks):
        task = Task(id=f"t-{uuid.uuid4()}", topic="ai-query", worker_id="w", process_instance_id=pi)
        input_id, _ = store.save_input(task, TaskInputs(query="q"), _USER, model="smollm2:135m", options={})
        result = LlmResult(content="a", model="smollm2:135m", done_reason="stop", prompt_eval_count=1, eval_count=1,
                           total_duration_ns=1, load_duration_ns=1, prompt_eval_duration_ns=1, eval_duration_ns=1,
                           wall_s=0.1)
        ids += [str(input_id), str(store.save_output(task, result, input_id).id)]
    if days_old:
        assert url is not None
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("UPDATE procos_ai_context SET created_at = now() - make_interval(days => %s) "
                         "WHERE id = ANY(%s::uuid[])", (days_old, ids))
    return ids


def _counts(url: str) -> dict[str, int]:
    with psycopg.connect(url, autocommit=True) as conn:
        return {str(pi): int(n) for pi, n in conn.execute(
            "SELECT process_instance_id, count(*) FROM procos_ai_context GROUP BY 1").fetchall()}


def _purge(url: str, tmp_path: Path, *args: str, **env: str) -> tuple[int, dict[str, Any], str]:
    result = run_cli("purge", *args, "--json", cwd=tmp_path, env={"DATABASE_URL": url, **env})
    report = json.loads(result.stdout) if result.returncode == 0 else {}
    return result.returncode, report, result.stderr.decode()


def test_older_than_purges_ended_conversations_and_never_a_running_instance(
    scratch: tuple[str, ContextStore], instances: Instances, tmp_path: Path,
) -> None:
    url, store = scratch
    ended, running, mixed, young = instances.ended(), instances.start_running(), instances.ended(), instances.ended()
    unknown = f"never-in-camunda-{uuid.uuid4()}"
    _write(store, ended, tasks=3, days_old=100, url=url)
    _write(store, running, tasks=2, days_old=100, url=url)
    _write(store, mixed, tasks=1, days_old=100, url=url)
    _write(store, mixed, tasks=1, days_old=10, url=url)     # the conversation went on: kept whole
    _write(store, young, tasks=1, days_old=10, url=url)
    _write(store, unknown, tasks=1, days_old=120, url=url)  # not running anywhere: purged
    before = _counts(url)

    code, dry, err = _purge(url, tmp_path, "--older-than", "90d", "--dry-run", "--batch-size", "3")
    assert code == 0, err
    assert _counts(url) == before, "a dry run deletes nothing"
    assert (dry["rows_purged"], dry["instances_purged"], dry["instances_running"], dry["instances_recent"]) == (
        8, 2, 1, 1)
    assert dry["dry_run"] is True
    # The 14 old rows read three at a time (a real run reads fewer: a purged instance's rows go at once).
    assert (dry["rows_scanned"], dry["batches"]) == (14, math.ceil(14 / 3))

    code, report, err = _purge(url, tmp_path, "--older-than", "90d", "--batch-size", "3")
    assert code == 0, err
    after = _counts(url)
    assert after == {running: 4, mixed: 4, young: 2}
    assert report["rows_purged"] == sum(before.values()) - sum(after.values()) == 8
    assert (report["instances_purged"], report["instances_running"], report["instances_recent"]) == (2, 1, 1)
    assert report["rows_scanned"] <= 14

    # Once the running instance has ended, its rows go too.
    instances.engine.delete_instance(running)
    instances.running.remove(running)
    code, report, err = _purge(url, tmp_path, "--older-than", "90d")
    assert code == 0, err
    assert _counts(url) == {mixed: 4, young: 2} and report["rows_purged"] == 4


def test_history_removed_purges_only_instances_whose_history_camunda_cleaned_up(
    scratch: tuple[str, ContextStore], instances: Instances, tmp_path: Path,
) -> None:
    url, store = scratch
    cleaned = instances.history_removed(2)
    running, ended = instances.start_running(), instances.ended()
    for pi in (*cleaned, running, ended):
        _write(store, pi, tasks=2)
    _write(store, cleaned[0], tasks=1, days_old=30, url=url)

    code, report, err = _purge(url, tmp_path, "--history-removed", "--older-than", "7d")
    assert code == 0, err
    assert report["mode"] == "history-removed"
    assert report["rows_purged"] == 2 and _counts(url)[cleaned[0]] == 4, "--older-than limits it to old rows"

    code, report, err = _purge(url, tmp_path, "--history-removed")
    assert code == 0, err
    assert _counts(url) == {running: 4, ended: 4}
    assert (report["rows_purged"], report["instances_purged"]) == (8, 2)
    assert (report["instances_running"], report["instances_in_history"]) == (1, 1)


def test_purge_deletes_in_short_batches_that_never_block_the_worker(
    scratch: tuple[str, ContextStore], instances: Instances, tmp_path: Path,
) -> None:
    url, store = scratch
    ended = [instances.ended() for _ in range(6)]
    with psycopg.connect(url, autocommit=True) as conn:
        # 6 instances x 400 rows, 100 days old, written in bulk (the worker's store is too slow for this).
        conn.execute("""INSERT INTO procos_ai_context (process_instance_id, context_type, content_data, content_text,
                                                       created_at)
                        SELECT pi, 'output', '{}'::jsonb, repeat('x', 200), now() - interval '100 days'
                                                                              + make_interval(secs => n)
                        FROM unnest(%s::text[]) AS pi, generate_series(1, 400) AS n""", (ended,))
    locks: set[str] = set()
    stop = threading.Event()
    writer_waits: list[float] = []

    def watch() -> None:
        # What the purge's session holds on procos_ai_context, sampled while it runs; and a writer's latency.
        with psycopg.connect(url, autocommit=True) as conn:
            while not stop.is_set():
                locks.update(str(mode) for (mode,) in conn.execute(
                    """SELECT l.mode FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
                       WHERE a.application_name = 'procos-purge' AND l.relation = 'procos_ai_context'::regclass
                    """).fetchall())
                writer_waits.append(_timed_insert(store))

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        code, report, err = _purge(url, tmp_path, "--older-than", "90d", "--batch-size", "200")
    finally:
        stop.set()
        watcher.join(30)
    assert code == 0, err
    assert report["rows_purged"] == 2400 and report["instances_purged"] == 6
    # No statement deletes more than one batch: 12 full ones, and a 13th that finds nothing left.
    assert report["deletes"] == 2400 // 200 + 1
    assert "RowExclusiveLock" in locks, "the sampling saw the purge at work"
    assert locks <= {"AccessShareLock", "RowExclusiveLock"}, locks
    assert writer_waits and max(writer_waits) < 2.0, "a worker's write waited on the purge"


def _timed_insert(store: ContextStore) -> float:
    import time

    started = time.monotonic()
    task = Task(id=f"t-{uuid.uuid4()}", topic="ai-query", worker_id="w", process_instance_id=f"pi-{uuid.uuid4()}")
    store.save_input(task, TaskInputs(query="q"), _USER, model="smollm2:135m", options={})
    return time.monotonic() - started


def test_a_locked_row_stops_the_purge_safely_and_an_unreachable_engine_deletes_nothing(
    scratch: tuple[str, ContextStore], instances: Instances, tmp_path: Path,
) -> None:
    url, store = scratch
    first, second = instances.ended(), instances.ended()
    _write(store, first, tasks=1, days_old=100, url=url)
    _write(store, second, tasks=1, days_old=95, url=url)
    before = _counts(url)

    code, _report, err = _purge(url, tmp_path, "--older-than", "90d",
                                CAMUNDA_BASE_URL="http://127.0.0.1:9/engine-rest", CAMUNDA_HTTP_TIMEOUT_S="2")
    assert code == 3 and "Camunda" in err
    assert _counts(url) == before, "nothing is deleted without the engine's word"

    with psycopg.connect(url) as holder:  # a transaction holding a row lock of the second instance
        holder.execute("SELECT id FROM procos_ai_context WHERE process_instance_id = %s FOR UPDATE", (second,))
        code, _report, err = _purge(url, tmp_path, "--older-than", "90d", "--batch-size", "2")
        holder.rollback()
    assert code == 1 and "lock" in err, err
    assert _counts(url) == {second: 2}, "the batch before the locked row is done, the locked one untouched"


def test_scheduled_purge_runs_in_one_worker_at_a_time(
    scratch: tuple[str, ContextStore], instances: Instances, tmp_path: Path, settings: Settings,
    spawn: Callable[..., Any],
) -> None:
    url, store = scratch
    ended = instances.ended()
    with psycopg.connect(url, autocommit=True) as lock_holder:
        assert lock_holder.execute("SELECT pg_try_advisory_lock(%s)", (PURGE_LOCK_KEY,)).fetchone() == (True,)
        _write(store, ended, tasks=2, days_old=100, url=url)
        env = {"DATABASE_URL": url, "RETENTION_PURGE_OLDER_THAN": "90d", "RETENTION_INTERVAL_S": "1"}
        workers = [spawn(f"ops-retention-{uuid.uuid4().hex[:6]}", **env) for _ in range(2)]
        for worker in workers:
            worker.wait_for("retention.skipped", timeout_s=60, count=2)
        assert _counts(url) == {ended: 4}, "no purge while another session holds the lock"
        lock_holder.execute("SELECT pg_advisory_unlock(%s)", (PURGE_LOCK_KEY,))
    wait_until(lambda: not _counts(url), 60, "the scheduled purge")

    def purged() -> list[int]:
        return [e["rows_purged"] for w in workers for e in w.find("retention.purged") if e["rows_purged"]]

    # The worker logs its purge after every mode of the round is done: the rows go before the line comes.
    wait_until(purged, 30, "the purging worker's retention.purged line")
    assert purged() == [4], "one worker purged, once"
