"""The operator's HTTP port (``OPS_HTTP_HOST``:``OPS_HTTP_PORT``): ``/metrics``, ``/healthz``, ``/readyz``.

- ``/metrics``: the Prometheus exposition of ``procos_worker.metrics.REGISTRY``.
- ``/healthz`` (liveness): 200 while the worker runs and its poll loop and heartbeat both made
  progress within ``OPS_LIVENESS_MAX_S``; 503 otherwise (a wedged loop, or the worker stopping).
  It never asks a dependency: a database outage must not get a worker restarted.
- ``/readyz`` (readiness): 200 when Camunda, PostgreSQL with the expected schema, and Ollama with the
  configured model all answer (``probes.Readiness``) and the worker is running; 503 otherwise.

Both health answers are JSON. A small threading WSGI server (stdlib ``wsgiref``, as prometheus-client
uses) runs in daemon threads; requests are not logged.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

import structlog
from prometheus_client import make_wsgi_app
from prometheus_client.exposition import ThreadingWSGIServer

from procos_worker import metrics
from procos_worker.health import HealthRecord
from procos_worker.ops.probes import Readiness
from procos_worker.settings import Settings

__all__ = ["OpsServer"]

_StartResponse = Callable[..., Any]


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """Probes and scrapes every few seconds would drown the worker's own log lines."""


class OpsServer:
    """Serves the three endpoints for one worker until ``stop``."""

    def __init__(self, settings: Settings, health: Callable[[], HealthRecord], readiness: Readiness) -> None:
        self._settings = settings
        self._health = health
        self._readiness = readiness
        self._metrics_app = make_wsgi_app(metrics.REGISTRY)
        self._server: ThreadingWSGIServer | None = None
        self._thread: threading.Thread | None = None
        self._log = structlog.get_logger("procos_worker.ops.http").bind(worker_id=settings.worker.id)

    @property
    def port(self) -> int:
        """The bound port (0 until started)."""
        return 0 if self._server is None else int(self._server.server_address[1])

    def start(self) -> bool:
        """Listen; False (logged, the worker still runs) when the address can't be bound."""
        host, port = self._settings.ops.http_host, self._settings.ops.http_port
        try:
            self._server = make_server(host, port, self._app, server_class=ThreadingWSGIServer,
                                       handler_class=_QuietHandler)
        except OSError as exc:
            self._log.error("ops.http_failed", host=host, port=port, error=str(exc))
            return False
        self._readiness.open()
        self._thread = threading.Thread(target=self._server.serve_forever, name="procos-http", daemon=True)
        self._thread.start()
        self._log.info("ops.http_started", host=host, port=self.port, paths=["/metrics", "/healthz", "/readyz"])
        return True

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._readiness.close()
            self._server = None

    # -- the WSGI application --------------------------------------------------------------------

    def _app(self, environ: dict[str, Any], start_response: _StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path == "/metrics":
            body: Iterable[bytes] = self._metrics_app(environ, start_response)
            return body
        if path == "/healthz":
            return self._json(start_response, *self._liveness())
        if path == "/readyz":
            return self._json(start_response, *self._ready())
        return self._json(start_response, 404, {"error": "not found", "paths": ["/metrics", "/healthz", "/readyz"]})

    def _liveness(self) -> tuple[int, dict[str, Any]]:
        record = self._health()
        problem = record.problem(now=time.time(), max_age_s=self._settings.worker.health_max_age_s,
                                 liveness_max_s=self._settings.ops.liveness_max_s)
        body = {"status": "ok" if problem is None else "unhealthy", **record.as_dict()}
        if problem is not None:
            body["problem"] = problem
        return (200 if problem is None else 503), body

    def _ready(self) -> tuple[int, dict[str, Any]]:
        checks = self._readiness.check()
        state = self._health().state
        ready = state == "running" and all(check.ok for check in checks.values())
        body = {"status": "ready" if ready else "not ready", "state": state,
                "checks": {name: {"ok": c.ok, "detail": c.detail} for name, c in checks.items()}}
        return (200 if ready else 503), body

    @staticmethod
    def _json(start_response: _StartResponse, status: int, body: dict[str, Any]) -> list[bytes]:
        data = json.dumps(body).encode()
        reason = {200: "OK", 404: "Not Found", 503: "Service Unavailable"}[status]
        start_response(f"{status} {reason}", [("Content-Type", "application/json"),
                                              ("Content-Length", str(len(data))), ("Cache-Control", "no-store")])
        return [data]
