"""What every benchmark scenario shares: where the stack is, task batches, statistics, CPU accounting."""

from __future__ import annotations

import re
import statistics
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import psutil  # type: ignore[import-untyped]  # no stubs installed
import requests

from procos_testkit.engine import example_bpmn

__all__ = [
    "Batch",
    "CpuMeter",
    "CpuReport",
    "Spread",
    "Stack",
    "listener_pids",
    "spread",
]

_POLL_S = 0.025
_STARTERS = 4
_USER_TASK = re.compile(r'<bpmn:userTask id="review-answer"[^>]*>(.*?)</bpmn:userTask>', re.DOTALL)


def bench_bpmn(topic: str, key: str) -> str:
    """The example process with its review user task replaced by a pass-through event of the same id.

    A finished run then leaves no open instance behind (deleting thousands of instances costs the
    engine more than the run itself), and history still shows each instance passing "review-answer".
    """
    xml, count = _USER_TASK.subn(
        r'<bpmn:intermediateThrowEvent id="review-answer" name="Answer ready (benchmark)">\1'
        r"</bpmn:intermediateThrowEvent>",
        example_bpmn(topic, key).replace('camunda:historyTimeToLive="P30D"', 'camunda:historyTimeToLive="P1D"'),
    )
    if count != 1:
        raise RuntimeError("bpmn/ai-query.bpmn changed: no user task 'review-answer' to replace")
    return xml


@dataclass(frozen=True)
class Stack:
    """The local stack the benchmark runs on."""

    camunda_url: str = "http://127.0.0.1:8080/engine-rest"
    database_url: str = "postgresql://procos:procos123@127.0.0.1:5432/procos"
    ollama_url: str = "http://127.0.0.1:11434"
    model: str = "smollm2:135m"


@dataclass(frozen=True)
class Spread:
    """Median and min-max of repeated measurements."""

    median: float
    low: float
    high: float
    values: tuple[float, ...]

    def fmt(self, digits: int = 1) -> str:
        return f"{self.median:.{digits}f} ({self.low:.{digits}f}-{self.high:.{digits}f})"

    def as_dict(self) -> dict[str, Any]:
        return {"median": self.median, "min": self.low, "max": self.high, "values": list(self.values)}


def spread(values: Iterable[float]) -> Spread:
    vals = tuple(values)
    if not vals:
        raise ValueError("no values")
    return Spread(statistics.median(vals), min(vals), max(vals), vals)


class Batch:
    """N instances of a private copy of the example process, released all at once.

    ``prepare`` starts N-1 instances and suspends them; ``release`` activates them and starts the
    N-th (a new task wakes every waiting long poll; activation alone does not); ``wait_done`` polls
    the topic's open external-task count until it is 0 and returns seconds since ``release``.
    """

    def __init__(self, stack: Stack, n: int, *, query: str = "What is BPMN? Answer in one sentence.",
                 label: str = "bench") -> None:
        if n < 1:
            raise ValueError("n must be >= 1")
        self.stack = stack
        self.n = n
        self.query = query
        suffix = uuid.uuid4().hex[:10]
        self.topic = f"{label}-{suffix}"
        self.key = f"{label}-{suffix}"
        self._session = requests.Session()
        self._local = threading.local()
        self.deployment_id = ""
        self.definition_id = ""
        self.released_at = 0.0
        self.elapsed_s = 0.0

    # -- set-up ----------------------------------------------------------------------------------

    def prepare(self) -> Batch:
        xml = bench_bpmn(self.topic, self.key)
        response = self._session.post(
            f"{self.stack.camunda_url}/deployment/create",
            data={"deployment-name": self.key},
            files={f"{self.key}.bpmn": (f"{self.key}.bpmn", xml.encode("utf-8"), "application/xml")},
            timeout=30,
        )
        response.raise_for_status()
        deployed = response.json()
        self.deployment_id = str(deployed["id"])
        self.definition_id = str(next(iter(deployed["deployedProcessDefinitions"])))
        with ThreadPoolExecutor(_STARTERS) as pool:
            list(pool.map(self._start, range(self.n - 1)))
        self._suspend(True)
        return self

    def _start(self, i: int) -> str:
        session: requests.Session | None = getattr(self._local, "session", None)
        if session is None:
            session = self._local.session = requests.Session()
        body = {"variables": {"query": {"value": f"{self.query} (#{i})", "type": "String"}}}
        response = session.post(f"{self.stack.camunda_url}/process-definition/key/{self.key}/start", json=body,
                                timeout=30)
        response.raise_for_status()
        return str(response.json()["id"])

    def _suspend(self, suspended: bool) -> None:
        response = self._session.put(f"{self.stack.camunda_url}/process-definition/key/{self.key}/suspended",
                                     json={"suspended": suspended, "includeProcessInstances": True}, timeout=60)
        response.raise_for_status()

    # -- the measured part -----------------------------------------------------------------------

    def release(self) -> None:
        self._suspend(False)
        self.released_at = time.perf_counter()
        self._start(self.n - 1)

    def open_count(self) -> int:
        response = self._session.get(f"{self.stack.camunda_url}/external-task/count",
                                     params={"topicName": self.topic}, timeout=30)
        response.raise_for_status()
        return int(response.json()["count"])

    def wait_done(self, timeout_s: float = 600.0, alive: Callable[[], bool] | None = None) -> float:
        """Seconds from release to the last completion seen (polled every 25 ms)."""
        deadline = time.perf_counter() + timeout_s
        while self.open_count() > 0:
            now = time.perf_counter()
            if now > deadline:
                raise TimeoutError(f"{self.topic}: {self.open_count()} of {self.n} tasks still open after {timeout_s}s")
            if alive is not None and not alive():
                raise RuntimeError(f"{self.topic}: the consumer died with {self.open_count()} tasks open")
            time.sleep(_POLL_S)
        self.elapsed_s = time.perf_counter() - self.released_at
        return self.elapsed_s

    @property
    def rate(self) -> float:
        return self.n / self.elapsed_s

    # -- checks and clean-up ---------------------------------------------------------------------

    def answered(self) -> int:
        """Instances that ended in "answered" (the external task was completed, not failed or rejected)."""
        response = self._session.get(f"{self.stack.camunda_url}/history/activity-instance/count",
                                     params={"processDefinitionId": self.definition_id, "activityId": "answered"},
                                     timeout=30)
        response.raise_for_status()
        return int(response.json()["count"])

    def check_all_completed(self) -> None:
        reached = self.answered()
        if reached != self.n:
            raise RuntimeError(f"{self.topic}: only {reached} of {self.n} instances ended in 'answered'")

    def close(self) -> None:
        """Finished instances need no clean-up; history expires with the engine's history TTL."""
        self._session.close()


# -- CPU accounting ---------------------------------------------------------------------------------


def listener_pids(port: int, *, with_children: bool = True) -> list[int]:
    """The process listening on 127.0.0.1:``port`` (and its children): Camunda, PostgreSQL, Ollama."""
    pids: set[int] = set()
    for conn in psutil.net_connections(kind="tcp"):
        if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port and conn.pid:
            pids.add(conn.pid)
    if with_children:
        for pid in list(pids):
            try:
                pids.update(child.pid for child in psutil.Process(pid).children(recursive=True))
            except psutil.NoSuchProcess:
                continue
    return sorted(pids)


def _cpu_seconds(pids: Iterable[int]) -> dict[int, float]:
    out: dict[int, float] = {}
    for pid in pids:
        try:
            times = psutil.Process(pid).cpu_times()
        except psutil.Error:
            continue
        out[pid] = times.user + times.system
    return out


@dataclass
class CpuReport:
    """CPU seconds per process group over one measured run, and the machine's busy share."""

    wall_s: float
    seconds: dict[str, float] = field(default_factory=dict)
    machine_busy: float = 0.0  # share of all cores busy, 0..1
    cores: int = 1

    def percent(self, group: str) -> float:
        """CPU of ``group`` in % of one core."""
        return 100.0 * self.seconds.get(group, 0.0) / self.wall_s if self.wall_s else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {"wall_s": round(self.wall_s, 3), "machine_busy_pct": round(100 * self.machine_busy, 1),
                "cores": self.cores,
                "pct_of_one_core": {g: round(self.percent(g), 1) for g in self.seconds}}


class CpuMeter:
    """Snapshot CPU times of named process groups at ``start`` and ``stop``.

    A group is a callable returning pids (looked up at both ends, so PostgreSQL backends opened
    during the run count from zero). Processes that exit during the run are not counted.
    """

    def __init__(self, groups: dict[str, Callable[[], Sequence[int]]]) -> None:
        self._groups = groups
        self._before: dict[str, dict[int, float]] = {}
        self._t0 = 0.0
        self._sys0: Any = None

    def start(self) -> None:
        self._before = {name: _cpu_seconds(get()) for name, get in self._groups.items()}
        self._sys0 = psutil.cpu_times()
        self._t0 = time.perf_counter()

    def stop(self) -> CpuReport:
        wall = time.perf_counter() - self._t0
        sys1 = psutil.cpu_times()
        report = CpuReport(wall_s=wall, cores=psutil.cpu_count() or 1)
        for name, get in self._groups.items():
            after = _cpu_seconds(get())
            before = self._before.get(name, {})
            report.seconds[name] = sum(max(0.0, t - before.get(pid, 0.0)) for pid, t in after.items())
        busy0 = self._sys0.user + self._sys0.system + self._sys0.nice + self._sys0.irq + self._sys0.softirq
        busy1 = sys1.user + sys1.system + sys1.nice + sys1.irq + sys1.softirq
        total0, total1 = busy0 + self._sys0.idle + self._sys0.iowait, busy1 + sys1.idle + sys1.iowait
        report.machine_busy = (busy1 - busy0) / (total1 - total0) if total1 > total0 else 0.0
        return report
