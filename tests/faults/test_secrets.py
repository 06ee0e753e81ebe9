"""Fault 6: at LOG_LEVEL=DEBUG, with errors provoked, no password reaches stdout or stderr.

The Camunda password is a real one: a user created for this test on the auth-enabled engine
(scripts/stack service camunda-auth, HTTP basic auth on /engine-rest/*).
"""

from __future__ import annotations

import base64
import signal
import urllib.parse
import uuid
from collections.abc import Callable, Iterator

import pytest
import requests
from faultkit import DB_PASSWORD, TcpProxy, WorkerProcess, db_url_via, wait_until

from procos_testkit.engine import EngineRest
from procos_testkit.fake_ollama import FakeOllama

pytestmark = pytest.mark.faults

AUTH_REST = "http://127.0.0.1:8081/engine-rest"
ADMIN = ("demo", "demo")


@pytest.fixture()
def camunda_user() -> Iterator[tuple[str, str]]:
    try:
        requests.get(f"{AUTH_REST}/engine", timeout=5).raise_for_status()
    except requests.RequestException as exc:
        pytest.fail(f"the auth-enabled engine is not reachable at {AUTH_REST} ({exc}); scripts/stack up camunda-auth")
    user, password = f"procos{uuid.uuid4().hex[:8]}", f"Cam-S3cret-{uuid.uuid4().hex}"
    created = requests.post(f"{AUTH_REST}/user/create", auth=ADMIN, timeout=10, json={
        "profile": {"id": user, "firstName": "Fault", "lastName": "Suite", "email": f"{user}@example.org"},
        "credentials": {"password": password},
    })
    assert created.status_code == 204, created.text
    yield user, password
    requests.delete(f"{AUTH_REST}/user/{user}", auth=ADMIN, timeout=10)


@pytest.fixture()
def pg_proxy() -> Iterator[TcpProxy]:
    with TcpProxy(5432) as proxy:
        yield proxy


def _forms(secret: str) -> list[str]:
    """The secret as it could leak: raw, URL-quoted, and inside a basic-auth header."""
    return [secret, urllib.parse.quote(secret, safe="")]


def _assert_clean(worker: WorkerProcess, secrets: list[str]) -> None:
    text = worker.text()
    assert text, "the worker logged something"
    for secret in secrets:
        for form in _forms(secret):
            assert form not in text, f"a secret leaked into the worker's output ({len(text)} chars)"


def test_no_password_in_debug_output_through_errors(
    camunda_user: tuple[str, str], fake: FakeOllama, pg_proxy: TcpProxy, spawn: Callable[..., WorkerProcess],
) -> None:
    user, password = camunda_user
    engine = EngineRest(AUTH_REST, auth=(user, password))
    topic, key = engine.deploy_example()
    basic = base64.b64encode(f"{user}:{password}".encode()).decode()
    db_url = db_url_via(pg_proxy.port)
    env = {"CAMUNDA_BASE_URL": AUTH_REST, "CAMUNDA_USERNAME": user, "CAMUNDA_PASSWORD": password,
           "DATABASE_URL": db_url, "OLLAMA_BASE_URL": fake.base_url, "LOG_LEVEL": "DEBUG",
           "WORKER_SHUTDOWN_GRACE_S": "3"}

    # 1. Works with the credentials (so they really went through the code paths).
    worker = spawn(topic, **env)
    pi = engine.start(key, {"query": "hello"})
    engine.wait_for(lambda: engine.passed_task(pi), timeout_s=30, what="completion on the auth engine")
    assert worker.find("task.completed")

    # 2. PostgreSQL down while a task runs.
    pg_proxy.pause()
    pi2 = engine.start(key, {"query": "hello again"})
    worker.wait_for("service.down", service="postgresql", timeout_s=30)
    pg_proxy.resume()
    engine.wait_for(lambda: engine.passed_task(pi2), timeout_s=30, what="completion after PostgreSQL is back")
    worker.signal(signal.SIGTERM)
    assert worker.wait(15) == 0
    _assert_clean(worker, [password, basic, DB_PASSWORD, db_url])

    # 3. Wrong database password, and a wrong Camunda password (another user: no lockout of the real one).
    wrong_db = f"Wr0ng-Db-{uuid.uuid4().hex}"
    wrong_cam = f"Wr0ng-Cam-{uuid.uuid4().hex}"
    bad = spawn(topic, **{**env, "DATABASE_URL": db_url_via(5432, wrong_db),
                          "CAMUNDA_USERNAME": f"nobody{uuid.uuid4().hex[:6]}", "CAMUNDA_PASSWORD": wrong_cam})
    bad.wait_for("engine.fetch_failed", timeout_s=30)
    pi3 = EngineRest(AUTH_REST, auth=(user, password)).start(key, {"query": "and once more"})
    assert pi3
    bad.signal(signal.SIGTERM)
    assert bad.wait(15) == 0
    failed = bad.find("engine.fetch_failed")
    assert "401" in failed[0]["error"], failed[0]
    _assert_clean(bad, [wrong_db, wrong_cam, DB_PASSWORD, password])

    # 4. Wrong database password with the right Camunda login: the task's store call fails.
    bad_db = spawn(topic, **{**env, "DATABASE_URL": db_url_via(5432, wrong_db)})
    bad_db.wait_for("service.down", service="postgresql", timeout_s=60)
    assert bad_db.find("service.down", service="postgresql")
    wait_until(lambda: len(bad_db.raw) > 5, 10, "a few log lines")
    bad_db.signal(signal.SIGTERM)
    assert bad_db.wait(20) == 0
    _assert_clean(bad_db, [wrong_db, DB_PASSWORD, password, basic])

