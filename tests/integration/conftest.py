"""Fixtures for tests on the real local stack (scripts/stack up): Camunda, PostgreSQL, Ollama.

A missing service fails the test that needs it, naming the service; nothing is skipped or mocked.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import requests

from procos_worker.settings import Settings, default_worker_id
from procos_worker.store import ContextStore
from procos_worker.testing.engine import EngineRest
from procos_worker.worker import Worker

STACK_HINT = "start the local stack with: scripts/stack up"


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
        opened.apply_schema()
        yield opened


@pytest.fixture(scope="session")
def db(settings: Settings, store: ContextStore) -> Iterator[psycopg.Connection[Any]]:
    """A plain autocommit connection for assertions (the schema is applied by ``store``)."""
    with psycopg.connect(settings.database.url.get_secret_value(), autocommit=True) as conn:
        yield conn


@pytest.fixture(scope="session")
def ollama_up(settings: Settings) -> str:
    try:
        requests.get(f"{settings.ollama.base_url}/api/version", timeout=5).raise_for_status()
    except requests.RequestException as exc:
        pytest.fail(f"Ollama not reachable at {settings.ollama.base_url} ({exc}); {STACK_HINT}")
    return settings.ollama.base_url


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

    def stop(self, timeout_s: float = 60.0) -> int | None:
        self.worker.stop()
        self._thread.join(timeout_s)
        assert not self._thread.is_alive(), "worker did not stop"
        return self.exit_code


@pytest.fixture()
def run_worker(settings: Settings, store: ContextStore, tmp_path: Path) -> Iterator[Callable[..., RunningWorker]]:
    """Start in-process workers: ``run_worker(topic, worker={...}, ollama={...})``; all stopped at teardown."""
    started: list[RunningWorker] = []

    def start(topic: str, **sections: dict[str, Any]) -> RunningWorker:
        worker_fields = {"id": default_worker_id(), "topics": [topic], "health_file": tmp_path / f"health-{len(started)}.json",
                         "async_response_timeout_ms": 5_000, **sections.pop("worker", {})}
        custom = with_overrides(settings, worker=worker_fields, **sections)
        running = RunningWorker(Worker(custom)).start()
        started.append(running)
        return running

    yield start
    for running in started:
        running.stop()
