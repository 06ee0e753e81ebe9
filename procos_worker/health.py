"""The worker's health: its loops' progress, its record and counters.

Liveness comes from real progress: the poll loop and the heartbeat each ``beat`` their ``Progress``
entry every time round (the poll loop also while it legitimately waits: for free capacity, for a
dependency to come back), so a wedged loop stops beating and its age grows. ``HealthRecord`` is a
snapshot of that plus the worker's state; ``problem`` says what is wrong with it. ``/healthz`` builds
one live; the main thread also writes one to ``WORKER_HEALTH_FILE`` every 2 s (atomically), which
``procos-worker health`` reads when the HTTP server is off.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal, get_args

__all__ = ["CounterName", "Counters", "HealthRecord", "HealthState", "Loop", "Progress"]

HealthState = Literal["running", "stopping", "stopped"]
CounterName = Literal["fetched", "completed", "failed", "bpmn_errors", "abandoned", "released"]
Loop = Literal["poll", "heartbeat"]


@dataclass
class Counters:
    """Tasks by what became of them since the worker started (thread-safe increments)."""

    fetched: int = 0
    completed: int = 0
    failed: int = 0
    bpmn_errors: int = 0
    abandoned: int = 0
    released: int = 0

    def __post_init__(self) -> None:
        self._lock = threading.Lock()

    def add(self, name: CounterName) -> None:
        with self._lock:
            setattr(self, name, getattr(self, name) + 1)

    def as_dict(self) -> dict[str, int]:
        with self._lock:
            return {f.name: getattr(self, f.name) for f in fields(self)}


class Progress:
    """When each of the worker's loops last made progress (monotonic clock, thread-safe)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        started = clock()
        self._last: dict[str, float] = dict.fromkeys(get_args(Loop), started)

    def beat(self, loop: Loop) -> None:
        now = self._clock()
        with self._lock:
            self._last[loop] = now

    def ages_s(self) -> dict[str, float]:
        """Seconds since each loop's last beat."""
        now = self._clock()
        with self._lock:
            return {loop: round(now - last, 3) for loop, last in self._last.items()}


@dataclass(frozen=True)
class HealthRecord:
    """What a running worker says about itself at ``ts`` (wall clock)."""

    ts: float
    state: HealthState
    worker_id: str
    pid: int
    in_flight: int
    down: tuple[str, ...] = ()
    progress_age_s: Mapping[str, float] = field(default_factory=dict)

    def write(self, path: Path) -> None:
        """Replace ``path`` atomically (a reader never sees half a record)."""
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(self.as_dict()))
        tmp.replace(path)

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["progress_age_s"] = dict(self.progress_age_s)
        return data

    @classmethod
    def read(cls, path: Path) -> HealthRecord:
        """Raise ``OSError`` or ``ValueError`` when the file is missing or not a record."""
        return cls.from_dict(json.loads(path.read_text()))

    @classmethod
    def from_dict(cls, data: Any) -> HealthRecord:
        if not isinstance(data, dict):
            raise ValueError("not a health record")
        try:
            ages = {str(k): float(v) for k, v in (data.get("progress_age_s") or {}).items()}
            return cls(ts=float(data["ts"]), state=data["state"], worker_id=str(data["worker_id"]),
                       pid=int(data["pid"]), in_flight=int(data["in_flight"]), down=tuple(data.get("down") or ()),
                       progress_age_s=ages)
        except (KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"not a health record: {exc}") from exc

    def problem(self, *, now: float, max_age_s: float, liveness_max_s: float) -> str | None:
        """Why this record is unhealthy, or None: not running, not refreshed within ``max_age_s`` (the
        process is gone or its main thread hangs), or a loop without progress for ``liveness_max_s``."""
        age_s = now - self.ts
        if self.state != "running" or age_s > max_age_s:
            return f"state={self.state} age={age_s:.1f}s"
        stalled = [f"{loop} loop made no progress for {loop_age + age_s:.1f}s"
                   for loop, loop_age in sorted(self.progress_age_s.items()) if loop_age + age_s > liveness_max_s]
        return "; ".join(stalled) or None
