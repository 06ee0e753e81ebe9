"""Fixtures of the fault suite (issue 4): the real Camunda, PostgreSQL and Ollama, the worker as a
subprocess or in-process, and proxies that make a service look down or hold a request.
"""

from __future__ import annotations

import sys
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import requests

from procos_worker.settings import Settings, default_worker_id
from procos_worker.store import ContextStore
from procos_worker.testing.engine import EngineRest
from procos_worker.testing.fake_ollama import FakeOllama
from procos_worker.worker import Worker

# The helpers live beside this file; test modules import them as ``faultkit``.
sys.path.insert(0, str(Path(__file__).resolve().parent))

from faultkit import CAMUNDA_ROOT, REAL_OLLAMA, HoldingProxy, WorkerProcess, worker_env

STACK_HINT = "start the local stack with: scripts/stack up"


@pytest.fixture(scope="session")
def engine_rest(settings: Settings) -> EngineRest:
    rest = EngineRest(settings.camunda.base_url)
    try:
        rest.get("/engine")
    except requests.RequestException as exc:
        pytest.fail(f"Camunda engine not reachable at {settings.camunda.base_url} ({exc}); {STACK_HINT}")
    return rest


@pytest.fixture(scope="session")
def store(settings: Settings) -> Iterator[ContextStore]:
    try:
        psycopg.connect(settings.database.url.get_secret_value(), connect_timeout=5).close()
    except psycopg.OperationalError as exc:
        pytest.fail(f"PostgreSQL not reachable ({str(exc).strip()}); {STACK_HINT}")
    with ContextStore(settings.database) as opened:
        opened.apply_schema()
        yield opened


@pytest.fixture()
def db(settings: Settings, store: ContextStore) -> Iterator[psycopg.Connection[Any]]:
    """A fresh autocommit connection per test (tests restart PostgreSQL, which kills old ones)."""
    with psycopg.connect(settings.database.url.get_secret_value(), autocommit=True) as conn:
        yield conn


@pytest.fixture()
def real_ollama() -> str:
    try:
        tags = requests.get(f"{REAL_OLLAMA}/api/tags", timeout=5).json()
    except requests.RequestException as exc:
        pytest.fail(f"Ollama not reachable at {REAL_OLLAMA} ({exc}); {STACK_HINT}")
    names = [m.get("name") for m in tags.get("models", [])]
    assert "smollm2:135m" in names, f"model smollm2:135m missing from the real Ollama (has {names}); {STACK_HINT}"
    return REAL_OLLAMA


@pytest.fixture()
def deployed(engine_rest: EngineRest) -> tuple[str, str]:
    """The example process under a topic and key of this test's own: (topic, process key)."""
    return engine_rest.deploy_example()


@pytest.fixture()
def fake() -> Iterator[FakeOllama]:
    """The fake Ollama: only for what the real one can't do on demand (slow, 503, NUL, surrogates, huge)."""
    with FakeOllama() as server:
        yield server


@pytest.fixture()
def camunda_proxy() -> Iterator[HoldingProxy]:
    """A counting proxy in front of Camunda that can hold calls (e.g. ``/complete``) or refuse."""
    proxy = HoldingProxy(CAMUNDA_ROOT, upstream_timeout_s=120).start()
    yield proxy
    proxy.stop()


@pytest.fixture()
def spawn(tmp_path: Path) -> Iterator[Callable[..., WorkerProcess]]:
    """Start ``procos-worker run`` subprocesses: ``spawn(topic, ENV=value, ...)``; killed at teardown."""
    started: list[WorkerProcess] = []

    def start(topic: str, **env: str) -> WorkerProcess:
        process = WorkerProcess(worker_env(tmp_path, topic, **env), tmp_path, name=f"worker-{len(started)}")
        started.append(process.start())
        return process

    yield start
    for process in started:
        if process.alive:
            process.kill()


class RunningWorker:
    """A Worker serving in a background thread of the test process."""

    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        self.exit_code: int | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        self.exit_code = self.worker.run(install_signal_handlers=False)

    def start(self) -> RunningWorker:
        self._thread.start()
        return self

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def stop(self, timeout_s: float = 60.0) -> int | None:
        self.worker.stop()
        self._thread.join(timeout_s)
        assert not self._thread.is_alive(), "worker did not stop"
        return self.exit_code


def with_overrides(settings: Settings, **sections: dict[str, Any]) -> Settings:
    update = {name: getattr(settings, name).model_copy(update=fields) for name, fields in sections.items()}
    return settings.model_copy(update=update)


@pytest.fixture()
def run_worker(settings: Settings, store: ContextStore, tmp_path: Path) -> Iterator[Callable[..., RunningWorker]]:
    """In-process workers: ``run_worker(topic, worker={...}, ollama={...})``; stopped at teardown."""
    started: list[RunningWorker] = []

    def start(topic: str, **sections: dict[str, Any]) -> RunningWorker:
        worker_fields = {"id": default_worker_id(), "topics": [topic],
                         "health_file": tmp_path / f"health-{uuid.uuid4().hex[:6]}.json",
                         "async_response_timeout_ms": 5_000, **sections.pop("worker", {})}
        sections.setdefault("backoff", {"initial_s": 0.2, "max_s": 2.0})
        running = RunningWorker(Worker(with_overrides(settings, worker=worker_fields, **sections))).start()
        started.append(running)
        return running

    yield start
    for running in started:
        running.stop()
