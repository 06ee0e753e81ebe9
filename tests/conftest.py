"""Fixtures shared by every suite: the one Settings object, the real local stack (scripts/stack up):
Camunda, PostgreSQL, Ollama, and the test doubles and proxies several suites use. A missing service
fails the test that needs it, naming the service; nothing is skipped or mocked.

Suite-only helpers are modules of the ``tests`` package (``tests.faults.faultkit``,
``tests.deploy.deploykit``); doubles and proxies shared with the benchmarks are in ``procos_testkit``.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import requests

from procos_testkit.engine import EngineRest
from procos_testkit.fake_ollama import FakeOllama
from procos_testkit.holding_proxy import HoldingProxy
from procos_testkit.in_process import Doubles, RunningWorker
from procos_testkit.tcp_proxy import TcpProxy
from procos_testkit.worker_process import WorkerProcess
from procos_worker.settings import BackoffSettings, CamundaSettings, Settings, WorkerSettings, default_worker_id
from procos_worker.store.context import ContextStore
from procos_worker.worker import Worker
from tests.faults.faultkit import CAMUNDA_ROOT, WORKER_COMMAND, worker_env

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


# -- the worker on in-memory doubles (unit tests) ---------------------------------------------------


@pytest.fixture()
def doubles() -> Iterator[Doubles]:
    """In-memory engine, store and scripted LLM sharing a fake clock (``procos_testkit.in_process``).
    At the end, held chats are let go and pending long polls end."""
    made = Doubles()
    yield made
    made.llm.release()
    made.engine.close()


@pytest.fixture()
def unit_settings(tmp_path: Path) -> Callable[..., Settings]:
    """Settings for the worker on doubles: ``unit_settings(max_tasks_in_flight=1, ...)`` sets worker fields.
    Backoff delays are 1-4 ms so that waiting out an outage costs the test nothing."""

    def make(**worker: Any) -> Settings:
        fields: dict[str, Any] = {"id": "unit-worker", "topics": ["ai-query"], "lock_duration_ms": 10_000,
                                  "max_tasks_in_flight": 2, "health_file": tmp_path / "health.json", **worker}
        return Settings(worker=WorkerSettings(**fields), backoff=BackoffSettings(initial_s=0.001, max_s=0.004),
                        camunda=CamundaSettings(http_timeout_s=2.0))

    return make


# -- doubles and proxies -----------------------------------------------------------------------------


@pytest.fixture()
def real_ollama(ollama_up: str) -> str:
    """The real Ollama (the shared ``ollama_up`` check: reachable and serving the model)."""
    return ollama_up


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
def ollama_proxy(real_ollama: str) -> Iterator[HoldingProxy]:
    """A counting proxy in front of the real Ollama that can hold chats or play dead."""
    proxy = HoldingProxy(real_ollama).start()
    yield proxy
    proxy.stop()


@pytest.fixture()
def pg_proxy() -> Iterator[TcpProxy]:
    """A TCP proxy in front of PostgreSQL that can refuse and cut connections."""
    with TcpProxy(5432) as proxy:
        yield proxy


# -- workers as subprocesses -------------------------------------------------------------------------


_FAILED = pytest.StashKey[bool]()
_LOG_LINES_ON_FAILURE = 80


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None],
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Remember a failed test body, for fixtures that add what they saw to its report (``spawn``)."""
    report: pytest.TestReport = yield
    if report.when == "call" and report.failed:
        item.stash[_FAILED] = True
    return report


@pytest.fixture()
def spawn(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Callable[..., WorkerProcess]]:
    """Start ``procos-worker run`` subprocesses: ``spawn(topic, ENV=value, ...)``; killed at teardown. When
    the test failed, each worker's last log lines go to the report (its subprocess's output is not
    captured otherwise)."""
    started: list[WorkerProcess] = []

    def start(topic: str, **env: str) -> WorkerProcess:
        process = WorkerProcess(worker_env(tmp_path, topic, **env), tmp_path, name=f"worker-{len(started)}",
                                command=WORKER_COMMAND)
        started.append(process.start())
        return process

    yield start
    for process in started:
        if process.alive:
            process.kill()
    if request.node.stash.get(_FAILED, False):
        for process in started:
            print(f"--- {process.name}: last {_LOG_LINES_ON_FAILURE} log lines ---")
            print("\n".join(process.raw[-_LOG_LINES_ON_FAILURE:]))
