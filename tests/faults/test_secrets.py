"""At LOG_LEVEL=DEBUG, with errors provoked, no password reaches stdout or stderr.

The Camunda password is a real one: a user created for this test on the auth-enabled engine
(scripts/stack service camunda-auth, HTTP basic auth on /engine-rest/*).

Issue 9, item 6 adds: a settings error never prints a password (DATABASE_URL as a URL or as key=value
pairs, CAMUNDA_BASE_URL carrying a login); ``check`` prints no secret either; and what the worker sends
Camunda as ``errorDetails`` never holds the prompt or the answer (it names the stored row instead).
"""

from __future__ import annotations

import base64
import signal
import subprocess
import urllib.parse
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest
import requests

from procos_testkit.engine import EngineRest, wait_until
from procos_testkit.fake_ollama import FakeOllama
from procos_testkit.pg import scratch_database
from procos_testkit.tcp_proxy import TcpProxy
from procos_testkit.worker_process import WorkerProcess
from procos_worker.store import migrations
from tests.faults.faultkit import DB_PASSWORD, DB_URL, WORKER_COMMAND, db_url_via, worker_env

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
    worker.wait_for("task.completed", timeout_s=10)  # logged just after the engine has it

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
    # A short pool timeout: each refused store call (the lease at start and at stop) waits it out.
    wrong_db = f"Wr0ng-Db-{uuid.uuid4().hex}"
    wrong_cam = f"Wr0ng-Cam-{uuid.uuid4().hex}"
    env = {**env, "DATABASE_CONNECT_TIMEOUT_S": "1"}
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



# -- issue 9, item 6 ---------------------------------------------------------------------------------

SECRET = f"Pw-{uuid.uuid4().hex}"
SETTINGS_ERRORS: dict[str, dict[str, str]] = {
    # A settings error elsewhere, with the password in a DATABASE_URL of either form.
    # (The password last: pydantic abbreviates a long input in the middle and would hide it by luck.)
    "url-dsn": {"DATABASE_URL": f"postgresql://procos@127.0.0.1:5432/procos?password={SECRET}",
                "CAMUNDA_USERNAME": "u"},
    "key-value-dsn": {"DATABASE_URL": f"host=127.0.0.1 user=procos dbname=procos password={SECRET}",
                      "CAMUNDA_USERNAME": "u"},
    # A DATABASE_URL that does not parse: libpq's message quotes the words around the mistake.
    "malformed-key-value-dsn": {"DATABASE_URL": f"host=127.0.0.1 user=procos password={SECRET[:8]} {SECRET[8:]}"},
    # The Camunda password alone, without its user.
    "camunda-password-alone": {"CAMUNDA_PASSWORD": SECRET},
    # A login inside CAMUNDA_BASE_URL, and another settings error.
    "camunda-url-with-login": {"CAMUNDA_BASE_URL": f"http://procos:{SECRET}@127.0.0.1:8080/engine-rest",
                               "WORKER_LOCK_DURATION_MS": "1"},
}


def _cli(command: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([WORKER_COMMAND[0], command], env=env, capture_output=True, text=True, timeout=120,
                          check=False)


def _secret_forms(secret: str) -> list[str]:
    # Any 6-character piece is a leak too (libpq quotes the word after a mistake).
    pieces = [secret[i:i + 6] for i in range(0, len(secret) - 5, 3)]
    return [*_forms(secret), *pieces]


@pytest.mark.parametrize("case", list(SETTINGS_ERRORS))
@pytest.mark.parametrize("command", ["run", "check"])
def test_settings_error_never_prints_a_secret(case: str, command: str, tmp_path: Path) -> None:
    # Only these settings: pydantic abbreviates a long input in its messages, which can hide a leak.
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "LANG": "C.UTF-8", **SETTINGS_ERRORS[case]}
    result = _cli(command, env)
    output = result.stdout + result.stderr
    assert result.returncode == 2, f"exit {result.returncode}: a settings error (exit 2) expected\n{output[-1500:]}"
    assert "invalid settings" in output
    for form in _secret_forms(SECRET):
        assert form not in output, f"a piece of the secret leaked: {output[-1500:]}"


def test_check_output_is_masked(camunda_user: tuple[str, str], tmp_path: Path, fake: FakeOllama) -> None:
    """``check`` with a login inside CAMUNDA_BASE_URL (it works) and a key=value DATABASE_URL naming a
    database that does not exist (it fails, and says why): no password in what it prints."""
    user, password = camunda_user
    authed = AUTH_REST.replace("http://", f"http://{user}:{urllib.parse.quote(password, safe='')}@")
    dsn = f"host=127.0.0.1 port=5432 user=procos password={DB_PASSWORD} dbname=nope_{uuid.uuid4().hex[:6]}"
    env = worker_env(tmp_path, "secrets-check", CAMUNDA_BASE_URL=authed, DATABASE_URL=dsn,
                     OLLAMA_BASE_URL=fake.base_url, LOG_LEVEL="DEBUG")
    result = _cli("check", env)
    output = result.stdout + result.stderr
    assert result.returncode == 4, output  # PostgreSQL failed, Camunda passed (its login was used)
    assert output.splitlines()[0].startswith("camunda     ok"), output
    assert "does not exist" in output
    for form in [*_forms(password), *_forms(DB_PASSWORD), base64.b64encode(f"{user}:{password}".encode()).decode()]:
        assert form not in output, output


def test_error_details_name_the_row_not_its_content(
    engine_rest: EngineRest, deployed: tuple[str, str], fake: FakeOllama, spawn: Callable[..., WorkerProcess],
) -> None:
    """A database error on the output row (here a CHECK constraint of a scratch database): PostgreSQL's
    DETAIL quotes the failing row, that is the answer and the prompt. errorDetails must not carry it."""
    topic, key = deployed
    prompt = f"my private question {uuid.uuid4().hex}"
    with scratch_database(DB_URL, prefix="procos_secrets") as url:
        with psycopg.connect(url, autocommit=True) as conn:
            migrations.upgrade(conn)
            conn.execute("ALTER TABLE procos_ai_context ADD CONSTRAINT no_answers_today "
                         "CHECK (context_type <> 'output')")
        pi = engine_rest.start(key, {"query": prompt})
        worker = spawn(topic, OLLAMA_BASE_URL=fake.base_url, DATABASE_URL=url)
        incidents = engine_rest.wait_for(lambda: engine_rest.incidents(pi), timeout_s=60, what="an incident")
        task_id = incidents[0]["configuration"]
        details = engine_rest.session.get(f"{engine_rest.base_url}/external-task/{task_id}/errorDetails",
                                          timeout=10).text
        message = engine_rest.get(f"/external-task/{task_id}")["errorMessage"]
        with psycopg.connect(url) as conn:
            row = conn.execute("SELECT id FROM procos_ai_context WHERE task_id = %s AND context_type = 'input'",
                               (task_id,)).fetchone()
        worker.kill()
    assert "no_answers_today" in message, "the message still says what failed"
    assert row is not None and str(row[0]) in details, f"errorDetails names the stored input row: {details}"
    for text in (prompt, prompt[:20], "fake answer"):
        assert text not in details and text not in message, details
