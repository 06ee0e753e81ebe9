"""Issue 15 item 4: Ollama's address conventions, the connect/read/total timeouts, extra headers and an
API key, and ``think`` with the thinking kept apart from the answer. Timeouts and errors against the
fake Ollama and a listener whose accept queue is full (a host that answers no SYN); headers, 401 and
thinking against a tiny local HTTP server (no real Ollama can think with smollm2, nor stand behind a
proxy here)."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import pytest
from pydantic import ValidationError

from procos_testkit.fake_ollama import FakeOllama
from procos_worker.ai.llm import LlmClient
from procos_worker.errors import LlmAuthFailed, LlmBusy, LlmRequestInvalid, LlmUnavailable
from procos_worker.ops.logs import secrets_of
from procos_worker.settings import OllamaSettings, Settings, env_var_names

HI = [{"role": "user", "content": "hi"}]


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in env_var_names():
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("OLLAMA_API_KEY", raising=False)
    monkeypatch.chdir(tmp_path)


# -- addresses -------------------------------------------------------------------------------------

@pytest.mark.parametrize(("given", "url"), [
    ("127.0.0.1:11500", "http://127.0.0.1:11500"),
    ("ollama", "http://ollama:11434"),
    (":11600", "http://127.0.0.1:11600"),
    ("https://llm.example", "https://llm.example:443"),
    ("http://10.0.0.5:8080/", "http://10.0.0.5:8080"),
])
def test_ollama_host_is_read_like_the_ollama_client(monkeypatch: pytest.MonkeyPatch, given: str, url: str) -> None:
    monkeypatch.setenv("OLLAMA_HOST", given)
    settings = Settings().ollama
    assert settings.base_url == url and settings.endpoints == [url]


def test_ollama_base_url_wins_over_ollama_host_and_base_urls_over_both(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OLLAMA_HOST", "127.0.0.1:1")
    monkeypatch.setenv("OLLAMA_BASE_URL", "http://127.0.0.1:2")
    assert Settings().ollama.endpoints == ["http://127.0.0.1:2"]
    monkeypatch.setenv("OLLAMA_BASE_URLS", "127.0.0.1:3, http://127.0.0.1:4")
    assert Settings().ollama.endpoints == ["http://127.0.0.1:3", "http://127.0.0.1:4"]


@pytest.mark.parametrize(("name", "value", "says"), [
    ("OLLAMA_BASE_URLS", "127.0.0.1:3,http://127.0.0.1:3", "twice"),
    ("OLLAMA_BASE_URL", "http://user:pw@127.0.0.1:11434", "login"),
    ("OLLAMA_HEADERS", '{"bad header": "x"}', "not HTTP header names"),
    ("OLLAMA_HEADERS", "[1]", "ollama.headers"),
    ("OLLAMA_THINK", "deep", "think"),
    ("OLLAMA_CONNECT_TIMEOUT_S", "0", "connect_timeout_s"),
])
def test_bad_ollama_settings_fail_clearly(monkeypatch: pytest.MonkeyPatch, name: str, value: str, says: str) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ValidationError) as info:
        Settings()
    assert says in str(info.value)


def test_api_key_and_an_authorization_header_are_not_both_allowed() -> None:
    with pytest.raises(ValidationError, match="not both"):
        OllamaSettings(api_key="k", headers={"Authorization": "Basic x"})


def test_headers_and_api_key_are_sent_and_masked_in_logs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OLLAMA_API_KEY", "key-123")
    monkeypatch.setenv("OLLAMA_HEADERS", '{"X-Tenant": "tenant-456"}')
    settings = Settings()
    assert settings.ollama.http_headers() == {"X-Tenant": "tenant-456", "Authorization": "Bearer key-123"}
    assert {"key-123", "tenant-456"} <= set(secrets_of(settings))
    assert "key-123" not in repr(settings.ollama)


def test_think_words_are_parsed(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Settings().ollama.think is None
    monkeypatch.setenv("OLLAMA_THINK", "true")
    assert Settings().ollama.think is True
    monkeypatch.setenv("OLLAMA_THINK", "high")
    assert Settings().ollama.think == "high"


# -- timeouts --------------------------------------------------------------------------------------

@pytest.fixture()
def black_hole() -> Iterator[str]:
    """An address whose SYNs go unanswered: a listener never accepting, its accept queue filled."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(0)
    port = server.getsockname()[1]
    fillers: list[socket.socket] = []
    try:
        for _ in range(8):  # the kernel's queue holds backlog + 1; the rest only fill it for sure
            s = socket.socket()
            s.setblocking(False)
            s.connect_ex(("127.0.0.1", port))
            fillers.append(s)
        yield f"http://127.0.0.1:{port}"
    finally:
        for s in fillers:
            s.close()
        server.close()


def test_a_black_holed_host_is_down_within_the_connect_timeout(black_hole: str) -> None:
    client = LlmClient(OllamaSettings(base_url=black_hole, connect_timeout_s=0.3, attempts=1))
    with pytest.raises(LlmUnavailable) as info:
        client.chat(HI)
    assert "OLLAMA_CONNECT_TIMEOUT_S" in info.value.message
    with pytest.raises(LlmUnavailable):
        client.ping()


def test_silence_longer_than_the_read_timeout_is_busy(fake: FakeOllama) -> None:
    fake.set_behaviour(hang=True)
    client = LlmClient(OllamaSettings(base_url=fake.base_url, read_timeout_s=0.3, attempts=1))
    with pytest.raises(LlmBusy) as info:
        client.chat(HI)
    assert "OLLAMA_READ_TIMEOUT_S" in info.value.message


def test_a_slow_stream_within_the_read_timeout_ends_at_the_total_timeout(fake: FakeOllama) -> None:
    fake.set_behaviour(chunk_delay_ms=100, chunk_chars=1, answer="x" * 200)
    client = LlmClient(OllamaSettings(base_url=fake.base_url, read_timeout_s=5, timeout_s=0.5, attempts=1))
    with pytest.raises(LlmBusy) as info:
        client.chat(HI)
    assert "OLLAMA_TIMEOUT_S" in info.value.message


# -- headers, 401, think ---------------------------------------------------------------------------

class _Proxy(BaseHTTPRequestHandler):
    """Answers like Ollama behind a proxy that wants ``Authorization: Bearer good``; a chat with
    ``think`` streams thinking pieces before the answer."""

    seen: ClassVar[list[dict[str, Any]]] = []

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _refused(self) -> bool:
        if self.headers.get("Authorization") == "Bearer good":
            return False
        self._send(401, {"error": "unauthorized"})
        return True

    def _send(self, status: int, body: dict[str, Any], *more: dict[str, Any]) -> None:
        data = b"".join(json.dumps(b).encode() + b"\n" for b in (body, *more))
        self.send_response(status)
        self.send_header("Content-Type", "application/x-ndjson")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        if not self._refused():
            self._send(200, {"models": [{"name": "m:latest", "model": "m:latest"}]})

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).seen.append({"body": body, "headers": {k.lower(): v for k, v in self.headers.items()}})
        if self._refused():
            return
        if body.get("think") and body["model"] == "plain":
            self._send(400, {"error": "\"plain\" does not support thinking"})
            return
        parts: list[dict[str, Any]] = []
        if body.get("think"):
            parts += [{"model": body["model"], "message": {"role": "assistant", "content": "", "thinking": t},
                       "done": False} for t in ("Let me ", "think.")]
        parts.append({"model": body["model"], "message": {"role": "assistant", "content": "the answer"},
                      "done": False})
        parts.append({"model": body["model"], "message": {"role": "assistant", "content": ""}, "done": True,
                      "done_reason": "stop", "eval_count": 3, "prompt_eval_count": 2})
        self._send(200, *parts)


@pytest.fixture()
def proxy() -> Iterator[str]:
    _Proxy.seen = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Proxy)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_api_key_and_headers_go_with_every_request(proxy: str) -> None:
    client = LlmClient(OllamaSettings(base_url=proxy, model="m", api_key="good", headers={"X-Tenant": "t1"}))
    assert client.ping() == ["m:latest"]
    assert client.chat(HI).content == "the answer"
    assert _Proxy.seen[0]["headers"]["authorization"] == "Bearer good"
    assert _Proxy.seen[0]["headers"]["x-tenant"] == "t1"


def test_refused_credentials_are_llm_auth_failed(proxy: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # The ollama package would add OLLAMA_API_KEY from the environment by itself: the settings rule.
    monkeypatch.setenv("OLLAMA_API_KEY", "good")
    client = LlmClient(OllamaSettings(base_url=proxy, model="m", attempts=1))
    with pytest.raises(LlmAuthFailed) as info:
        client.chat(HI)
    assert "OLLAMA_API_KEY" in info.value.message and "401" in info.value.message
    assert "authorization" not in _Proxy.seen[0]["headers"]
    with pytest.raises(LlmUnavailable):
        client.ping()


def test_think_is_sent_and_the_thinking_is_kept_apart(proxy: str) -> None:
    client = LlmClient(OllamaSettings(base_url=proxy, model="m", api_key="good", think="high"))
    result = client.chat(HI)
    assert result.content == "the answer" and result.thinking == "Let me think."
    assert _Proxy.seen[-1]["body"]["think"] == "high"
    plain = client.chat(HI, think=False)
    assert plain.thinking == "" and _Proxy.seen[-1]["body"]["think"] is False


def test_not_sending_think_by_default(proxy: str) -> None:
    LlmClient(OllamaSettings(base_url=proxy, model="m", api_key="good")).chat(HI)
    assert "think" not in _Proxy.seen[-1]["body"]


def test_a_model_that_cannot_think_is_an_invalid_request(proxy: str) -> None:
    client = LlmClient(OllamaSettings(base_url=proxy, model="plain", api_key="good", think=True))
    with pytest.raises(LlmRequestInvalid) as info:
        client.chat(HI)
    assert "does not support thinking" in info.value.message and "procos.think" in info.value.message
