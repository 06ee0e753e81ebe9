"""Settings and request bodies of issue 15: login choices, WORKER_TOPIC_FETCH, fetch order; and the
token endpoint's failures as typed errors (a tiny local HTTP server plays the endpoint)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from procos_worker.engine.auth import BearerToken, ClientCredentials, engine_auth
from procos_worker.engine.fetch import fetch_order, subscriptions
from procos_worker.errors import EngineAuthFailed, EngineUnavailable
from procos_worker.settings import CamundaSettings, Settings, WorkerSettings, env_var_names


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in env_var_names():
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)


def test_topic_fetch_from_the_environment_becomes_the_request_body(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WORKER_TOPICS", "a,b")
    monkeypatch.setenv("WORKER_LOCK_DURATION_MS", "60000")
    monkeypatch.setenv("WORKER_TOPIC_FETCH", '{"a": {"tenantIdIn": ["t1"], "lock_duration_ms": 5000, '
                                             '"variables": ["note", "query"], "process_variables": {"r": "eu"}}, '
                                             '"b": {"without_tenant_id": true, "business_key": "k"}}')
    monkeypatch.setenv("WORKER_USE_PRIORITY", "false")
    monkeypatch.setenv("WORKER_CREATE_TIME_ORDER", "desc")
    w = Settings().worker
    a, b = subscriptions(w, ["query", "context"])
    assert a.as_rest(deserialize_values=False, include_extension_properties=True) == {
        "topicName": "a", "lockDuration": 5000, "variables": ["query", "context", "note"],
        "deserializeValues": False, "includeExtensionProperties": True,
        "tenantIdIn": ["t1"], "processVariables": {"r": "eu"}}
    assert b.lock_duration_ms == 60000
    assert b.filters == {"businessKey": "k", "withoutTenantId": True}
    order = fetch_order(w)
    assert order.use_priority is False
    assert order.sorting == ({"sortBy": "createTime", "sortOrder": "desc"},)
    assert w.lock_duration_for("a") == 5000 and w.lock_duration_for("b") == 60000


def test_defaults_fetch_by_priority_without_sorting() -> None:
    order = fetch_order(WorkerSettings())
    assert order.use_priority is True and order.sorting == ()


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"topics": ["a"], "topic_fetch": {"b": {}}}, "not in WORKER_TOPICS: b"),
        ({"topics": ["a"], "topic_fetch": {"a": {"tenant_id_in": ["t"], "without_tenant_id": True}}}, "not both"),
        ({"topics": ["a"], "topic_fetch": {"a": {"lock_duration": 5}}}, "lock_duration"),  # unknown key
        ({"topics": ["a"], "topic_fetch": {"a": {"lock_duration_ms": 10}}}, "greater than or equal to 1000"),
        ({"create_time_order": "oldest"}, "'none', 'asc' or 'desc'"),
    ],
)
def test_bad_fetch_settings_are_refused_with_a_clear_message(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        WorkerSettings(**fields)


def test_topic_fetch_must_be_a_json_object(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WORKER_TOPIC_FETCH", "{not json")
    with pytest.raises(ValidationError, match="WORKER_TOPIC_FETCH must be a JSON object"):
        Settings()


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"username": "u", "password": "p", "token": "t"}, "only one way to log in"),
        ({"token": "t", "oauth_token_url": "http://x", "oauth_client_id": "c", "oauth_client_secret": "s"},
         "only one way"),
        ({"oauth_token_url": "http://x", "oauth_client_id": "c"}, "must be set together"),
        ({"username": "u"}, "must be set together"),
    ],
)
def test_one_way_to_log_in(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        CamundaSettings(**fields)


def test_the_login_object_follows_the_settings() -> None:
    assert engine_auth(CamundaSettings()) is None
    assert isinstance(engine_auth(CamundaSettings(token="t")), BearerToken)
    oauth = CamundaSettings(oauth_token_url="http://127.0.0.1:9/t", oauth_client_id="c", oauth_client_secret="s")
    assert isinstance(engine_auth(oauth), ClientCredentials)


class _Endpoint(BaseHTTPRequestHandler):
    status = 503
    body = b"busy"

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.send_response(self.status)
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture()
def endpoint() -> Iterator[tuple[str, type[_Endpoint]]]:
    handler = type("Handler", (_Endpoint,), {})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/token", handler
    server.shutdown()
    server.server_close()


def test_token_endpoint_unreachable_is_engine_unavailable() -> None:
    auth = ClientCredentials("http://127.0.0.1:9/token", "c", "s", timeout_s=2)
    with pytest.raises(EngineUnavailable, match="can't be reached"):
        auth.token()


def test_token_endpoint_5xx_is_engine_unavailable(endpoint: tuple[str, type[_Endpoint]]) -> None:
    url, _handler = endpoint
    with pytest.raises(EngineUnavailable, match="answered 503"):
        ClientCredentials(url, "c", "s").token()


def test_token_endpoint_refusal_names_the_error(endpoint: tuple[str, type[_Endpoint]]) -> None:
    url, handler = endpoint
    handler.status, handler.body = 400, b'{"error": "invalid_scope", "error_description": "no such scope"}'
    with pytest.raises(EngineAuthFailed, match=r"refused client 'c': invalid_scope \(no such scope\)"):
        ClientCredentials(url, "c", "s", scope="x").token()
    handler.status, handler.body = 200, b'{"token_type": "Bearer"}'  # 200 without a token is a refusal too
    with pytest.raises(EngineAuthFailed, match="HTTP 200"):
        ClientCredentials(url, "c", "s").token()


def test_a_token_without_expiry_is_kept_and_one_with_expiry_is_renewed_early(
    endpoint: tuple[str, type[_Endpoint]],
) -> None:
    url, handler = endpoint
    handler.status, handler.body = 200, b'{"access_token": "abc"}'
    forever = ClientCredentials(url, "c", "s")
    assert forever.token() == "abc" and forever.token() == "abc"
    assert forever.fetched == 1
    handler.body = b'{"access_token": "short", "expires_in": 2}'
    short = ClientCredentials(url, "c", "s", refresh_margin_s=30)
    short.token()
    short.token()  # renewal is due 1 s after issue (half the 2 s lifetime): not yet
    assert short.fetched == 1
    threading.Event().wait(1.1)
    short.token()
    assert short.fetched == 2
