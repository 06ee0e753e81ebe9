"""A small HTTP/1.1 server toolkit for the test doubles, framing responses the way Go's net/http does.

The fake Ollama and the proxies are Go servers as far as the worker can tell: same JSON escaping
(``go_json``), same time format (``go_time``), Content-Length for small bodies and chunked transfer
encoding above 2 KiB, no ``Server`` header. This module has the generic parts:

* :class:`BackgroundServer`: a ``ThreadingHTTPServer`` on 127.0.0.1 in a daemon thread, a context
  manager, that can stop listening and listen again on the same port (a service "going down").
* :class:`TrackedHandler`: a keep-alive handler that tracks its connection (so a stop can cut it),
  reads plain or chunked bodies, writes Go-style heads and bodies, and can abort a connection.
"""

from __future__ import annotations

import contextlib
import json
import signal
import socket
import socketserver
import sys
import threading
import time
from collections.abc import Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, ClassVar, Self, cast

__all__ = [
    "JSON_CONTENT_TYPE",
    "LOOPBACK",
    "TEXT_CONTENT_TYPE",
    "BackgroundServer",
    "TrackedHandler",
    "chunk",
    "go_json",
    "go_time",
]

LOOPBACK = "127.0.0.1"
JSON_CONTENT_TYPE = "application/json; charset=utf-8"
TEXT_CONTENT_TYPE = "text/plain; charset=utf-8"
# Go's net/http adds Content-Length only when a handler's whole output fits this buffer.
_GO_CHUNKING_THRESHOLD = 2048
# What Go's encoding/json escapes that Python's json.dumps(ensure_ascii=False) leaves raw.
_GO_ESCAPES = str.maketrans({"<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "\u2028": "\\u2028", "\u2029": "\\u2029"})


def go_json(obj: Any) -> bytes:
    """Encode ``obj`` compactly, escaping strings as Go's ``encoding/json`` does.

    Lone surrogates come out as ``\\udXXX`` escapes (``backslashreplace``), which is valid JSON.
    """
    text = json.dumps(obj, ensure_ascii=False, separators=(",", ":"))
    return text.translate(_GO_ESCAPES).encode("utf-8", "backslashreplace")


def go_time(ns: int) -> str:
    """Go's ``time.Time`` JSON form (RFC 3339 with nanoseconds, zeros trimmed) for a UTC time."""
    secs, frac = divmod(ns, 1_000_000_000)
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(secs))
    if frac:
        stamp += "." + f"{frac:09d}".rstrip("0")
    return stamp + "Z"


class _Server(ThreadingHTTPServer):
    """ThreadingHTTPServer that knows its owner and its open connections."""

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128  # benchmarks open many connections at once

    def __init__(self, owner: BackgroundServer, port: int, handler: type[BaseHTTPRequestHandler]) -> None:
        self.owner = owner
        super().__init__((LOOPBACK, port), handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client hanging up mid-response is routine here (timeouts, drop tests): stay quiet.
        if not isinstance(sys.exc_info()[1], OSError):
            super().handle_error(request, client_address)

    def server_bind(self) -> None:
        # HTTPServer.server_bind calls getfqdn(), a DNS lookup that can stall on an offline machine.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name = str(host)
        self.server_port = int(port)


class BackgroundServer:
    """A ``ThreadingHTTPServer`` on 127.0.0.1 run by a daemon thread; a context manager.

    Subclasses give the handler class. Port 0 picks a free port; the port is kept across
    :meth:`_unlisten`/:meth:`_listen` so a paused server comes back on the same address.
    """

    handler_class: ClassVar[type[BaseHTTPRequestHandler]]

    def __init__(self, port: int = 0) -> None:
        self._port = port
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        self.accepted = 0
        """TCP connections accepted since start (a keep-alive client reuses one)."""
        self.stopping = threading.Event()
        """Set by :meth:`stop`; wakes handlers that wait (delays, hangs)."""

    @property
    def port(self) -> int:
        return self._port

    @property
    def base_url(self) -> str:
        return f"http://{LOOPBACK}:{self._port}"

    def start(self) -> Self:
        self.stopping.clear()
        self._listen()
        return self

    def stop(self) -> None:
        self.stopping.set()
        self._unlisten()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def serve_until_signal(self) -> None:
        """Block until SIGINT or SIGTERM, then stop (for ``python -m``)."""
        done = threading.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: done.set())
        print(f"listening on {self.base_url}", flush=True)  # a parent using --port 0 reads this
        while not done.wait(1.0):
            pass
        self.stop()

    def _listen(self) -> None:
        if self._server is not None:
            return
        server = _Server(self, self._port, self.handler_class)
        self._port = int(server.server_address[1])
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.1},
            daemon=True,
            name=f"{type(self).__name__}:{self._port}",
        )
        self._thread.start()

    def _unlisten(self) -> None:
        """Stop accepting, close the listening socket and cut every open connection."""
        server, thread = self._server, self._thread
        self._server = self._thread = None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        self._cut_connections()
        if thread is not None:
            thread.join(timeout=5)

    def _cut_connections(self) -> None:
        with self._connections_lock:
            connections = list(self._connections)
        for conn in connections:
            with contextlib.suppress(OSError):  # already closed by the other side
                conn.shutdown(socket.SHUT_RDWR)

    def _track(self, conn: socket.socket, add: bool) -> None:
        with self._connections_lock:
            if add:
                self._connections.add(conn)
            else:
                self._connections.discard(conn)


class TrackedHandler(BaseHTTPRequestHandler):
    """HTTP/1.1 keep-alive handler that registers its connection with its server and stays quiet."""

    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # streamed chunks must not wait for the client's delayed ACK

    @property
    def owner(self) -> BackgroundServer:
        return cast(_Server, self.server).owner

    def setup(self) -> None:
        super().setup()
        with self.owner._connections_lock:
            self.owner.accepted += 1  # an incoming connection (a proxy also tracks its upstream ones)
        self.owner._track(self.connection, True)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.owner._track(self.connection, False)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # one line per request on stderr would cost more than the request itself

    def read_body(self) -> bytes:
        """The request body, by Content-Length or chunked transfer encoding."""
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            parts: list[bytes] = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return b"".join(parts)
                parts.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def head_bytes(self, status: int, headers: Sequence[tuple[str, str]], add_date: bool = True) -> bytes:
        """Status line and headers as Go's net/http would send them (no Server header)."""
        reason = self.responses.get(status, ("",))[0]
        lines = [f"HTTP/1.1 {status} {reason}"]
        lines += [f"{k}: {v}" for k, v in headers]
        if add_date:
            lines.append(f"Date: {self.date_time_string()}")
        if self.close_connection:
            lines.append("Connection: close")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

    def send_body(self, status: int, body: bytes, content_type: str, head_only: bool = False) -> None:
        """A whole response in one write; chunked above 2 KiB like Go's net/http."""
        if len(body) <= _GO_CHUNKING_THRESHOLD or head_only:
            head = self.head_bytes(status, [("Content-Type", content_type), ("Content-Length", str(len(body)))])
            self.wfile.write(head if head_only else head + body)
        else:
            head = self.head_bytes(status, [("Content-Type", content_type), ("Transfer-Encoding", "chunked")])
            self.wfile.write(head + chunk(body) + b"0\r\n\r\n")

    def send_error_json(self, status: int, message: str) -> None:
        self.send_body(status, go_json({"error": message}), JSON_CONTENT_TYPE)

    def abort(self) -> None:
        """Cut the connection now (a crash half-way through a response)."""
        self.close_connection = True
        try:
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


def chunk(data: bytes) -> bytes:
    """``data`` as one chunk of a chunked transfer encoding."""
    return b"%x\r\n%s\r\n" % (len(data), data)
