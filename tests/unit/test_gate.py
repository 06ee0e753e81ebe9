"""ServiceGate on its own: up/down state, backoff between tries, cancel and stop. No real waiting: the
events passed in record the delays they are asked to wait and return at once."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from structlog.testing import capture_logs

from procos_testkit.clock import FakeClock
from procos_worker.errors import StoreUnavailable
from procos_worker.gate import ServiceGate
from procos_worker.settings import BackoffSettings

SETTINGS = BackoffSettings(initial_s=1.0, max_s=4.0, multiplier=2.0, jitter=0.25)


class RecordingEvent(threading.Event):
    """An Event whose ``wait`` records the timeout and returns at once (set after ``set_after`` waits)."""

    def __init__(self, set_after: int | None = None) -> None:
        super().__init__()
        self.waits: list[float] = []
        self._set_after = set_after

    def wait(self, timeout: float | None = None) -> bool:
        self.waits.append(0.0 if timeout is None else timeout)
        if self._set_after is not None and len(self.waits) >= self._set_after:
            self.set()
        return self.is_set()


def failing(times: int, result: str = "ok") -> Callable[[], str]:
    """A call that raises StoreUnavailable ``times`` times, then returns ``result``."""
    calls = {"n": 0}

    def call() -> str:
        calls["n"] += 1
        if calls["n"] <= times:
            raise StoreUnavailable(f"refused #{calls['n']}")
        return result

    return call


@pytest.fixture()
def logs() -> Iterator[list[dict[str, Any]]]:
    with capture_logs() as captured:
        yield captured


@pytest.fixture()
def clock() -> FakeClock:
    return FakeClock()


def gate(clock: FakeClock, probe: Callable[[], object] = lambda: None) -> ServiceGate:
    return ServiceGate("postgresql", SETTINGS, probe, clock=clock, draw=lambda: 0.5)


def test_a_call_that_works_leaves_the_gate_up(clock: FakeClock) -> None:
    g = gate(clock)
    assert g.call(lambda: 42, RecordingEvent()) == 42
    assert not g.is_down


def test_a_call_is_tried_again_with_backoff_until_it_works(clock: FakeClock, logs: list[dict[str, Any]]) -> None:
    g = gate(clock)
    cancel = RecordingEvent()
    assert g.call(failing(3), cancel) == "ok"
    assert cancel.waits == [1.0, 2.0, 4.0], "doubling from BACKOFF_INITIAL_S, jitter off"
    assert not g.is_down
    assert [e["event"] for e in logs] == ["service.down", "service.up"], "one line per outage, not per try"
    assert logs[0]["error"] == "refused #1"


def test_the_outage_is_timed_with_the_clock(clock: FakeClock, logs: list[dict[str, Any]]) -> None:
    g = gate(clock)
    call = failing(1)

    class Advancing(RecordingEvent):
        def wait(self, timeout: float | None = None) -> bool:
            clock.advance(2.5)
            return super().wait(timeout)

    g.call(call, Advancing())
    assert logs[-1] == {"event": "service.up", "down_s": 2.5, "service": "postgresql", "log_level": "info"}


def test_a_cancel_while_waiting_gives_up_with_the_error(clock: FakeClock) -> None:
    g = gate(clock)
    cancel = RecordingEvent(set_after=2)
    with pytest.raises(StoreUnavailable, match="refused #2"):
        g.call(failing(10), cancel)
    assert g.is_down, "still down: nothing worked"


def test_after_an_outage_the_backoff_starts_over(clock: FakeClock) -> None:
    g = gate(clock)
    g.call(failing(2), RecordingEvent())
    cancel = RecordingEvent()
    g.call(failing(1), cancel)
    assert cancel.waits == [1.0]


def test_wait_until_up_returns_at_once_while_up(clock: FakeClock) -> None:
    stop = RecordingEvent()
    assert gate(clock).wait_until_up(stop) is True
    assert stop.waits == []


def test_wait_until_up_is_false_once_stopping(clock: FakeClock) -> None:
    stop = RecordingEvent()
    stop.set()
    assert gate(clock).wait_until_up(stop) is False


def test_wait_until_up_probes_with_backoff_until_the_service_answers(clock: FakeClock) -> None:
    probe = failing(2)
    g = gate(clock, probe)
    with pytest.raises(StoreUnavailable):
        g.call(failing(1), RecordingEvent(set_after=1))  # a task saw the outage (and was cancelled)
    stop = RecordingEvent()
    assert g.wait_until_up(stop) is True
    assert not g.is_down
    assert stop.waits == [2.0, 4.0, 4.0], "the delays go on from the task's failure, capped at BACKOFF_MAX_S"


def test_wait_until_up_gives_up_when_stopped_while_down(clock: FakeClock) -> None:
    g = gate(clock, failing(100))
    with pytest.raises(StoreUnavailable):
        g.call(failing(1), RecordingEvent(set_after=1))
    stop = RecordingEvent(set_after=3)
    assert g.wait_until_up(stop) is False
    assert g.is_down and len(stop.waits) == 3
