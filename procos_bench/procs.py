"""The subprocesses a benchmark runs: procos-worker, the fake Ollama, the ceiling loop, the library worker."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import IO, Any, Protocol

import requests

from procos_bench.common import Stack
from procos_testkit.worker_process import WORKER_COMMAND, WorkerProcess

__all__ = ["Consumer", "FakeProc", "HelperProc", "RssSampler", "WorkerGroup", "read_status_kib", "start_worker"]

# Log events the harness keeps (everything else is only counted).
_KEPT_EVENTS = frozenset({"worker.started", "task.completed", "task.llm_answered", "task.fetched", "worker.stopped",
                          "task.input_stored", "task.orphan_released"})


class Consumer(Protocol):
    """Something that works off a topic: started ready to poll, stopped after the run."""

    @property
    def alive(self) -> bool: ...

    def pids(self) -> list[int]: ...

    def stop(self) -> None: ...


def _python_env(extra: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CAMUNDA_", "WORKER_", "OLLAMA_", "DATABASE_",
                                                                      "TASK_", "LOG_", "BACKOFF_", "ORPHANS_"))}
    env.update(extra)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _terminate(proc: subprocess.Popen[Any], timeout_s: float = 30.0) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


def _wait_line(stream: IO[str], prefix: str, proc: subprocess.Popen[Any], timeout_s: float) -> str:
    """Read ``stream`` until a line starts with ``prefix`` (blocking reads; the child prints it early)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        line = stream.readline()
        if not line:
            raise RuntimeError(f"{proc.args!r} exited ({proc.wait()}) before printing {prefix!r}")
        if line.startswith(prefix):
            return line.strip()
    raise TimeoutError(f"{proc.args!r} did not print {prefix!r} within {timeout_s}s")


class FakeProc:
    """``python -m procos_testkit.fake_ollama`` on a free port, as its own process."""

    def __init__(self, delay_ms: int = 0) -> None:
        self.delay_ms = delay_ms
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "procos_testkit.fake_ollama", "--port", "0", "--delay-ms", str(delay_ms)],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=_python_env({}),
        )
        assert self._proc.stdout is not None
        line = _wait_line(self._proc.stdout, "listening on ", self._proc, 30)
        self.url = line.removeprefix("listening on ").strip()
        self._session = requests.Session()

    @property
    def pid(self) -> int:
        return self._proc.pid

    def counts(self) -> dict[str, int]:
        response = self._session.get(f"{self.url}/_fake/counts", timeout=10)
        response.raise_for_status()
        return {str(k): int(v) for k, v in response.json().items()}

    def chat_calls(self) -> int:
        return self.counts().get("/api/chat", 0)

    def reset(self) -> None:
        self._session.post(f"{self.url}/_fake/reset", timeout=10).raise_for_status()

    def stop(self) -> None:
        self._session.close()
        _terminate(self._proc)


def start_worker(stack: Stack, topic: str, ollama_url: str, *, in_flight: int | None = None,
                 env: dict[str, str] | None = None, health_dir: Path | None = None,
                 steps_out: Path | None = None) -> WorkerProcess:
    """``python -m procos_worker run`` on one topic with its own worker id; ``env`` adds or overrides
    settings (e.g. ``{"OLLAMA_OPTIONS": "..."}``). Only the events the scenarios read are parsed.
    ``steps_out``: run it under ``procos_bench.stepcpu``, which writes its steps' CPU there on SIGUSR2."""
    worker_id = f"bench-{uuid.uuid4().hex[:12]}"
    health_dir = health_dir or Path(tempfile.gettempdir())
    settings = {
        "CAMUNDA_BASE_URL": stack.camunda_url,
        "DATABASE_URL": stack.database_url,
        "OLLAMA_BASE_URL": ollama_url,
        "OLLAMA_MODEL": stack.model,
        "WORKER_ID": worker_id,
        "WORKER_TOPICS": topic,
        "WORKER_HEALTH_FILE": str(health_dir / f"procos-bench-{worker_id}.json"),
        "LOG_FORMAT": "json",
        "LOG_LEVEL": "INFO",
    }
    if in_flight is not None:
        settings["WORKER_MAX_TASKS_IN_FLIGHT"] = str(in_flight)
    settings.update(env or {})
    command = (WORKER_COMMAND if steps_out is None
               else (sys.executable, "-m", "procos_bench.stepcpu", str(steps_out), "run"))
    return WorkerProcess(_python_env(settings), name=worker_id, keep=_KEPT_EVENTS, command=command).start()


class WorkerGroup:
    """Several procos-worker processes on one topic, each with its own worker id."""

    def __init__(self, workers: list[WorkerProcess]) -> None:
        self.workers = workers

    def pids(self) -> list[int]:
        return [w.pid for w in self.workers]

    @property
    def alive(self) -> bool:
        return all(w.alive for w in self.workers)

    def stop(self) -> None:
        for w in self.workers:
            w.stop()


class HelperProc:
    """A bench helper module run as ``python -m <module> <args>``; ready when it prints ``ready``."""

    def __init__(self, module: str, args: list[str], ready_timeout_s: float = 60.0) -> None:
        self._proc = subprocess.Popen([sys.executable, "-m", module, *args], stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True, env=_python_env({}))
        assert self._proc.stdout is not None
        try:
            _wait_line(self._proc.stdout, "ready", self._proc, ready_timeout_s)
        except (RuntimeError, TimeoutError) as exc:
            err = self._proc.stderr.read() if self._proc.stderr and self._proc.poll() is not None else ""
            self.stop()
            raise RuntimeError(f"{module} did not start: {exc}\n{err[-2000:]}") from exc
        # Keep draining both pipes so the child never blocks on a full pipe.
        for stream in (self._proc.stdout, self._proc.stderr):
            threading.Thread(target=_drain, args=(stream,), daemon=True).start()

    def pids(self) -> list[int]:
        return [self._proc.pid]

    @property
    def alive(self) -> bool:
        return self._proc.poll() is None

    def stop(self) -> None:
        _terminate(self._proc, 10)


def _drain(stream: IO[str] | None) -> None:
    if stream is None:
        return
    with contextlib.suppress(ValueError, OSError):
        for _line in stream:
            pass


def read_status_kib(pid: int, field: str) -> int:
    """A ``kB`` field of /proc/<pid>/status (VmRSS, VmHWM), in KiB; 0 if the process is gone."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        return 0
    return 0


class RssSampler:
    """Samples VmRSS of one process every ``interval_s`` in a thread; ``peak_kib`` also reads VmHWM."""

    def __init__(self, pid: int, interval_s: float = 0.01) -> None:
        self.pid = pid
        self.interval_s = interval_s
        self.max_rss_kib = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def start(self) -> RssSampler:
        self._thread.start()
        return self

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.max_rss_kib = max(self.max_rss_kib, read_status_kib(self.pid, "VmRSS"))
            self.samples += 1

    def stop(self) -> int:
        """Stop sampling; the peak RSS in KiB (max of the samples and the kernel's VmHWM)."""
        self._stop.set()
        self._thread.join(2)
        return max(self.max_rss_kib, read_status_kib(self.pid, "VmHWM"))
