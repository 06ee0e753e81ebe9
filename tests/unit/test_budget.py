"""The input budget of all tasks in flight (budget.py) on its own: waits, hands back, gives up."""

from __future__ import annotations

import threading

import pytest

from procos_testkit.engine import wait_until
from procos_worker.budget import InputBudget
from procos_worker.errors import RunCancelled

pytestmark = pytest.mark.timeout(20)


def test_a_share_that_does_not_fit_waits_for_one_to_come_back() -> None:
    budget = InputBudget(100)
    waited: list[int] = []
    entered = threading.Event()

    def second() -> None:
        with budget.reserve(60, threading.Event(), on_wait=waited.append):
            entered.set()

    with budget.reserve(60, threading.Event()):
        thread = threading.Thread(target=second)
        thread.start()
        wait_until(lambda: waited == [60], 5, "the second share to wait")
        assert not entered.is_set() and budget.used == 60
    thread.join(5)
    assert entered.is_set() and budget.used == 0


def test_one_task_always_fits_even_over_the_capacity() -> None:
    budget = InputBudget(10)
    with budget.reserve(500, threading.Event()):
        assert budget.used == 10
    assert budget.used == 0


def test_a_run_given_up_while_it_waits_raises_run_cancelled_and_holds_nothing() -> None:
    budget = InputBudget(10)
    cancel = threading.Event()
    with budget.reserve(10, threading.Event()):
        cancel.set()
        with pytest.raises(RunCancelled), budget.reserve(5, cancel):
            pass  # pragma: no cover - never entered
        assert budget.used == 10
    assert budget.used == 0
