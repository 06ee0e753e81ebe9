"""Tools of the fault suite: a worker run as a real subprocess, a proxy that can hold requests, a
pausable TCP proxy (for PostgreSQL), and small queries that state what "done exactly once" means.

Nothing here mocks a service: the proxies forward to the real Camunda and PostgreSQL (and Ollama).
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import re
import signal
import socket
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Literal, cast

import psycopg

from procos_testkit.engine import EngineRest, wait_until  # noqa: F401 - re-exported for tests
from procos_testkit.ollama_proxy import OllamaProxy, _ProxyHandler, _UpstreamError

REPO = Path(__file__).resolve().parents[2]
WORKER_BIN = REPO / ".venv" / "bin" / "procos-worker"
CAMUNDA_ROOT = "http://127.0.0.1:8080"
CAMUNDA_REST = f"{CAMUNDA_ROOT}/engine-rest"
DB_PASSWORD = "procos123"
# The worker's database; DATABASE_URL (as the conftest's Settings reads it) may point a run at another one,
# e.g. a branch whose schema migrations must not reach the shared database yet.
DB_URL = os.environ.get("DATABASE_URL") or f"postgresql://procos:{DB_PASSWORD}@127.0.0.1:5432/procos"
DB_NAME = DB_URL.rsplit("/", 1)[1].split("?", 1)[0]


def db_url_via(port: int, password: str = DB_PASSWORD) -> str:
    """The worker's database reached through a proxy on ``port`` (or with another password)."""
    return f"postgresql://procos:{password}@127.0.0.1:{port}/{DB_NAME}"
REAL_OLLAMA = "http://127.0.0.1:11434"


# -- a worker process ------------------------------------------------------------------------------


class WorkerProcess:
    """``procos-worker run`` as a subprocess with JSON logs; its events are parsed as they arrive."""

    def __init__(self, env: dict[str, str], cwd: Path, name: str = "worker") -> None:
        self.env = env
        self.cwd = cwd
        self.name = name
        self.events: list[dict[str, Any]] = []
        self.raw: list[str] = []
        self._cond = threading.Condition()
        self.proc: subprocess.Popen[bytes] | None = None
        self._readers: list[threading.Thread] = []

    def start(self) -> WorkerProcess:
        self.proc = subprocess.Popen(
            [str(WORKER_BIN), "run"], cwd=self.cwd, env=self.env,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
        )
        for stream in (self.proc.stdout, self.proc.stderr):
            assert stream is not None
            reader = threading.Thread(target=self._read, args=(stream,), daemon=True)
            reader.start()
            self._readers.append(reader)
        return self

    def _read(self, stream: Any) -> None:
        for line in iter(stream.readline, b""):
            text = line.decode("utf-8", "replace").rstrip("\n")
            with self._cond:
                self.raw.append(text)
                with contextlib.suppress(ValueError):
                    event = json.loads(text)
                    if isinstance(event, dict):
                        self.events.append(event)
                self._cond.notify_all()

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def text(self) -> str:
        """Everything the process wrote on stdout and stderr (after it exited: all of it)."""
        for reader in self._readers:
            if self.proc is not None and self.proc.poll() is not None:
                reader.join(timeout=5)
        with self._cond:
            return "\n".join(self.raw)

    def find(self, event: str, **fields: Any) -> list[dict[str, Any]]:
        with self._cond:
            return [e for e in self.events if e.get("event") == event
                    and all(e.get(k) == v for k, v in fields.items())]

    def wait_for(self, event: str, timeout_s: float = 30.0, count: int = 1, **fields: Any) -> dict[str, Any]:
        """The ``count``-th event named ``event`` with ``fields``; fail (with the log tail) on timeout or exit."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while True:
                found = [e for e in self.events if e.get("event") == event
                         and all(e.get(k) == v for k, v in fields.items())]
                if len(found) >= count:
                    return found[count - 1]
                left = deadline - time.monotonic()
                if left <= 0 or not self.alive:
                    tail = "\n".join(self.raw[-30:])
                    state = "timed out" if left <= 0 else f"exited with {self.proc and self.proc.poll()}"
                    raise AssertionError(f"{self.name}: {state} waiting for {event} {fields}; last lines:\n{tail}")
                self._cond.wait(timeout=min(left, 0.2))

    def signal(self, signum: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(signum)

    def kill(self) -> int:
        """SIGKILL and reap."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        return self.proc.wait(timeout=10)

    def wait(self, timeout_s: float) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout=timeout_s)


def worker_env(tmp: Path, topic: str, **overrides: str) -> dict[str, str]:
    """The environment of a subprocess worker: only what it needs, plus ``overrides``."""
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": os.environ.get("HOME", "/root"),
        "LANG": "C.UTF-8",
        "CAMUNDA_BASE_URL": CAMUNDA_REST,
        "OLLAMA_BASE_URL": REAL_OLLAMA,
        "DATABASE_URL": DB_URL,
        "WORKER_TOPICS": topic,
        "WORKER_LOCK_DURATION_MS": "2000",
        "WORKER_ASYNC_RESPONSE_TIMEOUT_MS": "5000",
        "WORKER_HEALTH_FILE": str(tmp / f"health-{topic}.json"),
        "LOG_FORMAT": "json",
        "LOG_LEVEL": "DEBUG",  # the tests wait for each step's event (task.fetched, task.stored...)
        # Short backoffs keep recovery inside the CI budget; the schedule's shape is what is tested.
        "BACKOFF_INITIAL_S": "0.2",
        "BACKOFF_MAX_S": "2",
    }
    env.update(overrides)
    return env


# -- a proxy that can hold requests ----------------------------------------------------------------

HoldPhase = Literal["request", "response"]


class HoldingProxy(OllamaProxy):
    """The counting proxy, plus: hold requests whose path matches a pattern until ``release``.

    ``phase="request"`` holds before forwarding (the upstream never saw it unless released with
    ``forward=True``); ``phase="response"`` forwards, waits for the upstream's whole answer, then holds
    it (the upstream did the work; the client does not hear of it unless released with ``forward=True``).
    A request not forwarded or relayed is answered by cutting its connection. ``answer`` makes the proxy
    itself answer requests whose path matches with a fixed status and body (a 429 from a gateway, ...).
    """

    def __init__(self, upstream: str, **kwargs: Any) -> None:
        super().__init__(upstream, **kwargs)
        self._hold_cond = threading.Condition()
        self._hold_pattern: re.Pattern[str] | None = None
        self._hold_phase: HoldPhase = "request"
        self._holding = 0
        self._decision: dict[int, bool] = {}
        self._generation = 0
        self.held: Counter[str] = Counter()
        self._answers: list[tuple[re.Pattern[str], int, bytes]] = []
        self.answered: Counter[str] = Counter()

    def answer(self, pattern: str, status: int, body: str = "") -> None:
        """Answer requests whose path matches ``pattern`` with ``status`` and ``body`` (until ``stop_answering``)."""
        with self._hold_cond:
            self._answers.append((re.compile(pattern), status, body.encode()))

    def stop_answering(self) -> None:
        with self._hold_cond:
            self._answers.clear()

    def _answer_for(self, path: str) -> tuple[int, bytes] | None:
        with self._hold_cond:
            for pattern, status, body in self._answers:
                if pattern.search(path):
                    self.answered[path] += 1
                    return status, body
        return None

    def hold(self, pattern: str, phase: HoldPhase = "request") -> None:
        with self._hold_cond:
            self._hold_pattern = re.compile(pattern)
            self._hold_phase = phase

    def wait_held(self, count: int = 1, timeout_s: float = 30.0) -> None:
        with self._hold_cond:
            if not self._hold_cond.wait_for(lambda: self._holding >= count, timeout=timeout_s):
                raise AssertionError(f"proxy: {count} held request(s) expected, {self._holding} after {timeout_s}s")

    def release(self, *, forward: bool) -> None:
        """Stop holding; let held requests through (``forward``) or cut them."""
        with self._hold_cond:
            self._decision[self._generation] = forward
            self._generation += 1
            self._hold_pattern = None
            self._hold_cond.notify_all()

    def stop(self) -> None:
        self.release(forward=False)
        super().stop()

    def _not_forwarded(self, path: str) -> None:
        """A request counted as forwarded on arrival was cut while held: it never reached the upstream."""
        with self._lock:
            self._forwarded[path] -= 1

    def _phase_for(self, path: str) -> HoldPhase | None:
        with self._hold_cond:
            if self._hold_pattern is None or not self._hold_pattern.search(path):
                return None
            return self._hold_phase

    def _wait_release(self, path: str) -> bool:
        with self._hold_cond:
            generation = self._generation
            self._holding += 1
            self.held[path] += 1
            self._hold_cond.notify_all()
            self._hold_cond.wait_for(lambda: self._generation > generation)
            self._holding -= 1
            return self._decision[generation]


class _HoldingHandler(_ProxyHandler):
    def _forward(self, body: bytes) -> None:
        proxy = cast(HoldingProxy, self.owner)
        path = self.path.split("?", 1)[0]
        canned = proxy._answer_for(path)
        if canned is not None:
            proxy._not_forwarded(path)
            self.send_body(canned[0], canned[1], "application/json")
            return
        phase = proxy._phase_for(path)
        if phase is None:
            super()._forward(body)
        elif phase == "request":
            if proxy._wait_release(path):
                super()._forward(body)
            else:
                proxy._not_forwarded(path)
                self.abort()
        else:
            self._forward_then_hold(proxy, path, body)

    def _forward_then_hold(self, proxy: HoldingProxy, path: str, body: bytes) -> None:
        try:
            resp = self._send_upstream(body)
            data = resp.read()
        except (OSError, http.client.HTTPException, _UpstreamError):  # the upstream failed: nothing to hold
            self._drop_upstream()
            self.abort()
            return
        if not proxy._wait_release(path):
            self._drop_upstream()
            self.abort()
            return
        headers = [(k, v) for k, v in resp.getheaders()
                   if k.lower() not in ("transfer-encoding", "content-length", "connection")]
        headers.append(("Content-Length", str(len(data))))
        with contextlib.suppress(OSError):
            self.wfile.write(self.head_bytes(resp.status, headers, add_date=False) + data)


HoldingProxy.handler_class = _HoldingHandler


# -- a pausable TCP proxy (PostgreSQL) -------------------------------------------------------------


class TcpProxy:
    """Forwards TCP connections on 127.0.0.1 to ``upstream_port``; ``pause()`` refuses and cuts all
    connections (the service looks down), ``resume()`` listens again on the same port."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.port = 0
        self.accepted = 0
        self._listener: socket.socket | None = None
        self._sockets: set[socket.socket] = set()
        self._lock = threading.Lock()

    def __enter__(self) -> TcpProxy:
        self.resume()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.pause()

    def resume(self) -> None:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self.port = listener.getsockname()[1]
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def pause(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)
            listener.close()
        with self._lock:
            sockets = list(self._sockets)
            self._sockets.clear()
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            if self._listener is not listener:
                client.close()
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.upstream_port), timeout=5)
                upstream.settimeout(None)
            except OSError:
                client.close()
                continue
            with self._lock:
                self.accepted += 1
                self._sockets.update((client, upstream))
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        for sock in (src, dst):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


# -- what the engine and the database say ----------------------------------------------------------


def task_of(engine: EngineRest, process_instance_id: str) -> dict[str, Any]:
    """The (single) external task of an instance, from history (exists after completion too)."""
    rows = engine.get("/history/external-task-log", processInstanceId=process_instance_id, creationLog="true")
    assert rows, f"no external task created for {process_instance_id}"
    return cast(dict[str, Any], rows[0])


def task_ids(engine: EngineRest, process_instance_ids: list[str]) -> dict[str, str]:
    """process instance id -> external task id."""
    return {pi: str(task_of(engine, pi)["externalTaskId"]) for pi in process_instance_ids}


def success_count(engine: EngineRest, task_id: str) -> int:
    rows = engine.get("/history/external-task-log/count", externalTaskId=task_id, successLog="true")
    return int(rows["count"])


def failure_logs(engine: EngineRest, task_id: str) -> list[dict[str, Any]]:
    return cast(list[dict[str, Any]], engine.get("/history/external-task-log", externalTaskId=task_id,
                                                 failureLog="true"))


def output_rows(db: psycopg.Connection[Any], task_id: str) -> int:
    with db.cursor() as cur:
        cur.execute("SELECT count(*) FROM procos_ai_context WHERE task_id = %s AND context_type = 'output'",
                    (task_id,))
        row = cur.fetchone()
    assert row is not None
    return int(row[0])


def rows_by_type(db: psycopg.Connection[Any], task_id: str) -> Counter[str]:
    with db.cursor() as cur:
        cur.execute("SELECT context_type, count(*) FROM procos_ai_context WHERE task_id = %s GROUP BY 1",
                    (task_id,))
        return Counter({str(t): int(n) for t, n in cur.fetchall()})


def completed(engine: EngineRest, process_instance_id: str) -> bool:
    """The instance went past the AI task on the success path."""
    return engine.passed_task(process_instance_id, "review-answer")


def ended_at(engine: EngineRest, process_instance_id: str, activity_id: str) -> bool:
    return engine.passed_task(process_instance_id, activity_id)


def all_completed(engine: EngineRest, pis: list[str]) -> Callable[[], bool]:
    pending = set(pis)

    def check() -> bool:
        for pi in list(pending):
            if completed(engine, pi):
                pending.discard(pi)
        return not pending

    return check


def completed_ids_joined(engine: EngineRest, db: psycopg.Connection[Any], pis: list[str]) -> dict[str, str]:
    """pi -> ai_context_id from Camunda history, checked against procos_ai_context (same instance, output)."""
    joined: dict[str, str] = {}
    with db.cursor() as cur:
        for pi in pis:
            context_id = str(engine.variables(pi)["ai_context_id"]["value"])
            cur.execute("SELECT process_instance_id, context_type FROM procos_ai_context WHERE id = %s",
                        (context_id,))
            assert cur.fetchone() == (pi, "output"), f"{pi}: ai_context_id {context_id} has no output row"
            joined[pi] = context_id
    return joined


@contextlib.contextmanager
def timed() -> Iterator[Callable[[], float]]:
    start = time.monotonic()
    yield lambda: time.monotonic() - start
