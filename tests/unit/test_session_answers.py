"""``EngineSession.post_json``, the path of the library's calls: answers, limits and failures, against a
small local HTTP server (the real engine's answers are in tests/integration/test_engine_session.py)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar

import pytest
import requests
from requests.auth import HTTPBasicAuth

from procos_worker.engine.session import AnswerTooLarge, EngineSession, JsonAnswer


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    seen: ClassVar[list[dict[str, Any]]] = []
    dropped: ClassVar[threading.Event] = threading.Event()

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        _Handler.seen.append({"path": self.path, "body": json.loads(body or b"null"),
                              "authorization": self.headers.get("Authorization")})
        if self.path == "/slow":
            time.sleep(1.0)
        if self.path == "/chunked":
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            piece = b"x" * 4096
            for _ in range(64):
                self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            self.wfile.write(b"0\r\n\r\n")
            return
        status, answer = {"/missing": (404, {"type": "RestException", "message": "no such task"}),
                          "/big": (200, ["y" * 100_000])}.get(self.path, (200, {"echo": True}))
        data = json.dumps(answer).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def handle(self) -> None:
        try:
            super().handle()
        except (ConnectionResetError, BrokenPipeError):
            # A client that stops reading past its cap closes with unread data: the kernel resets.
            _Handler.dropped.set()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture()
def server() -> Iterator[str]:
    _Handler.seen.clear()
    _Handler.dropped.clear()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def test_an_answer_carries_what_the_library_reads(server: str) -> None:
    session = EngineSession(2, HTTPBasicAuth("demo", "secret"))
    answer = session.post_json(f"{server}/fetch", {"workerId": "w"}, timeout=5)
    assert (answer.ok, answer.status_code, answer.json()) == (True, 200, {"echo": True})
    assert answer.json() is answer.json(), "parsed once"
    assert _Handler.seen[-1]["body"] == {"workerId": "w"}
    assert _Handler.seen[-1]["authorization"] == requests.auth._basic_auth_str("demo", "secret")


def test_an_error_status_is_an_answer_and_raise_for_status_names_it(server: str) -> None:
    answer = EngineSession(2, None).post_json(f"{server}/missing", {}, timeout=5)
    assert (answer.ok, answer.status_code, answer.json()["type"]) == (False, 404, "RestException")
    with pytest.raises(requests.HTTPError) as info:
        answer.raise_for_status()
    assert info.value.response is not None and info.value.response.status_code == 404


def test_an_answer_over_the_limit_is_not_read_and_the_session_goes_on(server: str) -> None:
    session = EngineSession(2, None)
    with pytest.raises(AnswerTooLarge, match="100,00"):  # told by Content-Length
        session.post_json(f"{server}/big", {}, timeout=5, max_bytes=10_000)
    with pytest.raises(AnswerTooLarge, match="over 10,000 bytes"):  # counted as it streams (chunked)
        session.post_json(f"{server}/chunked", {}, timeout=5, max_bytes=10_000)
    assert _Handler.dropped.wait(5), "the connection is dropped, not read to the end"
    assert session.post_json(f"{server}/big", {}, timeout=5, max_bytes=200_000).json() == ["y" * 100_000]


def test_a_slow_answer_is_requests_timeout(server: str) -> None:
    with pytest.raises(requests.Timeout):
        EngineSession(2, None).post_json(f"{server}/slow", {}, timeout=0.2)


def test_a_refused_connection_is_requests_connection_error() -> None:
    with pytest.raises(requests.ConnectionError):
        EngineSession(2, None).post_json("http://127.0.0.1:9/fetch", {}, timeout=2)


def test_a_body_that_is_not_json_is_refused_before_sending(server: str) -> None:
    with pytest.raises(requests.exceptions.InvalidJSONError):
        EngineSession(2, None).post_json(f"{server}/fetch", {"value": float("nan")}, timeout=5)
    assert not _Handler.seen


def test_a_body_that_is_not_json_raises_value_error_from_json() -> None:
    answer = JsonAnswer(502, {}, b"<html>bad gateway</html>", "http://x/y", "Bad Gateway")
    with pytest.raises(ValueError):
        answer.json()
    assert answer.text.startswith("<html>")
