"""``Runners``: tasks on reused threads; idle threads leave; nothing given is ever dropped."""

from __future__ import annotations

import threading
import time

from procos_testkit.engine import wait_until
from procos_worker.runners import Runners


def test_one_at_a_time_reuses_one_thread() -> None:
    seen: list[str] = []
    done = threading.Semaphore(0)

    def target(item: int) -> None:
        seen.append(threading.current_thread().name)
        done.release()

    runners: Runners[int] = Runners(target, name="t")
    for item in range(50):
        runners.run(item)
        assert done.acquire(timeout=5)
        wait_until(lambda: runners.idle == 1, 5, "the thread to go back to waiting", interval_s=0.005)
    assert runners.started == 1 and set(seen) == {"t-1"}
    runners.close()


def test_items_given_together_run_at_once_each_on_its_own_thread() -> None:
    barrier = threading.Barrier(4, timeout=5)  # only passes if all four run at the same time
    names: set[str] = set()

    def target(_item: int) -> None:
        barrier.wait()
        names.add(threading.current_thread().name)

    runners: Runners[int] = Runners(target, name="t")
    for item in range(4):
        runners.run(item)
    wait_until(lambda: len(names) == 4, 5, "all four items to run", interval_s=0.005)
    assert runners.started == 4
    runners.close()


def test_every_item_runs_exactly_once_under_churn() -> None:
    counts: dict[int, int] = {}
    lock = threading.Lock()

    def target(item: int) -> None:
        with lock:
            counts[item] = counts.get(item, 0) + 1

    runners: Runners[int] = Runners(target, name="t", idle_exit_s=0.001)  # threads leave and come back often
    for item in range(2000):
        runners.run(item)
        if item % 7 == 0:
            time.sleep(0.002)
    wait_until(lambda: len(counts) == 2000, 5, "every item to run", interval_s=0.005)
    assert set(counts.values()) == {1}
    runners.close()


def test_idle_threads_leave_after_the_idle_time_and_close_ends_the_rest() -> None:
    runners: Runners[int] = Runners(lambda _item: None, name="idle-probe", idle_exit_s=0.2)
    runners.run(1)
    alive = lambda: [t for t in threading.enumerate() if t.name.startswith("idle-probe-")]  # noqa: E731
    assert alive(), "a thread waits for the next item"
    wait_until(lambda: not alive(), 5, "the idle thread to leave", interval_s=0.005)

    closing: Runners[int] = Runners(lambda _item: None, name="close-probe", idle_exit_s=60)
    closing.run(1)
    time.sleep(0.05)
    closing.close()
    wait_until(lambda: not [t for t in threading.enumerate() if t.name.startswith("close-probe-")], 5,
               "close() to end the idle thread", interval_s=0.005)


def test_an_item_given_after_close_still_runs() -> None:
    ran = threading.Event()
    runners: Runners[int] = Runners(lambda _item: ran.set(), name="t")
    runners.close()
    runners.run(1)
    assert ran.wait(5)
