"""``procos-worker run`` as a real subprocess with JSON logs, its events parsed as they arrive.

For tests that need a whole process (its HTTP port, its signals, several workers side by side).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

__all__ = ["WorkerProcess", "subprocess_env"]


def subprocess_env(topic: str, health_file: Path, **overrides: str) -> dict[str, str]:
    """Only what a worker needs (the defaults reach the local stack), JSON logs, short backoffs, plus ``overrides``."""
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": os.environ.get("HOME", "/root"),
        "LANG": "C.UTF-8",
        "WORKER_TOPICS": topic,
        "WORKER_ASYNC_RESPONSE_TIMEOUT_MS": "5000",
        "WORKER_HEALTH_FILE": str(health_file),
        "LOG_FORMAT": "json",
        "LOG_LEVEL": "INFO",
        "BACKOFF_INITIAL_S": "0.2",
        "BACKOFF_MAX_S": "2",
        # No HTTP port unless the test asks: workers of parallel tests must not compete for one.
        "OPS_HTTP_PORT": "0",
    }
    env.update(overrides)
    return env


class WorkerProcess:
    """One ``python -m procos_worker run`` subprocess."""

    def __init__(self, env: dict[str, str], cwd: Path, name: str = "worker") -> None:
        self.env = env
        self.cwd = cwd
        self.name = name
        self.events: list[dict[str, Any]] = []
        self.raw: list[str] = []
        self._cond = threading.Condition()
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> WorkerProcess:
        self.proc = subprocess.Popen([sys.executable, "-m", "procos_worker", "run"], cwd=self.cwd, env=self.env,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
        for stream in (self.proc.stdout, self.proc.stderr):
            threading.Thread(target=self._read, args=(stream,), daemon=True).start()
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
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

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

    def stop(self, timeout_s: float = 60.0) -> int:
        """SIGTERM, then wait for the exit status (SIGKILL if it does not come)."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(timeout=10)
