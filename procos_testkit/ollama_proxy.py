"""A counting, pausable reverse proxy in front of the real Ollama (or any HTTP upstream).

Fault tests put it between the worker and Ollama to assert how often Ollama was really asked
(``proxy.count("/api/chat")``: "no second Ollama call once the output was stored") and to make
Ollama look down without killing it:

* ``mode="pass"``: forward every request and stream the response back unchanged (body bytes are
  copied as they arrive, so NDJSON chunks reach the client as soon as Ollama flushes them).
* ``mode="503"``: answer every request with Ollama's own busy error (503, same body).
* ``mode="refuse"``: close the listening socket and cut open connections, so clients get
  "connection refused"; :meth:`OllamaProxy.resume` listens again on the same port.

Counts are per path (query string dropped): ``count`` = forwarded to the upstream, ``received`` =
arrived at the proxy. Upstream unreachable -> 502 ``{"error": "proxy: ..."}``.

Run as a process: ``python -m procos_testkit.ollama_proxy --port 11436 --upstream
http://127.0.0.1:11434``. Control it with ``GET /_proxy/counts``, ``POST /_proxy/mode``
(``{"mode": "503"}``), ``POST /_proxy/reset``; SIGUSR1 pauses with ``refuse``, SIGUSR2 resumes
(an HTTP call cannot undo ``refuse``).
"""

from __future__ import annotations

import argparse
import http.client
import json
import signal
import sys
import threading
import urllib.parse
from collections import Counter
from collections.abc import Sequence
from typing import Literal, cast, get_args

from procos_testkit.fake_ollama import BUSY_MESSAGE
from procos_testkit.httpkit import JSON_CONTENT_TYPE, TEXT_CONTENT_TYPE, BackgroundServer, TrackedHandler, go_json

__all__ = ["OllamaProxy", "ProxyHandler", "ProxyMode", "UpstreamError", "main"]

ProxyMode = Literal["pass", "503", "refuse"]

_COPY_BYTES = 64 * 1024
# Hop-by-hop headers (RFC 9110 7.6.1) belong to one connection and are not forwarded.
_HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "expect",
        "host",
        "content-length",
    }
)


class OllamaProxy(BackgroundServer):
    """Reverse proxy on 127.0.0.1 that counts requests per path and can play dead.

    Usage::

        with OllamaProxy("http://127.0.0.1:11434") as proxy:
            run_worker(ollama_url=proxy.base_url)
            proxy.pause("503")  # Ollama "overloaded" from now on
            ...
            assert proxy.count("/api/chat") == 1
    """

    def __init__(
        self,
        upstream: str = "http://127.0.0.1:11434",
        port: int = 0,
        mode: ProxyMode = "pass",
        upstream_timeout_s: float = 600.0,
    ) -> None:
        super().__init__(port)
        url = urllib.parse.urlsplit(upstream)
        if url.scheme != "http" or not url.hostname:
            raise ValueError(f"upstream must be an http:// URL, not {upstream!r}")
        self.upstream = upstream
        self.upstream_host = url.hostname
        self.upstream_port = url.port or 80
        self.upstream_timeout_s = upstream_timeout_s
        self._mode: ProxyMode = "pass"
        self._lock = threading.Lock()
        self._forwarded: Counter[str] = Counter()
        self._received: Counter[str] = Counter()
        self._initial_mode = mode

    def start(self) -> OllamaProxy:
        super().start()
        if self._initial_mode != "pass":
            self.pause(self._initial_mode)
        return self

    @property
    def mode(self) -> ProxyMode:
        return self._mode

    def pause(self, mode: ProxyMode = "refuse") -> None:
        """Make Ollama look down: ``refuse`` connections, or answer ``503`` busy."""
        self._mode = mode
        if mode == "refuse":
            self._unlisten()
        else:
            self._listen()

    def resume(self) -> None:
        """Forward again (listening again on the same port after ``refuse``)."""
        self._mode = "pass"
        if not self.stopping.is_set():
            self._listen()

    def count(self, path: str) -> int:
        """Requests for ``path`` forwarded to the upstream."""
        with self._lock:
            return self._forwarded[path]

    def received(self, path: str) -> int:
        """Requests for ``path`` that reached the proxy (forwarded or not)."""
        with self._lock:
            return self._received[path]

    def counts(self) -> dict[str, dict[str, int]]:
        with self._lock:
            return {"forwarded": dict(self._forwarded), "received": dict(self._received)}

    def reset_counts(self) -> None:
        with self._lock:
            self._forwarded.clear()
            self._received.clear()

    def _record(self, path: str, forwarded: bool) -> None:
        with self._lock:
            self._received[path] += 1
            if forwarded:
                self._forwarded[path] += 1


class UpstreamError(Exception):
    """The upstream could not be reached or broke before answering."""


class ProxyHandler(TrackedHandler):
    """Forwards each request over one upstream connection kept per client connection."""

    _upstream: http.client.HTTPConnection | None = None

    @property
    def proxy(self) -> OllamaProxy:
        return cast(OllamaProxy, self.owner)

    def do_GET(self) -> None:
        self._handle()

    def do_HEAD(self) -> None:
        self._handle()

    def do_POST(self) -> None:
        self._handle()

    def do_PUT(self) -> None:
        self._handle()

    def do_DELETE(self) -> None:
        self._handle()

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self._drop_upstream()

    def _handle(self) -> None:
        path = self.path.split("?", 1)[0]
        body = self.read_body()
        if path.startswith("/_proxy/"):
            self._control(path, body)
            return
        proxy = self.proxy
        mode = proxy.mode
        proxy._record(path, forwarded=mode == "pass")
        if mode == "503":
            self.send_error_json(503, BUSY_MESSAGE)
        elif mode == "refuse":
            self.abort()  # raced with pause(): behave as if the connection was cut
        else:
            self._forward(body)

    def _control(self, path: str, body: bytes) -> None:
        proxy = self.proxy
        if path == "/_proxy/counts":
            self.send_body(200, go_json({**proxy.counts(), "mode": proxy.mode}), JSON_CONTENT_TYPE)
        elif path == "/_proxy/reset" and self.command == "POST":
            proxy.reset_counts()
            self.send_body(200, b"{}", JSON_CONTENT_TYPE)
        elif path == "/_proxy/mode" and self.command == "POST":
            try:
                mode = json.loads(body)["mode"]
            except (ValueError, KeyError, TypeError):
                mode = None
            if mode not in ("pass", "503"):
                self.send_error_json(400, 'mode must be "pass" or "503" (use SIGUSR1 to refuse)')
                return
            if mode == "pass":
                proxy.resume()
            else:
                proxy.pause("503")
            self.send_body(200, go_json({"mode": mode}), JSON_CONTENT_TYPE)
        else:
            self.send_body(404, b"404 page not found", TEXT_CONTENT_TYPE)

    def _forward(self, body: bytes) -> None:
        try:
            resp = self._send_upstream(body)
        except UpstreamError as exc:
            self.send_error_json(502, f"proxy: upstream {self.proxy.upstream} failed: {exc.__cause__}")
            return
        try:
            self._relay(resp)
        except (OSError, http.client.HTTPException):
            # Either side hung up mid-body: cut both, as a client cancelling would.
            self._drop_upstream()
            self.abort()
            return
        if resp.will_close:
            self._drop_upstream()

    def _send_upstream(self, body: bytes) -> http.client.HTTPResponse:
        headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
        headers["Host"] = f"{self.proxy.upstream_host}:{self.proxy.upstream_port}"
        if body or self.command in ("POST", "PUT"):
            headers["Content-Length"] = str(len(body))
        reused = self._upstream is not None
        for attempt in (1, 2):
            try:
                conn = self._connection()
                conn.request(self.command, self.path, body=body, headers=headers)
                return conn.getresponse()
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError) as exc:
                self._drop_upstream()
                # A kept-alive upstream connection may have been closed while idle: retry once fresh.
                if not (reused and attempt == 1):
                    raise UpstreamError from exc
            except (OSError, http.client.HTTPException) as exc:
                self._drop_upstream()
                raise UpstreamError from exc
        raise AssertionError("unreachable")

    def _connection(self) -> http.client.HTTPConnection:
        if self._upstream is None:
            proxy = self.proxy
            conn = http.client.HTTPConnection(
                proxy.upstream_host, proxy.upstream_port, timeout=proxy.upstream_timeout_s
            )
            conn.connect()
            if conn.sock is not None:
                proxy._track(conn.sock, True)  # so stop()/pause("refuse") also cut the upstream side
            self._upstream = conn
        return self._upstream

    def _drop_upstream(self) -> None:
        conn, self._upstream = self._upstream, None
        if conn is not None:
            if conn.sock is not None:
                self.proxy._track(conn.sock, False)
            conn.close()

    def _relay(self, resp: http.client.HTTPResponse) -> None:
        """Status, headers and body bytes from the upstream, the body copied as it arrives."""
        headers = [(k, v) for k, v in resp.getheaders() if k.lower() not in _HOP_BY_HOP]
        length = resp.getheader("Content-Length")
        if self.command == "HEAD" or resp.status in (204, 304) or length is not None:
            if length is not None:
                headers.append(("Content-Length", length))
            self.wfile.write(self.head_bytes(resp.status, headers, add_date=False))
            while data := resp.read1(_COPY_BYTES):
                self.wfile.write(data)
            if resp.length:  # the upstream hung up early: pass the cut on (see _forward)
                raise http.client.IncompleteRead(b"", resp.length)
            resp.close()  # read1 leaves a fully read Content-Length body open, blocking the next request
            return
        headers.append(("Transfer-Encoding", "chunked"))
        self.wfile.write(self.head_bytes(resp.status, headers, add_date=False))
        while data := resp.read1(_COPY_BYTES):
            self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        resp.close()
        self.wfile.write(b"0\r\n\r\n")


OllamaProxy.handler_class = ProxyHandler


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m procos_testkit.ollama_proxy",
        description="Counting, pausable reverse proxy in front of Ollama.",
    )
    parser.add_argument("--port", type=int, default=11436, help="0 picks a free port (printed on start)")
    parser.add_argument("--upstream", default="http://127.0.0.1:11434")
    parser.add_argument("--mode", choices=get_args(ProxyMode), default="pass")
    args = parser.parse_args(argv)
    proxy = OllamaProxy(args.upstream, args.port, cast(ProxyMode, args.mode))
    proxy.start()
    # Signals, because an HTTP control call cannot reach a proxy that refuses connections.
    signal.signal(signal.SIGUSR1, lambda *_: proxy.pause("refuse"))
    signal.signal(signal.SIGUSR2, lambda *_: proxy.resume())
    proxy.serve_until_signal()
    return 0


if __name__ == "__main__":
    sys.exit(main())
