"""The worker's threads on in-memory doubles: capacity, dispatch, every outcome route, dependencies
going down and up, lock loss, shutdown (release + sweep) and signals. No service, no real waiting:
time is a fake clock, jitter is off, backoff delays are 1-4 ms, and every wait ends on an event.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from procos_testkit.in_process import Doubles, RunningWorker, worker_on_doubles
from procos_worker.errors import (
    EngineRejected,
    EngineUnavailable,
    LlmBusy,
    LlmUnavailable,
    LockLost,
    ModelNotFound,
)
from procos_worker.flags import build_flags
from procos_worker.health import HealthRecord
from procos_worker.settings import Settings
from procos_worker.store.context import ContextStore
from procos_worker.worker import Worker
from tests.unit.worker_kit import Logs, events, soon

pytestmark = pytest.mark.timeout(20)



def _health_state(path: Path) -> str | None:
    try:
        return HealthRecord.read(path).state
    except (OSError, ValueError):
        return None  # not written yet


# -- one task, every outcome -------------------------------------------------------------------------


def test_a_task_is_completed_with_the_flags_of_its_stored_row(doubles: Doubles, start: Callable[..., RunningWorker],
                                                              logs: Logs) -> None:
    task_id = doubles.engine.add_task({"query": "What is BPMN?", "unrelated": "x" * 10})
    running = start()
    soon(lambda: doubles.engine.state(task_id) == "completed", "completion")
    assert running.stop() == 0

    stored, text = doubles.store.outputs[task_id]
    assert text == doubles.llm.answer
    assert doubles.engine.tasks[task_id].reported == {"variables": build_flags(stored), "local_variables": {}}
    # fetchAndLock brings the values of what the topic's tasks read, its answer read up to 1 MiB a task.
    fetch = doubles.engine.calls_to("fetch_and_lock")[0].args
    assert fetch == {"topics": ["ai-query"], "max_tasks": 2, "variables": ["context", "query", "system_prompt"],
                     "max_answer_bytes": 2 * 1_048_576}
    assert not doubles.engine.calls_to("variable_instances")
    assert running.worker.counters.as_dict() == {"fetched": 1, "completed": 1, "failed": 0, "bpmn_errors": 0,
                                                 "abandoned": 0, "released": 0, "reclaimed": 0}
    assert events(logs, "task.completed", task_id=task_id, ai_context_id=str(stored.id))
    assert doubles.store.opened and doubles.store.closed and doubles.engine.closed


def test_bad_input_is_a_bpmn_error(doubles: Doubles, start: Callable[..., RunningWorker]) -> None:
    task_id = doubles.engine.add_task({"context": "no query"})
    running = start()
    soon(lambda: doubles.engine.state(task_id) == "bpmn_error", "the BPMN error")
    assert doubles.engine.tasks[task_id].reported["code"] == "AI_INPUT_INVALID"
    assert "query" in doubles.engine.tasks[task_id].reported["message"]
    assert not doubles.store.inputs, "nothing stored for bad input"
    running.stop()
    assert running.worker.counters.bpmn_errors == 1


def test_a_transient_error_is_a_failure_with_one_retry_less(doubles: Doubles,
                                                            start: Callable[..., RunningWorker]) -> None:
    doubles.llm.fail("chat", LlmBusy("Ollama answered 503"))
    task_id = doubles.engine.add_task({"query": "q"}, retries=2)
    running = start()
    soon(lambda: doubles.engine.calls_to("handle_failure"), "the failure")
    failure = doubles.engine.calls_to("handle_failure")[0].args
    assert (failure["retries"], failure["retry_timeout_ms"]) == (1, 20_000)  # 3 - 2 earlier failures: 10 s x 2
    assert failure["message"] == "Ollama answered 503"
    assert doubles.engine.state(task_id) == "open", "back in the engine for a later retry"
    running.stop()
    assert running.worker.counters.failed == 1


def test_a_permanent_error_is_an_incident(doubles: Doubles, start: Callable[..., RunningWorker]) -> None:
    doubles.llm.fail("chat", ModelNotFound("model 'x' is not on the server: fix OLLAMA_MODEL", details="404 ..."))
    task_id = doubles.engine.add_task({"query": "q"})
    start()
    soon(lambda: doubles.engine.state(task_id) == "incident", "the incident")
    input_id = doubles.store.inputs[task_id].id
    # The full story, and where the prompt is (never the prompt itself).
    assert doubles.engine.tasks[task_id].reported["details"] == (
        f"404 ...\nThe task's prompt is stored in procos_ai_context, input row {input_id}.")


def test_a_bug_is_an_incident_with_its_traceback(doubles: Doubles, start: Callable[..., RunningWorker],
                                                 logs: Logs) -> None:
    doubles.store.fail("save_input", ZeroDivisionError("a bug"))
    task_id = doubles.engine.add_task({"query": "q"})
    start()
    soon(lambda: doubles.engine.state(task_id) == "incident", "the incident")
    reported = doubles.engine.tasks[task_id].reported
    assert reported["message"] == "procos-worker internal error: ZeroDivisionError: a bug"
    assert "Traceback" in reported["details"] and "save_input" in reported["details"]
    assert events(logs, "task.unexpected_error", task_id=task_id)


def test_a_task_whose_template_reads_a_variable_reads_it_itself(
    doubles: Doubles, start: Callable[..., RunningWorker], logs: Logs,
) -> None:
    task_id = doubles.engine.add_task({"ticket": "printer on fire", "other": "not read"},
                                      properties={"procos.prompt": "Summarise: {{ ticket }}"})
    start()
    soon(lambda: doubles.engine.state(task_id) == "completed", "completion")
    assert not events(logs, "task.released"), "no fetch again: the task reads what its template needs"
    # The topic's names came with the fetch; the one only its own template reads is queried.
    assert [c.args["names"] for c in doubles.engine.calls_to("variable_instances")] == [["ticket"]]
    assert doubles.store.inputs[task_id].prompt == "Summarise: printer on fire"


def test_a_bad_task_property_is_an_incident_naming_it(doubles: Doubles, start: Callable[..., RunningWorker]) -> None:
    task_id = doubles.engine.add_task({"query": "q"}, properties={"procos.resultScope": "everywhere"})
    start()
    soon(lambda: doubles.engine.state(task_id) == "incident", "the incident")
    assert "procos.resultScope" in doubles.engine.tasks[task_id].reported["message"]
    assert not doubles.llm.calls


def test_a_store_of_its_own_comes_with_its_model_table(doubles: Doubles,
                                                       unit_settings: Callable[..., Settings]) -> None:
    with pytest.raises(TypeError, match="models="):
        Worker(unit_settings(), engine=doubles.engine, store=doubles.store, llm=doubles.llm)
    # The real clients are only built, not connected.
    assert isinstance(Worker(unit_settings()).store, ContextStore)


# -- reporting ---------------------------------------------------------------------------------------


def test_an_unreachable_engine_at_report_time_is_retried_until_it_lands(
    doubles: Doubles, unit_settings: Callable[..., Settings],
) -> None:
    slept: list[float] = []
    worker = worker_on_doubles(unit_settings(), doubles, sleep=slept.append)
    doubles.engine.fail("complete", EngineUnavailable("refused"), EngineUnavailable("503"))
    task_id = doubles.engine.add_task({"query": "q"})
    running = RunningWorker(worker).start()
    soon(lambda: doubles.engine.state(task_id) == "completed", "completion")
    running.stop()
    assert len(doubles.engine.calls_to("complete")) == 3
    assert slept == [0.001, 0.002], "the backoff between tries (no jitter)"
    assert worker.counters.completed == 1


@pytest.mark.parametrize("refusal", [LockLost("task t: gone"), EngineRejected(400, "BadUserRequest", "no")])
def test_a_report_the_engine_refuses_is_abandoned(doubles: Doubles, start: Callable[..., RunningWorker],
                                                  logs: Logs, refusal: Exception) -> None:
    doubles.engine.fail("complete", refusal)
    task_id = doubles.engine.add_task({"query": "q"})
    running = start()
    soon(lambda: events(logs, "task.abandoned", task_id=task_id), "task.abandoned")
    assert len(doubles.engine.calls_to("complete")) == 1, "not retried"
    assert task_id in doubles.store.outputs, "the answer stays stored"
    running.stop()
    assert running.worker.counters.abandoned == 1 and running.worker.counters.completed == 0


# -- capacity and dispatch ---------------------------------------------------------------------------


def test_no_more_tasks_in_flight_than_the_capacity(doubles: Doubles, start: Callable[..., RunningWorker]) -> None:
    doubles.llm.hold()
    ids = [doubles.engine.add_task({"query": f"q{i}"}) for i in range(3)]
    running = start(max_tasks_in_flight=2)
    doubles.llm.wait_in_chat(2)
    assert running.worker.in_flight == 2
    assert len(doubles.engine.calls_to("fetch_and_lock")) == 1, "no poll while full"
    assert doubles.engine.calls_to("fetch_and_lock")[0].args["max_tasks"] == 2
    assert doubles.engine.tasks[ids[2]].worker_id is None, "the third task is left to others"

    doubles.llm.release()
    soon(lambda: all(doubles.engine.state(t) == "completed" for t in ids), "all three completed")
    assert all(c.args["max_tasks"] <= 2 for c in doubles.engine.calls_to("fetch_and_lock"))
    assert len(doubles.llm.calls_to("chat")) == 3


def test_a_task_a_poll_brings_after_the_stop_is_handed_straight_back(
    doubles: Doubles, unit_settings: Callable[..., Settings], logs: Logs,
) -> None:
    worker = worker_on_doubles(unit_settings(), doubles)
    running = RunningWorker(worker).start()
    doubles.engine.wait_polling()
    # The long poll answers only after the stop: the stop is given just before it returns.
    doubles.engine.before_return = worker.stop
    task_id = doubles.engine.add_task({"query": "q"})
    running.stop()
    assert doubles.engine.tasks[task_id].worker_id is None, "unlocked"
    assert doubles.engine.state(task_id) == "open"
    assert not doubles.llm.calls_to("chat"), "never worked on"
    assert worker.counters.fetched == 1 and worker.counters.released == 1


def test_a_task_refetched_while_its_run_continues_is_not_run_twice(
    doubles: Doubles, start: Callable[..., RunningWorker], logs: Logs,
) -> None:
    doubles.llm.hold()
    first = doubles.engine.add_task({"query": "slow"})
    running = start(max_tasks_in_flight=2)
    doubles.llm.wait_in_chat(1)
    doubles.engine.wait_polling()
    # Our lock ran out (the heartbeat could not reach the engine); the next poll locks the task for us again.
    doubles.clock.advance(11)
    second = doubles.engine.add_task({"query": "new"})
    soon(lambda: events(logs, "task.refetched", task_id=first), "task.refetched")
    doubles.llm.release()
    soon(lambda: all(doubles.engine.state(t) == "completed" for t in (first, second)), "both completed")
    assert len(doubles.llm.calls_to("chat")) == 2
    running.stop()
    assert running.worker.counters.completed == 2


def test_a_poll_loop_bug_stops_the_worker_with_status_1(doubles: Doubles, start: Callable[..., RunningWorker],
                                                        logs: Logs) -> None:
    doubles.engine.fail("fetch_and_lock", RuntimeError("a bug in the poll loop"))
    running = start()
    soon(lambda: not running.alive, "the worker to stop by itself")
    assert running.exit_code == 1
    assert events(logs, "worker.poll_crashed")


# -- dependencies down and up ------------------------------------------------------------------------


def test_an_unreachable_engine_is_polled_with_backoff(doubles: Doubles, start: Callable[..., RunningWorker],
                                                      logs: Logs) -> None:
    doubles.engine.fail("fetch_and_lock", EngineUnavailable("refused"), EngineUnavailable("refused"),
                        EngineRejected(401, "", "Unauthorized"))
    task_id = doubles.engine.add_task({"query": "q"})
    start()
    soon(lambda: doubles.engine.state(task_id) == "completed", "completion once the engine answers")
    assert len(events(logs, "engine.fetch_failed")) == 3, "each failed poll waits (1, 2, 4 ms) and tries again"
    assert len(doubles.engine.calls_to("fetch_and_lock")) >= 4


def test_a_task_waits_for_its_database_holding_its_lock_then_continues(
    doubles: Doubles, start: Callable[..., RunningWorker], logs: Logs,
) -> None:
    doubles.store.down = True
    task_id = doubles.engine.add_task({"query": "q"})
    running = start()
    soon(lambda: running.worker.store_gate.is_down, "the database gate to close")
    soon(lambda: len(doubles.store.calls_to("save_input")) >= 3, "a few tries")
    assert doubles.engine.tasks[task_id].worker_id == "unit-worker", "still ours"
    doubles.store.down = False
    soon(lambda: doubles.engine.state(task_id) == "completed", "completion after the database is back")
    assert not doubles.engine.calls_to("handle_failure"), "no retry burnt on an outage"
    assert len(events(logs, "service.down", service="postgresql")) == 1
    assert events(logs, "service.up", service="postgresql")


def test_nothing_is_fetched_while_a_dependency_is_down_and_a_task_a_pending_poll_brings_is_handed_back(
    doubles: Doubles, start: Callable[..., RunningWorker], logs: Logs,
) -> None:
    doubles.llm.down = True
    running = start()
    doubles.engine.wait_polling()
    # Ollama goes down while the long poll waits in the engine (as a task would find out).
    cancelled = threading.Event()
    cancelled.set()
    with pytest.raises(LlmUnavailable):
        running.worker.llm_gate.call(doubles.llm.ping, cancelled)
    task_id = doubles.engine.add_task({"query": "q"})
    soon(lambda: events(logs, "task.released", task_id=task_id, reason="ollama down"), "the hand-back")
    assert doubles.engine.tasks[task_id].worker_id is None
    polls = len(doubles.engine.calls_to("fetch_and_lock"))
    soon(lambda: len(doubles.llm.calls_to("ping")) >= 4, "probes of Ollama")
    assert len(doubles.engine.calls_to("fetch_and_lock")) == polls, "no poll while Ollama is down"

    doubles.llm.down = False
    soon(lambda: doubles.engine.state(task_id) == "completed", "completion after Ollama is back")
    running.stop()
    assert running.worker.counters.released == 1 and running.worker.counters.completed == 1


def test_a_run_released_while_it_waits_for_a_service_reports_nothing(
    doubles: Doubles, start: Callable[..., RunningWorker], logs: Logs,
) -> None:
    doubles.store.down = True
    task_id = doubles.engine.add_task({"query": "q"})
    running = start(shutdown_grace_s=30)
    soon(lambda: running.worker.store_gate.is_down, "the database gate to close")
    # Shutdown does not wait the grace out while PostgreSQL is down: the run is released at once.
    assert running.stop() == 0
    soon(lambda: events(logs, "task.not_reported", task_id=task_id, state="released"), "the run to give up")
    assert doubles.engine.tasks[task_id].worker_id is None
    assert not doubles.engine.calls_to("handle_failure") and not doubles.engine.calls_to("complete")


# -- locks -------------------------------------------------------------------------------------------


def test_a_lost_lock_abandons_the_run_and_stops_its_llm_call(
    doubles: Doubles, start: Callable[..., RunningWorker], logs: Logs,
) -> None:
    doubles.llm.hold()
    task_id = doubles.engine.add_task({"query": "q"})
    running = start()
    doubles.llm.wait_in_chat(1)
    doubles.clock.advance(6)  # less than half of the 10 s lock is left: the heartbeat extends it
    running.worker._heartbeat.tick()
    soon(lambda: doubles.engine.calls_to("extend_lock"), "an extension")
    assert doubles.engine.calls_to("extend_lock")[-1].args == {"task_id": task_id, "new_duration_ms": 10_000}
    soon(lambda: events(logs, "task.lock_extended", task_id=task_id), "the extension to land")
    doubles.clock.advance(6)
    doubles.engine.lock_for_other_worker(task_id)
    running.worker._heartbeat.tick()
    soon(lambda: events(logs, "task.lock_lost", task_id=task_id), "the lock lost")

    # The held chat is cancelled (the real client stops reading Ollama's stream): nothing is stored.
    soon(lambda: events(logs, "task.not_reported", task_id=task_id, state="lost"), "the run to end")
    assert doubles.llm.in_chat == 0
    assert not doubles.engine.calls_to("complete"), "never completed by this worker"
    assert task_id not in doubles.store.outputs
    running.stop()
    assert running.worker.counters.abandoned == 1


def test_a_run_lost_while_it_waits_for_a_service_reports_nothing(
    doubles: Doubles, start: Callable[..., RunningWorker], logs: Logs,
) -> None:
    doubles.llm.down = True
    task_id = doubles.engine.add_task({"query": "q"})
    running = start()
    soon(lambda: running.worker.llm_gate.is_down, "the Ollama gate to close")
    doubles.clock.advance(6)
    doubles.engine.delete(task_id)  # the instance was cancelled meanwhile
    running.worker._heartbeat.tick()
    soon(lambda: events(logs, "task.not_reported", task_id=task_id, state="lost"), "the run to give up")
    assert not doubles.engine.calls_to("handle_failure"), "ServiceUnavailable after a cancel reports nothing"
    running.stop()
    assert running.worker.counters.abandoned == 1


# -- shutdown ----------------------------------------------------------------------------------------


def test_shutdown_waits_for_tasks_in_flight_within_the_grace(
    doubles: Doubles, unit_settings: Callable[..., Settings],
) -> None:
    doubles.llm.hold()
    task_id = doubles.engine.add_task({"query": "q"})
    worker = worker_on_doubles(unit_settings(shutdown_grace_s=30), doubles)
    running = RunningWorker(worker).start()
    doubles.llm.wait_in_chat(1)
    worker.stop()
    soon(lambda: _health_state(worker.settings.worker.health_file) == "stopping", "stopping")
    doubles.llm.release()
    assert running.stop() == 0
    assert doubles.engine.state(task_id) == "completed"
    assert HealthRecord.read(worker.settings.worker.health_file).state == "stopped"


def test_shutdown_releases_what_is_left_after_the_grace_and_sweeps(
    doubles: Doubles, unit_settings: Callable[..., Settings], logs: Logs,
) -> None:
    doubles.llm.hold()
    running_task = doubles.engine.add_task({"query": "slow"})
    worker = worker_on_doubles(unit_settings(shutdown_grace_s=0, max_tasks_in_flight=2), doubles)
    running = RunningWorker(worker).start()
    doubles.llm.wait_in_chat(1)
    doubles.engine.wait_polling()
    # A task the engine lists as ours that no run holds (locked by a poll whose answer was lost).
    stray = doubles.engine.add_task({"query": "stray"})
    doubles.engine.lock_for_other_worker(stray, worker.settings.worker.id)

    assert running.stop() == 0
    for task_id in (running_task, stray):
        assert doubles.engine.tasks[task_id].worker_id is None, f"{task_id} unlocked"
        assert doubles.engine.state(task_id) == "open", "no retry spent, nothing reported"
    assert events(logs, "task.released", task_id=running_task, reason="shutdown")
    assert events(logs, "task.released", task_id=stray, reason="sweep")
    assert doubles.engine.calls_to("locked_task_ids"), "the engine was asked what is still ours"
    assert not doubles.engine.calls_to("complete")
    assert worker.counters.released >= 1


def test_a_failed_sweep_or_release_is_logged_not_fatal(
    doubles: Doubles, unit_settings: Callable[..., Settings], logs: Logs,
) -> None:
    doubles.llm.hold()
    task_id = doubles.engine.add_task({"query": "slow"})
    worker = worker_on_doubles(unit_settings(shutdown_grace_s=0, max_tasks_in_flight=1), doubles)
    running = RunningWorker(worker).start()
    doubles.llm.wait_in_chat(1)
    doubles.engine.fail("unlock", EngineUnavailable("refused"))
    doubles.engine.fail("locked_task_ids", EngineUnavailable("refused"))
    assert running.stop() == 0
    assert events(logs, "task.release_failed", task_id=task_id)
    assert events(logs, "worker.sweep_failed")


def test_a_sweep_that_cannot_unlock_one_task_goes_on(
    doubles: Doubles, unit_settings: Callable[..., Settings], logs: Logs,
) -> None:
    worker = worker_on_doubles(unit_settings(), doubles)
    ids = [doubles.engine.add_task({"query": "q"}) for _ in range(2)]
    for task_id in ids:
        doubles.engine.lock_for_other_worker(task_id, worker.settings.worker.id)
    doubles.engine.fail("unlock", LockLost("gone"))
    running = RunningWorker(worker).start()
    doubles.engine.wait_polling()
    assert running.stop() == 0
    assert len(events(logs, "task.release_failed")) == 1, "one unlock failed; the sweep went on"
    # What the sweep unlocked woke our long poll, which locked it again: the second sweep gets the rest.
    assert all(doubles.engine.tasks[t].worker_id is None for t in ids)


def test_the_health_file_says_running_then_stopped(doubles: Doubles, unit_settings: Callable[..., Settings],
                                                   logs: Logs) -> None:
    worker = worker_on_doubles(unit_settings(), doubles, health_interval_s=0.001)
    running = RunningWorker(worker).start()
    path = worker.settings.worker.health_file
    soon(lambda: _health_state(path) == "running", "a running record")
    record = HealthRecord.read(path)
    assert (record.worker_id, record.pid, record.in_flight, record.down) == ("unit-worker", os.getpid(), 0, ())
    running.stop()
    assert HealthRecord.read(path).state == "stopped"


def test_a_health_file_that_cannot_be_written_is_logged(
    doubles: Doubles, unit_settings: Callable[..., Settings], tmp_path: Path, logs: Logs,
) -> None:
    worker = worker_on_doubles(unit_settings(health_file=tmp_path / "missing" / "health.json"), doubles)
    running = RunningWorker(worker).start()
    doubles.engine.wait_polling()
    assert running.stop() == 0
    assert events(logs, "worker.health_write_failed")


# -- signals -----------------------------------------------------------------------------------------


@pytest.fixture()
def restore_signal_handlers() -> Iterator[None]:
    saved = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    yield
    for signum, handler in saved.items():
        signal.signal(signum, handler)


def _signal_when(ready: Callable[[], None], worker: Worker, *then: Callable[[], None]) -> threading.Thread:
    """In a thread: wait for ``ready`` and the first health record (the main thread is then past its
    start-up logging, which a handler that logs must not interrupt), check the worker's handler is
    installed, send SIGTERM; then each of ``then`` followed by another SIGTERM."""

    def send() -> None:
        ready()
        soon(lambda: _health_state(worker.settings.worker.health_file) == "running", "the running loop")
        if signal.getsignal(signal.SIGTERM) != worker._on_signal:
            worker.stop()  # never signal the test process without the worker's handler in place
            return
        os.kill(os.getpid(), signal.SIGTERM)
        for step in then:
            step()
            os.kill(os.getpid(), signal.SIGTERM)

    thread = threading.Thread(target=send, daemon=True)
    thread.start()
    return thread


@pytest.mark.usefixtures("restore_signal_handlers")
def test_a_signal_stops_the_worker_gracefully(doubles: Doubles, unit_settings: Callable[..., Settings],
                                              logs: Logs) -> None:
    # The signal may reach another thread: the main thread runs the handler when its wait for the next
    # health write ends, so that wait is short here.
    worker = worker_on_doubles(unit_settings(), doubles, health_interval_s=0.01)
    _signal_when(doubles.engine.wait_polling, worker)
    assert worker.run() == 0  # in the main thread, where signal handlers run
    assert events(logs, "worker.stopping", signal="SIGTERM")
    assert HealthRecord.read(worker.settings.worker.health_file).state == "stopped"


@pytest.mark.usefixtures("restore_signal_handlers")
def test_a_second_signal_exits_at_once_with_130(doubles: Doubles, unit_settings: Callable[..., Settings]) -> None:
    exits: list[int] = []

    def exit_process(code: int) -> None:
        exits.append(code)
        raise SystemExit(code)

    doubles.llm.hold()
    task_id = doubles.engine.add_task({"query": "slow"})
    worker = worker_on_doubles(unit_settings(shutdown_grace_s=30), doubles, exit_process=exit_process,
                               health_interval_s=0.01)
    health = worker.settings.worker.health_file
    _signal_when(lambda: doubles.llm.wait_in_chat(1), worker,
                 lambda: soon(lambda: _health_state(health) == "stopping", "the graceful stop"))
    with pytest.raises(SystemExit):
        worker.run()  # waits the 30 s grace for the held task, until the second signal
    assert exits == [130]
    assert not doubles.engine.calls_to("complete") and not doubles.engine.calls_to("unlock")
    assert doubles.engine.tasks[task_id].worker_id == worker.settings.worker.id, "left to its lock expiry"
