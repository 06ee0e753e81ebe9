"""``procos-worker run`` as a subprocess, for the fault tests and the benchmarks alike.

The worker logs one JSON object per line (``LOG_FORMAT=json``); a reader thread per pipe parses
each line once as it arrives, so a caller can wait for an event (``wait_for("task.completed",
task_id=...)``), look events up (``find``), or read everything the process wrote (``text``).
"""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

__all__ = ["WORKER_COMMAND", "WorkerProcess"]

WORKER_COMMAND: tuple[str, ...] = (sys.executable, "-m", "procos_worker", "run")


class WorkerProcess:
    """One worker subprocess with its log events.

    ``env`` is its whole environment (nothing is inherited). ``keep`` limits the events kept to those
    names: the benchmark keeps a handful, so its harness does not spend CPU parsing every line of a
    busy worker; raw lines are kept either way.
    """

    def __init__(self, env: Mapping[str, str], cwd: Path | None = None, name: str = "worker", *,
                 command: Sequence[str] = WORKER_COMMAND, keep: Collection[str] | None = None) -> None:
        self.env = dict(env)
        self.cwd = cwd
        self.name = name
        self.command = list(command)
        self.events: list[dict[str, Any]] = []
        self.raw: list[str] = []
        self._keep = frozenset(keep) if keep is not None else None
        self._cond = threading.Condition()
        self.proc: subprocess.Popen[bytes] | None = None
        self._readers: list[threading.Thread] = []

    # -- life cycle ------------------------------------------------------------------------------

    def start(self) -> WorkerProcess:
        self.proc = subprocess.Popen(
            self.command, cwd=self.cwd, env=self.env,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
        )
        for stream in (self.proc.stdout, self.proc.stderr):
            assert stream is not None
            reader = threading.Thread(target=self._read, args=(stream,), name=f"log-{self.name}", daemon=True)
            reader.start()
            self._readers.append(reader)
        return self

    def wait_started(self, timeout_s: float = 60.0) -> WorkerProcess:
        """Wait for ``worker.started``; stop the process if it does not come."""
        try:
            self.wait_for("worker.started", timeout_s=timeout_s)
        except AssertionError:
            self.stop()
            raise
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def pids(self) -> list[int]:
        return [self.pid]

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def signal(self, signum: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(signum)

    def wait(self, timeout_s: float) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout=timeout_s)

    def kill(self) -> int:
        """SIGKILL and reap."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        return self.proc.wait(timeout=10)

    def stop(self, timeout_s: float = 30.0) -> None:
        """SIGTERM, wait for the graceful shutdown (SIGKILL after ``timeout_s``), remove its health file."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.kill()
        for reader in self._readers:
            reader.join(5)
        if "WORKER_HEALTH_FILE" in self.env:
            with contextlib.suppress(OSError):
                Path(self.env["WORKER_HEALTH_FILE"]).unlink()

    # -- what it logged --------------------------------------------------------------------------

    def text(self) -> str:
        """Everything the process wrote on stdout and stderr (after it exited: all of it)."""
        if self.proc is not None and self.proc.poll() is not None:
            for reader in self._readers:
                reader.join(timeout=5)
        with self._cond:
            return "\n".join(self.raw)

    def find(self, event: str, **fields: Any) -> list[dict[str, Any]]:
        """The events named ``event`` whose ``fields`` have these values, in log order."""
        with self._cond:
            return self._matching(event, fields)

    def wait_for(self, event: str, timeout_s: float = 30.0, count: int = 1, **fields: Any) -> dict[str, Any]:
        """The ``count``-th event named ``event`` with ``fields``; fail (with the log tail) on timeout or exit."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while True:
                found = self._matching(event, fields)
                if len(found) >= count:
                    return found[count - 1]
                left = deadline - time.monotonic()
                if left <= 0 or not self.alive:
                    tail = "\n".join(self.raw[-30:])
                    state = "timed out" if left <= 0 else f"exited with {self.proc and self.proc.poll()}"
                    raise AssertionError(f"{self.name}: {state} waiting for {event} {fields}; last lines:\n{tail}")
                self._cond.wait(timeout=min(left, 0.2))

    def _matching(self, event: str, fields: Mapping[str, Any]) -> list[dict[str, Any]]:
        return [e for e in self.events if e.get("event") == event and all(e.get(k) == v for k, v in fields.items())]

    def _read(self, stream: IO[bytes]) -> None:
        for line in iter(stream.readline, b""):
            text = line.decode("utf-8", "replace").rstrip("\n")
            event = self._parse(text)
            with self._cond:
                self.raw.append(text)
                if event is not None:
                    self.events.append(event)
                self._cond.notify_all()

    def _parse(self, text: str) -> dict[str, Any] | None:
        if self._keep is not None and not any(f'"{name}"' in text for name in self._keep):
            return None  # cheap pre-filter before parsing
        try:
            event = json.loads(text)
        except ValueError:
            return None
        if not isinstance(event, dict) or (self._keep is not None and event.get("event") not in self._keep):
            return None
        return event
