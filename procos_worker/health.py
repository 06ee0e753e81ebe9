"""The worker's health record and counters: written by the worker, read by ``procos-worker health``.

The record is a small JSON file replaced atomically; it is the only thing the two processes share. Each
worker process has its own (``WORKER_HEALTH_FILE`` holds ``{pid}``), so a wedged worker can't hide behind
another one that keeps a shared file fresh; ``check_records`` judges every record of a live process.
"""

from __future__ import annotations

import glob
import json
import os
import threading
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Literal

__all__ = ["PID_PLACEHOLDER", "CounterName", "Counters", "HealthRecord", "HealthState", "check_records", "record_path"]

PID_PLACEHOLDER = "{pid}"

HealthState = Literal["running", "stopping", "stopped"]
CounterName = Literal["fetched", "completed", "failed", "bpmn_errors", "abandoned", "released", "reclaimed"]


@dataclass
class Counters:
    """Tasks by what became of them since the worker started (thread-safe increments)."""

    fetched: int = 0
    completed: int = 0
    failed: int = 0
    bpmn_errors: int = 0
    abandoned: int = 0
    released: int = 0
    reclaimed: int = 0  # tasks of dead workers this worker unlocked (orphan recovery)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()

    def add(self, name: CounterName) -> None:
        with self._lock:
            setattr(self, name, getattr(self, name) + 1)

    def as_dict(self) -> dict[str, int]:
        with self._lock:
            return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass(frozen=True)
class HealthRecord:
    """What a running worker says about itself, refreshed every few seconds."""

    ts: float
    state: HealthState
    worker_id: str
    pid: int
    in_flight: int
    down: tuple[str, ...] = ()

    def write(self, path: Path) -> None:
        """Replace ``path`` atomically (a reader never sees half a record)."""
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(asdict(self)))
        tmp.replace(path)

    @classmethod
    def read(cls, path: Path) -> HealthRecord:
        """Raise ``OSError`` or ``ValueError`` when the file is missing or not a record."""
        data = json.loads(path.read_text())
        if not isinstance(data, dict):
            raise ValueError("not a health record")
        try:
            return cls(ts=float(data["ts"]), state=data["state"], worker_id=str(data["worker_id"]),
                       pid=int(data["pid"]), in_flight=int(data["in_flight"]), down=tuple(data.get("down") or ()))
        except (KeyError, TypeError) as exc:
            raise ValueError(f"not a health record: {exc}") from exc

    def problem(self, *, now: float, max_age_s: float) -> str | None:
        """Why this record is unhealthy, or None."""
        age_s = now - self.ts
        if self.state != "running" or age_s > max_age_s:
            return f"state={self.state} age={age_s:.1f}s"
        return None


def record_path(pattern: Path, pid: int) -> Path:
    """Where process ``pid`` writes its record (``{pid}`` in the pattern replaced)."""
    return Path(str(pattern).replace(PID_PLACEHOLDER, str(pid)))


def check_records(pattern: Path, *, now: float, max_age_s: float) -> tuple[list[HealthRecord], list[str]]:
    """The records of live worker processes matching ``pattern``, and what is wrong with them (empty: healthy).

    A record whose process is gone is ignored (a worker that stopped or was replaced); no live record at all
    is a problem.
    """
    paths = sorted(glob.glob(glob.escape(str(pattern)).replace(glob.escape(PID_PLACEHOLDER), "*")))
    live: list[HealthRecord] = []
    problems: list[str] = []
    for path in paths:
        try:
            record = HealthRecord.read(Path(path))
        except (OSError, ValueError) as exc:
            problems.append(f"{path}: not a readable health record ({exc})")
            continue
        if not _alive(record.pid):
            continue
        live.append(record)
        problem = record.problem(now=now, max_age_s=max_age_s)
        if problem is not None:
            problems.append(f"worker {record.worker_id} pid {record.pid}: {problem}")
    if not live and not problems:
        problems.append(f"no running worker has a health record at {pattern}")
    return live, problems


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: it exists
        return True
    return True
