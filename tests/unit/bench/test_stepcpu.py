"""``procos_bench.stepcpu``: the counters and the per-task arithmetic (the SIGUSR2 path runs in the
bench smoke test, on a real worker)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from procos_bench.stepcpu import STEPS, Steps, _Counter


def _burn(seconds: float) -> str:
    end = time.thread_time() + seconds
    while time.thread_time() < end:
        pass
    return "done"


def test_a_wrapped_call_adds_its_own_threads_cpu_and_passes_the_result_through(tmp_path: Path) -> None:
    counter = _Counter()
    counted = counter.wrap("llm", _burn)
    assert counted(0.02) == "done" and counted(0.02) == "done"
    time.sleep(0.05)  # waiting is not CPU
    out = tmp_path / "steps.json"
    counter.dump(out)
    steps = Steps.read(out)
    assert steps.calls["llm"] == 2 and steps.calls["fetch"] == 0
    assert 0.04 <= steps.seconds["llm"] < 0.09
    assert set(steps.seconds) == set(STEPS)


def test_a_call_that_raises_is_counted_too() -> None:
    counter = _Counter()

    def fail() -> None:
        raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"):
        counter.wrap("complete", fail)()
    assert counter.calls["complete"] == 1


def test_per_task_takes_the_nested_steps_out_of_the_ones_that_hold_them() -> None:
    seconds = {"fetch": 0.1, "store_input": 0.2, "llm": 0.5, "store_output": 0.2, "handle": 1.0, "complete": 0.25,
               "run_task": 1.4}
    steps = Steps(seconds=seconds, calls=dict.fromkeys(STEPS, 100))
    ms = steps.per_task(100, total_cpu_s=1.7)
    assert ms == {"fetch": 1.0, "store_input": 2.0, "llm": 5.0, "store_output": 2.0, "complete": 2.5,
                  "handler_rest": 1.0, "task_thread_rest": 1.5, "rest": 2.0}
    assert sum(ms.values()) == pytest.approx(17.0)  # the parts add up to the whole
