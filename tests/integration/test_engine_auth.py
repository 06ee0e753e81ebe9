"""Bearer-token login against the local engine that requires one (scripts/stack service camunda-token,
http://127.0.0.1:8082: its own OAuth2 client-credentials endpoint issues 30 s tokens; /oauth/revoke
forgets one). Real Camunda, PostgreSQL and Ollama.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import pytest
import requests
import structlog
from pydantic import SecretStr

from procos_testkit.engine import EngineRest, wait_until
from procos_worker.engine.auth import ClientCredentials
from procos_worker.engine.client import EngineClient
from procos_worker.errors import EngineAuthFailed, EngineRejected
from procos_worker.settings import CamundaSettings, Settings, env_var_names

pytestmark = pytest.mark.integration

ROOT = "http://127.0.0.1:8082"
BASE_URL = f"{ROOT}/engine-rest"
TOKEN_URL = f"{ROOT}/oauth/token"
CLIENT = ("procos-worker", "procos-secret")
TOKEN_TTL_S = 30
# Real model, short answers: the shared Ollama serves one request at a time.
SHORT = {"options": {"num_predict": 16}}


def _token() -> str:
    response = requests.post(TOKEN_URL, data={"grant_type": "client_credentials"}, auth=CLIENT, timeout=10)
    response.raise_for_status()
    return str(response.json()["access_token"])


def _revoke(token: str) -> None:
    requests.post(f"{ROOT}/oauth/revoke", data={"token": token}, auth=CLIENT, timeout=10).raise_for_status()


class _FreshToken(requests.auth.AuthBase):
    """The test's own login (not the code under test): a new token for every request."""

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        request.headers["Authorization"] = f"Bearer {_token()}"
        return request


@pytest.fixture(scope="module")
def token_engine() -> EngineRest:
    rest = EngineRest(BASE_URL)
    rest.session.auth = _FreshToken()
    try:
        rest.get("/engine")
    except requests.RequestException as exc:
        pytest.fail(f"the token engine is not reachable at {BASE_URL} ({exc}); start it with: "
                    "scripts/stack up camunda-token")
    return rest


def _oauth(secret: str = CLIENT[1], **changes: Any) -> dict[str, Any]:
    """CamundaSettings fields (typed: the run_worker fixture copies them in without validation)."""
    return {"base_url": BASE_URL, "oauth_token_url": TOKEN_URL, "oauth_client_id": CLIENT[0],
            "oauth_client_secret": SecretStr(secret), **changes}


def _auth_of(running: Any) -> ClientCredentials:
    auth = running.worker.engine.session.auth
    assert isinstance(auth, ClientCredentials)
    return auth


def test_the_engine_refuses_calls_without_a_valid_token() -> None:
    assert requests.get(f"{BASE_URL}/engine", timeout=10).status_code == 401
    assert requests.get(f"{BASE_URL}/engine", headers={"Authorization": "Bearer nope"}, timeout=10).status_code == 401


def test_worker_serves_a_task_with_client_credentials_and_refreshes_before_expiry(
    token_engine: EngineRest, ollama_up: str, run_worker: Callable[..., Any],
) -> None:
    """Two real tasks more than half a token lifetime apart: the token is renewed before it expires (the
    worker fetched two and the engine never answered 401), and both tasks complete."""
    topic, key = token_engine.deploy_example()
    running = run_worker(topic, camunda=_oauth(oauth_scope="engine-rest"), ollama=SHORT)
    started = time.monotonic()
    first = token_engine.start(key, {"query": "Say hello."})
    wait_until(lambda: token_engine.passed_task(first), 300, "the first task completed on the token engine")
    auth = _auth_of(running)
    # Refresh margin: min(30 s, half the lifetime) = 15 s before expiry; the long polls (5 s) keep calling.
    time.sleep(max(0.0, TOKEN_TTL_S / 2 + 1 - (time.monotonic() - started)))
    second = token_engine.start(key, {"query": "Say goodbye."})
    wait_until(lambda: token_engine.passed_task(second), 300, "the second task completed on the token engine")
    served_s = time.monotonic() - started
    assert auth.fetched >= 2, "renewed at least once"
    assert auth.fetched <= served_s // (TOKEN_TTL_S / 2) + 1, (auth.fetched, served_s)  # not on every call
    assert auth.retried_401 == 0 and auth.refreshed_on_401 == 0, "no call was refused: no token expired in use"
    assert running.worker.counters.completed == 2
    flags = token_engine.variables(second)
    assert flags["ai_response_stored"]["value"] is True


def test_a_revoked_token_costs_one_refresh_and_retry_never_a_lost_lock(
    token_engine: EngineRest, ollama_up: str, run_worker: Callable[..., Any],
) -> None:
    topic, key = token_engine.deploy_example()
    running = run_worker(topic, camunda=_oauth(), ollama=SHORT)
    auth = _auth_of(running)
    wait_until(lambda: auth.fetched == 1, 30, "the worker's first token")
    with structlog.testing.capture_logs() as logs:
        _revoke(auth.token())  # as an identity provider does when a token is rotated early
        pi = token_engine.start(key, {"query": "Say hello."})
        wait_until(lambda: token_engine.passed_task(pi), 300, "the task completed after the revocation")
    assert auth.refreshed_on_401 == 1, "exactly one new token because of the 401"
    assert auth.retried_401 >= 1
    events = {e["event"] for e in logs}
    assert "task.completed" in events
    assert not events & {"task.lock_lost", "task.abandoned", "engine.fetch_failed"}, events
    assert running.worker.counters.completed == 1 and running.worker.counters.abandoned == 0


def test_wrong_client_secret_is_a_clear_error_and_no_task_is_lost(
    token_engine: EngineRest, ollama_up: str, run_worker: Callable[..., Any],
) -> None:
    topic, key = token_engine.deploy_example()
    pi = token_engine.start(key, {"query": "Say hello."})
    with structlog.testing.capture_logs() as logs:
        wrong = run_worker(topic, camunda=_oauth("not-the-secret"), ollama=SHORT)
        failed = wait_until(lambda: [e for e in logs if e["event"] == "engine.fetch_failed"], 30,
                            "the fetch failure logged")
        wrong.stop()
    assert "refused client 'procos-worker': invalid_client" in failed[0]["error"]
    assert "not-the-secret" not in str(failed)
    assert wrong.worker.counters.fetched == 0
    task = token_engine.external_tasks(processInstanceId=pi)[0]
    assert task["workerId"] is None and task["lockExpirationTime"] is None, "the task was never locked"
    run_worker(topic, camunda=_oauth(), ollama=SHORT)
    wait_until(lambda: token_engine.passed_task(pi), 300, "the task completed by a worker with the right secret")


def test_client_credentials_errors_are_typed() -> None:
    client = EngineClient(CamundaSettings(**_oauth("wrong")), "w", async_response_timeout_ms=0)
    with pytest.raises(EngineAuthFailed, match="invalid_client"):
        client.engine_name()
    client.close()
    scoped = EngineClient(CamundaSettings(**_oauth(oauth_scope="everything")), "w", async_response_timeout_ms=0)
    with pytest.raises(EngineAuthFailed, match="invalid_scope"):
        scoped.engine_name()
    scoped.close()


def test_static_token_is_sent_and_a_revoked_one_is_refused() -> None:
    token = _token()
    client = EngineClient(CamundaSettings(base_url=BASE_URL, token=SecretStr(token)), "w", async_response_timeout_ms=0)
    try:
        assert client.engine_name() == "default"
        _revoke(token)
        with pytest.raises(EngineRejected) as info:
            client.engine_name()
        assert info.value.message.startswith("Camunda answered 401")
    finally:
        client.close()


def _check(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if k not in env_var_names()}
    return subprocess.run([sys.executable, "-m", "procos_worker", "check"], env={**clean, **env},
                          capture_output=True, text=True, timeout=120, check=False)


def test_check_logs_in_with_client_credentials_and_names_a_refusal(settings: Settings) -> None:
    env = {"CAMUNDA_BASE_URL": BASE_URL, "CAMUNDA_OAUTH_TOKEN_URL": TOKEN_URL, "CAMUNDA_OAUTH_CLIENT_ID": CLIENT[0],
           "CAMUNDA_OAUTH_CLIENT_SECRET": CLIENT[1], "DATABASE_URL": settings.database.url.get_secret_value(),
           "OLLAMA_BASE_URL": settings.ollama.base_url}
    good = _check(env)
    assert good.returncode == 0, good.stdout + good.stderr
    assert "camunda     ok: engines default" in good.stdout
    bad = _check({**env, "CAMUNDA_OAUTH_CLIENT_SECRET": "wrong-secret-value"})
    assert bad.returncode == 3, bad.stdout + bad.stderr
    assert "refused client 'procos-worker': invalid_client" in bad.stdout
    assert "wrong-secret-value" not in bad.stdout + bad.stderr
