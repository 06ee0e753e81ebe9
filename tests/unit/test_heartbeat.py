"""Heartbeat on its own, against the in-memory engine: which locks are extended when, and what a
refusal means. Ticks are driven by the test (``tick()``) with each extension run in place; one test runs
the real thread, one the extensions in their own threads (a hanging one holds no other)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from structlog.testing import capture_logs

from procos_testkit.clock import FakeClock
from procos_testkit.engine import wait_until
from procos_testkit.memory_engine import InMemoryEngine
from procos_worker.engine.fetch import Subscription
from procos_worker.errors import EngineError, EngineRefused, EngineRejected, EngineUnavailable, LockExpired
from procos_worker.heartbeat import Heartbeat
from procos_worker.taskrun import RunState, TaskRun

LOCK_MS = 10_000


@pytest.fixture()
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture()
def engine(clock: FakeClock) -> Iterator[InMemoryEngine]:
    engine = InMemoryEngine("w", lock_duration_ms=LOCK_MS, clock=clock)
    yield engine
    engine.close()


@pytest.fixture()
def logs() -> Iterator[list[dict[str, Any]]]:
    with capture_logs() as captured:
        yield captured


def fetched(engine: InMemoryEngine, clock: FakeClock) -> TaskRun:
    """A task fetched and locked now, and its run."""
    engine.add_task({"query": "q"})
    task = engine.fetch_and_lock([Subscription("ai-query", LOCK_MS, ("query",))], max_tasks=1)[0]
    return TaskRun(task=task, lock_duration_ms=LOCK_MS, clock=clock)


def in_place(call: Callable[[], None], _name: str) -> None:
    call()


def beat_for(engine: InMemoryEngine, clock: FakeClock, *runs: TaskRun) -> Heartbeat:
    """A heartbeat whose ``tick()`` runs each extension before it returns."""
    return Heartbeat(engine, lambda: list(runs), LOCK_MS, clock=clock, start_extension=in_place)


def test_a_lock_is_extended_once_less_than_half_of_it_is_left(engine: InMemoryEngine, clock: FakeClock) -> None:
    run = fetched(engine, clock)
    beat = beat_for(engine, clock, run)
    clock.advance(4.9)
    beat.tick()
    assert not engine.calls_to("extend_lock"), "more than half left"
    clock.advance(0.2)
    beat.tick()
    assert engine.calls_to("extend_lock")[0].args == {"task_id": run.task.id, "new_duration_ms": LOCK_MS}
    assert run.lock_expires_at == clock() + LOCK_MS / 1000
    assert engine.tasks[run.task.id].lock_expires_at == clock() + LOCK_MS / 1000


def test_a_run_being_reported_keeps_its_lock_too(engine: InMemoryEngine, clock: FakeClock) -> None:
    run = fetched(engine, clock)
    assert run.begin_report()
    clock.advance(6)
    beat_for(engine, clock, run).tick()
    assert len(engine.calls_to("extend_lock")) == 1


@pytest.mark.parametrize("state", [RunState.RELEASED, RunState.LOST])
def test_a_run_given_up_is_not_extended(engine: InMemoryEngine, clock: FakeClock, state: RunState) -> None:
    run = fetched(engine, clock)
    run.give_up(state)
    clock.advance(6)
    beat_for(engine, clock, run).tick()
    assert not engine.calls_to("extend_lock")


def test_a_lock_taken_by_another_worker_is_lost(engine: InMemoryEngine, clock: FakeClock,
                                                logs: list[dict[str, Any]]) -> None:
    run = fetched(engine, clock)
    clock.advance(6)
    engine.lock_for_other_worker(run.task.id)
    beat_for(engine, clock, run).tick()
    assert run.state is RunState.LOST and run.cancel.is_set()
    assert [e["event"] for e in logs] == ["task.lock_lost"]
    assert logs[0]["task_id"] == run.task.id


def test_an_expired_lock_nobody_took_is_locked_again(engine: InMemoryEngine, clock: FakeClock,
                                                   logs: list[dict[str, Any]]) -> None:
    run = fetched(engine, clock)
    clock.advance(11)
    beat_for(engine, clock, run).tick()
    assert run.state is RunState.RUNNING, "a late extension throws nothing away"
    assert [c.args["task_id"] for c in engine.calls_to("lock")] == [run.task.id]
    assert engine.tasks[run.task.id].worker_id == "w"
    assert run.lock_expires_at == clock() + LOCK_MS / 1000
    assert [e["event"] for e in logs] == ["task.lock_renewed", "task.lock_extended"]


def test_a_released_lock_is_locked_again_too(engine: InMemoryEngine, clock: FakeClock) -> None:
    run = fetched(engine, clock)
    engine.unlock(run.task.id)  # an orphan sweep took us for dead; nobody fetched the task since
    clock.advance(6)
    beat_for(engine, clock, run).tick()
    assert run.state is RunState.RUNNING
    assert engine.tasks[run.task.id].worker_id == "w"


def test_an_expired_lock_another_worker_took_meanwhile_is_lost(engine: InMemoryEngine, clock: FakeClock) -> None:
    run = fetched(engine, clock)
    clock.advance(11)
    engine.fail("extend_lock", LockExpired("Cannot extend a lock that expired"))
    engine.lock_for_other_worker(run.task.id)
    beat_for(engine, clock, run).tick()
    assert run.state is RunState.LOST and run.cancel.is_set()


def test_a_relock_the_engine_does_not_answer_is_tried_again(engine: InMemoryEngine, clock: FakeClock) -> None:
    run = fetched(engine, clock)
    clock.advance(11)
    engine.fail("lock", EngineUnavailable("refused"))
    beat = beat_for(engine, clock, run)
    beat.tick()
    assert run.state is RunState.RUNNING and engine.tasks[run.task.id].lock_expires_at is not None
    beat.tick()
    assert len(engine.calls_to("lock")) == 2 and run.lock_expires_at == clock() + LOCK_MS / 1000


@pytest.mark.parametrize("refusal", [EngineRejected(401, "AuthenticationException", "no"),
                                     EngineRejected(429, "TooManyRequests", "slow down"),
                                     EngineRefused("Camunda answered 500 ProcessEngineException")],
                         ids=["401", "429", "500"])
def test_a_refused_extension_is_not_a_lost_lock(engine: InMemoryEngine, clock: FakeClock,
                                                refusal: EngineError) -> None:
    run = fetched(engine, clock)
    clock.advance(6)
    engine.fail("extend_lock", refusal)
    beat = beat_for(engine, clock, run)
    beat.tick()
    assert run.state is RunState.RUNNING and not run.cancel.is_set()
    beat.tick()
    assert len(engine.calls_to("extend_lock")) == 2, "tried again next tick"


def test_one_hanging_extension_does_not_hold_the_others(engine: InMemoryEngine, clock: FakeClock) -> None:
    """Each extension has its own thread: one call stuck on a dead connection, the other lock is kept."""
    stuck, other = fetched(engine, clock), fetched(engine, clock)
    release = threading.Event()
    entered = threading.Event()
    real_extend = engine.extend_lock

    def extend(task_id: str, new_duration_ms: int) -> None:
        if task_id == stuck.task.id:
            entered.set()
            release.wait(10)
        real_extend(task_id, new_duration_ms)

    engine.extend_lock = extend  # type: ignore[method-assign]
    beat = Heartbeat(engine, lambda: [stuck, other], LOCK_MS, clock=clock)
    clock.advance(6)
    try:
        beat.tick()
        assert entered.wait(5)
        wait_until(lambda: other.lock_expires_at == clock() + LOCK_MS / 1000, 5, "the other lock extended")
        beat.tick()  # the stuck one still has its extension in flight: no second one
        assert [c.args["task_id"] for c in engine.calls_to("extend_lock")].count(other.task.id) == 1
    finally:
        release.set()
    wait_until(lambda: stuck.lock_expires_at == clock() + LOCK_MS / 1000, 5, "the stuck one extended at last")


def test_a_lock_lost_while_reporting_leaves_the_report_alone(engine: InMemoryEngine, clock: FakeClock,
                                                            logs: list[dict[str, Any]]) -> None:
    run = fetched(engine, clock)
    run.begin_report()
    clock.advance(6)
    engine.delete(run.task.id)
    beat_for(engine, clock, run).tick()
    assert run.state is RunState.REPORTING and not logs


def test_an_unreachable_engine_is_not_a_lost_lock(engine: InMemoryEngine, clock: FakeClock) -> None:
    run = fetched(engine, clock)
    clock.advance(6)
    beat = beat_for(engine, clock, run)
    engine.fail("extend_lock", EngineUnavailable("refused"))
    beat.tick()
    assert run.state is RunState.RUNNING, "kept: complete() does not check the lock's expiry"
    beat.tick()
    assert len(engine.calls_to("extend_lock")) == 2, "tried again on the next tick"
    assert run.lock_expires_at == clock() + LOCK_MS / 1000


def test_the_thread_ticks_until_stopped(engine: InMemoryEngine, clock: FakeClock) -> None:
    run = TaskRun(task=fetched(engine, clock).task, lock_duration_ms=40, clock=clock)
    beat = Heartbeat(engine, lambda: [run], 40, clock=clock)  # a 40 ms lock: a 10 ms tick
    clock.advance(0.03)  # 10 ms of the run's lock left: due
    beat.start()
    wait_until(lambda: engine.calls_to("extend_lock"), 5, "an extension by the thread", interval_s=0.001)
    beat.stop()
    assert engine.calls_to("extend_lock")[0].args["new_duration_ms"] == 40


def test_an_extension_in_flight_longer_than_its_lock_stops_the_liveness_beat(
    engine: InMemoryEngine, clock: FakeClock,
) -> None:
    """A tick is progress (``on_tick``) only while no extension has hung longer than its lock's duration:
    a wedged engine call makes ``/healthz`` fail, and its return brings the beat back."""
    run = fetched(engine, clock)
    started: list[Callable[[], None]] = []
    beats: list[float] = []
    beat = Heartbeat(engine, lambda: [run], LOCK_MS, clock=clock, on_tick=lambda: beats.append(clock()),
                     start_extension=lambda call, _name: started.append(call))  # held: not run yet
    clock.advance(5.1)
    beat.tick()
    assert len(started) == 1 and len(beats) == 1, "the extension just began: progress"
    clock.advance(LOCK_MS / 1000 - 0.2)
    beat.tick()
    assert len(beats) == 2 and len(started) == 1, "in flight, not yet longer than the lock: still progress"
    clock.advance(0.5)
    beat.tick()
    beat.tick()
    assert len(beats) == 2, "hung longer than the lock: no progress"
    started[0]()  # the call returns
    beat.tick()
    assert len(beats) == 3
