"""Fixtures shared by every suite: the one Settings object, and the real local stack (scripts/stack up):
Camunda, PostgreSQL, Ollama. A missing service fails the test that needs it, naming the service;
nothing is skipped or mocked.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import requests

from procos_testkit.engine import EngineRest
from procos_testkit.worker_process import WorkerProcess, subprocess_env
from procos_worker.settings import Settings, default_worker_id
from procos_worker.store.context import ContextStore
from procos_worker.worker import Worker

STACK_HINT = "start the local stack with: scripts/stack up"


@pytest.fixture(scope="session")
def settings() -> Settings:
    """Settings from the environment / .env; the defaults point at the local stack (scripts/stack)."""
    return Settings()


def with_overrides(settings: Settings, **sections: dict[str, Any]) -> Settings:
    """A copy of ``settings`` with some fields of some sections replaced."""
    update = {name: getattr(settings, name).model_copy(update=fields) for name, fields in sections.items()}
    return settings.model_copy(update=update)


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
        opened.upgrade_schema()
        yield opened


@pytest.fixture()
def db(settings: Settings, store: ContextStore) -> Iterator[psycopg.Connection[Any]]:
    """A fresh autocommit connection per test for assertions (fault tests restart PostgreSQL)."""
    with psycopg.connect(settings.database.url.get_secret_value(), autocommit=True) as conn:
        yield conn


@pytest.fixture(scope="session")
def ollama_up(settings: Settings) -> str:
    """The real Ollama's base URL, after checking it serves the configured model."""
    base_url = settings.ollama.base_url
    try:
        tags = requests.get(f"{base_url}/api/tags", timeout=5).json()
    except requests.RequestException as exc:
        pytest.fail(f"Ollama not reachable at {base_url} ({exc}); {STACK_HINT}")
    names = [m.get("name") for m in tags.get("models", [])]
    if settings.ollama.model not in names:
        pytest.fail(f"model {settings.ollama.model} missing from Ollama at {base_url} (has {names}); {STACK_HINT}")
    return base_url


@pytest.fixture()
def deployed(engine_rest: EngineRest) -> tuple[str, str]:
    """The example process deployed under a topic and key of this test's own: (topic, process key)."""
    return engine_rest.deploy_example()


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


@pytest.fixture()
def run_worker(settings: Settings, store: ContextStore, tmp_path: Path) -> Iterator[Callable[..., RunningWorker]]:
    """In-process workers: ``run_worker(topic, worker={...}, ollama={...})``; all stopped at teardown."""
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


@pytest.fixture()
def worker_process(tmp_path: Path) -> Iterator[Callable[..., WorkerProcess]]:
    """``procos-worker run`` subprocesses: ``worker_process(topic, ENV=value, ...)``; stopped at teardown."""
    started: list[WorkerProcess] = []

    def start(topic: str, **env: str) -> WorkerProcess:
        health = tmp_path / f"health-{uuid.uuid4().hex[:6]}.json"
        process = WorkerProcess(subprocess_env(topic, health, **env), tmp_path, name=f"worker-{len(started)}")
        started.append(process.start())
        return process

    yield start
    for process in started:
        process.stop()
