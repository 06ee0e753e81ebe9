"""``/healthz`` and ``/readyz`` on the real stack.

Liveness: a poll loop wedged inside ``fetchAndLock`` (the real engine client, held at the call) and a
heartbeat wedged inside ``extendLock`` each turn ``/healthz`` (and ``procos-worker health``) unhealthy
within the bound while the main thread keeps writing a fresh health file, and healthy again once let
go. Readiness: a worker whose Camunda, PostgreSQL and Ollama are reached through pausable proxies
sees ``/readyz`` follow each of them down and up, and the schema from behind to current, while
``/healthz`` stays 200 (an outage is not a reason to restart a worker).
"""

from __future__ import annotations

import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import requests
from pydantic import SecretStr

from procos_testkit.cli import run_cli
from procos_testkit.engine import EngineRest, wait_until
from procos_testkit.fake_ollama import FakeOllama
from procos_testkit.pg import scratch_database
from procos_testkit.tcp_proxy import TcpProxy
from procos_worker.engine.client import EngineClient
from procos_worker.engine.fetch import fetch_order
from procos_worker.health import HealthRecord
from procos_worker.ops.http import OpsServer
from procos_worker.ops.probes import Readiness
from procos_worker.settings import Settings, default_worker_id
from procos_worker.store import migrations
from procos_worker.worker import Worker

pytestmark = pytest.mark.integration

FIRST_RELEASE_SQL = Path(__file__).resolve().parents[1] / "fixtures" / "init-db-0.1.0.sql"
LIVENESS_S = 8.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class WedgeableEngine(EngineClient):
    """The real engine client; after ``wedge(method)`` the next call of that method blocks until ``release``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._wedged: set[str] = set()
        self._open = threading.Event()
        self._open.set()
        self.entered = threading.Event()

    def wedge(self, method: str) -> None:
        self.entered.clear()
        self._wedged.add(method)
        self._open.clear()

    def release(self) -> None:
        self._wedged.clear()
        self._open.set()

    def _hold(self, method: str) -> None:
        if method in self._wedged:
            self.entered.set()
            self._open.wait()

    def fetch_and_lock(self, *args: Any, **kwargs: Any) -> Any:
        self._hold("fetch_and_lock")
        return super().fetch_and_lock(*args, **kwargs)

    def extend_lock(self, *args: Any, **kwargs: Any) -> None:
        self._hold("extend_lock")
        super().extend_lock(*args, **kwargs)


class ServedWorker:
    """An in-process Worker with the operator's HTTP server in front of it."""

    def __init__(self, settings: Settings, engine: WedgeableEngine) -> None:
        self.settings, self.engine = settings, engine
        self.worker = Worker(settings, engine=engine)
        self.server = OpsServer(settings, self.worker.health_record, Readiness(settings))
        self.url = f"http://127.0.0.1:{settings.ops.http_port}"
        self._thread = threading.Thread(target=self.worker.run, kwargs={"install_signal_handlers": False},
                                        daemon=True)

    def start(self) -> ServedWorker:
        assert self.server.start()
        self._thread.start()
        return self

    def stop(self) -> None:
        self.engine.release()
        self.worker.stop()
        self._thread.join(60)
        self.server.stop()

    def healthz(self) -> tuple[int, dict[str, Any]]:
        response = requests.get(f"{self.url}/healthz", timeout=10)
        return response.status_code, response.json()


@pytest.fixture()
def served(settings: Settings, tmp_path: Path) -> Iterator[Callable[..., ServedWorker]]:
    started: list[ServedWorker] = []

    def start(topic: str, **sections: dict[str, Any]) -> ServedWorker:
        worker = {"id": default_worker_id(), "topics": [topic], "health_file": tmp_path / "health.json",
                  "async_response_timeout_ms": 1000, "shutdown_grace_s": 1.0, **sections.pop("worker", {})}
        ops = {"http_port": free_port(), "liveness_max_s": LIVENESS_S}
        update = {"worker": settings.worker.model_copy(update=worker), "ops": settings.ops.model_copy(update=ops)}
        update |= {name: getattr(settings, name).model_copy(update=fields) for name, fields in sections.items()}
        tuned = settings.model_copy(update=update)
        w = tuned.worker
        engine = WedgeableEngine(tuned.camunda, w.id, async_response_timeout_ms=w.async_response_timeout_ms,
                                 order=fetch_order(w), pool_size=w.max_tasks_in_flight + 3)
        served = ServedWorker(tuned, engine).start()
        started.append(served)
        return served

    yield start
    for served in started:
        served.stop()


def _unhealthy_after(served: ServedWorker) -> tuple[float, dict[str, Any]]:
    """Seconds from the wedge until /healthz said 503, and that answer."""
    assert served.engine.entered.wait(30), "the wedged call was never made"
    wedged_at = time.monotonic()
    body: dict[str, Any] = {}

    def unhealthy() -> bool:
        nonlocal body
        status, body = served.healthz()
        return status == 503

    wait_until(unhealthy, LIVENESS_S + 20, "/healthz to fail", interval_s=0.25)
    return time.monotonic() - wedged_at, body


def test_healthz_fails_when_the_poll_loop_is_wedged_and_recovers_when_it_moves(
    served: Callable[..., ServedWorker], settings: Settings, tmp_path: Path, ollama_up: str,
) -> None:
    worker = served(f"ops-wedge-{uuid.uuid4().hex[:8]}")
    wait_until(lambda: worker.healthz()[0] == 200, 30, "/healthz 200")
    worker.engine.wedge("fetch_and_lock")
    took_s, body = _unhealthy_after(worker)
    # Not before the bound, not long after it.
    assert LIVENESS_S - 1 <= took_s <= LIVENESS_S + 5, took_s
    assert body["status"] == "unhealthy" and body["problem"].startswith("poll loop made no progress"), body
    assert "heartbeat" not in body["problem"] and body["state"] == "running"

    # The main thread's timer still refreshes the health file: its age alone would say "healthy".
    record = HealthRecord.read(worker.settings.worker.health_file)
    assert time.time() - record.ts < 5
    assert "poll loop" in (record.problem(now=time.time(), max_age_s=60, liveness_max_s=LIVENESS_S) or "")
    cli = run_cli("health", cwd=tmp_path, env={"OPS_HTTP_PORT": str(worker.settings.ops.http_port)})
    assert cli.returncode == 1 and b"poll loop made no progress" in cli.stderr, cli
    off = run_cli("health", cwd=tmp_path, env={"OPS_HTTP_PORT": "0", "OPS_LIVENESS_MAX_S": str(LIVENESS_S),
                                               "WORKER_ASYNC_RESPONSE_TIMEOUT_MS": "1000",
                                               "WORKER_HEALTH_FILE": str(worker.settings.worker.health_file)})
    assert off.returncode == 1 and b"poll loop made no progress" in off.stderr, off

    worker.engine.release()
    wait_until(lambda: worker.healthz()[0] == 200, 20, "/healthz 200 again")
    assert run_cli("health", cwd=tmp_path, env={"OPS_HTTP_PORT": str(worker.settings.ops.http_port)}).returncode == 0


def test_healthz_fails_when_the_heartbeat_is_wedged(
    served: Callable[..., ServedWorker], engine_rest: EngineRest, deployed: tuple[str, str],
) -> None:
    topic, key = deployed
    with FakeOllama() as fake:
        worker = served(topic, worker={"lock_duration_ms": 2000}, ollama={"base_url": fake.base_url})
        wait_until(lambda: worker.healthz()[0] == 200, 30, "/healthz 200")
        worker.engine.wedge("extend_lock")
        pi = engine_rest.start(key, {"query": "[[fake:delay_ms=20000]] a slow generation"})  # outlasts the ~9 s check
        _took_s, body = _unhealthy_after(worker)
        assert body["problem"].startswith("heartbeat loop made no progress"), body
        assert body["in_flight"] == 1
        worker.engine.release()
        wait_until(lambda: worker.healthz()[0] == 200, 20, "/healthz 200 again")
        engine_rest.wait_for(lambda: engine_rest.passed_task(pi), timeout_s=90, what="the slow task completed")
    engine_rest.delete_instance(pi)


def _readyz(url: str) -> tuple[int, dict[str, Any]]:
    response = requests.get(f"{url}/readyz", timeout=30)
    return response.status_code, response.json()


def test_readyz_follows_each_dependency_down_and_up(
    spawn: Callable[..., Any], settings: Settings, ollama_up: str,
) -> None:
    base = settings.database.url.get_secret_value()
    with scratch_database(base, prefix="procos_ops_ready") as direct, \
            TcpProxy(5432) as pg, TcpProxy(8080) as camunda, TcpProxy(11434) as ollama:
        with psycopg.connect(direct, autocommit=True) as conn:
            conn.execute(FIRST_RELEASE_SQL.read_text(encoding="utf-8").encode())
        port = free_port()
        db_name = direct.rsplit("/", 1)[1]
        worker = spawn(
            f"ops-ready-{uuid.uuid4().hex[:8]}", OPS_HTTP_PORT=str(port), OPS_READINESS_TIMEOUT_S="2",
            DATABASE_URL=f"postgresql://procos:procos123@127.0.0.1:{pg.port}/{db_name}",
            CAMUNDA_BASE_URL=f"http://127.0.0.1:{camunda.port}/engine-rest",
            OLLAMA_BASE_URL=f"http://127.0.0.1:{ollama.port}")
        worker.wait_for("ops.http_started", timeout_s=60)
        url = f"http://127.0.0.1:{port}"

        def checks() -> dict[str, bool]:
            _status, body = _readyz(url)
            return {name: bool(check["ok"]) for name, check in body["checks"].items()}

        status, body = _readyz(url)
        assert status == 503 and body["status"] == "not ready"
        assert checks() == {"camunda": True, "postgresql": False, "ollama": True}
        assert "schema behind" in body["checks"]["postgresql"]["detail"]
        with psycopg.connect(direct, autocommit=True) as conn:
            migrations.upgrade(conn)
        wait_until(lambda: _readyz(url)[0] == 200, 30, "/readyz 200 once the schema is current")

        for name, proxy in (("camunda", camunda), ("postgresql", pg), ("ollama", ollama)):
            proxy.pause()
            wait_until(lambda n=name: checks() == {k: k != n for k in ("camunda", "postgresql", "ollama")},
                       60, f"/readyz to see {name} down")
            assert _readyz(url)[0] == 503
            assert requests.get(f"{url}/healthz", timeout=10).status_code == 200, "liveness ignores dependencies"
            proxy.resume()
            wait_until(lambda: _readyz(url)[0] == 200, 60, f"/readyz 200 once {name} is back")


def test_readyz_wants_the_configured_model(settings: Settings, ollama_up: str) -> None:
    absent = settings.model_copy(update={"ollama": settings.ollama.model_copy(update={"model": "absent-model:1b"})})
    readiness = Readiness(absent)
    readiness.open()
    try:
        result = readiness.check()
    finally:
        readiness.close()
    assert result["camunda"].ok and result["postgresql"].ok
    assert not result["ollama"].ok and "absent-model:1b missing" in result["ollama"].detail


def test_readyz_never_shows_a_configured_secret(settings: Settings, ollama_up: str) -> None:
    # Contrived on purpose: the Camunda password doubles as the model name, so an error text holds it.
    secret = "hunter2-not-a-model"
    leaky = settings.model_copy(update={
        "camunda": settings.camunda.model_copy(update={"username": "u", "password": SecretStr(secret)}),
        "ollama": settings.ollama.model_copy(update={"model": secret})})
    readiness = Readiness(leaky)
    readiness.open()
    try:
        result = readiness.check()
    finally:
        readiness.close()
    assert result["ollama"].detail.startswith("model *** missing")
    assert all(secret not in check.detail for check in result.values())


def test_readyz_with_several_endpoints_wants_one_that_serves_the_model(settings: Settings, ollama_up: str) -> None:
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    several = settings.ollama.model_copy(update={"base_urls": [dead, ollama_up]})
    readiness = Readiness(settings.model_copy(update={"ollama": several}))
    readiness.open()
    try:
        result = readiness.check()
    finally:
        readiness.close()
    assert result["ollama"].ok, result["ollama"].detail
    assert result["ollama"].detail == f"model {settings.ollama.model} present at {ollama_up}"

    absent = several.model_copy(update={"model": "absent-model:1b"})
    readiness = Readiness(settings.model_copy(update={"ollama": absent}))
    readiness.open()
    try:
        result = readiness.check()
    finally:
        readiness.close()
    detail = result["ollama"].detail
    assert not result["ollama"].ok
    assert f"Ollama at {dead}" in detail, detail
    assert f"absent-model:1b missing at {ollama_up}" in detail, detail
