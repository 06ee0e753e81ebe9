"""TaskRun: the one place where "reported" and "released or lost" exclude each other."""

from __future__ import annotations

import threading

import pytest

from procos_testkit.clock import FakeClock
from procos_worker.models import Task
from procos_worker.taskrun import RunState, TaskRun

TASK = Task(id="t", topic="ai-query", worker_id="w", process_instance_id="p")


def test_a_new_run_is_running_with_its_lock_expiry_from_the_clock() -> None:
    clock = FakeClock(100.0)
    run = TaskRun(task=TASK, lock_duration_ms=2_500, clock=clock)
    assert (run.state, run.started, run.lock_expires_at) == (RunState.RUNNING, 100.0, 102.5)
    clock.advance(1.2345)
    assert run.elapsed_s() == 1.234
    assert not run.cancel.is_set()


def test_reporting_is_claimed_once() -> None:
    run = TaskRun(task=TASK, lock_duration_ms=1_000)
    assert run.begin_report() is True
    assert run.state is RunState.REPORTING
    assert run.begin_report() is False


@pytest.mark.parametrize("state", [RunState.RELEASED, RunState.LOST])
def test_a_run_given_up_is_never_reported_and_its_waits_end(state: RunState) -> None:
    run = TaskRun(task=TASK, lock_duration_ms=1_000)
    assert run.give_up(state) is True
    assert run.state is state and run.cancel.is_set()
    assert run.begin_report() is False
    assert run.give_up(RunState.RELEASED) is False, "given up once"


def test_a_run_being_reported_is_not_given_up() -> None:
    run = TaskRun(task=TASK, lock_duration_ms=1_000)
    run.begin_report()
    assert run.give_up(RunState.LOST) is False
    assert run.state is RunState.REPORTING and not run.cancel.is_set()


def test_report_and_give_up_race_has_exactly_one_winner() -> None:
    for _ in range(50):
        run = TaskRun(task=TASK, lock_duration_ms=1_000)
        results: dict[str, bool] = {}
        go = threading.Barrier(2)

        def report(run: TaskRun = run, results: dict[str, bool] = results, go: threading.Barrier = go) -> None:
            go.wait()
            results["report"] = run.begin_report()

        def release(run: TaskRun = run, results: dict[str, bool] = results, go: threading.Barrier = go) -> None:
            go.wait()
            results["release"] = run.give_up(RunState.RELEASED)

        threads = [threading.Thread(target=report), threading.Thread(target=release)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert results["report"] != results["release"]
