"""The worker's fault paths on in-memory doubles: reading a task's variables (sizes first, the engine
down or refusing meanwhile), reports the engine refuses or answers "expired", BPMN errors the model does
not catch, the input budget, a shutdown whose release window runs out, and orphan recovery. Same rules
as ``test_worker.py``: a fake clock, no jitter, 1-4 ms backoffs, every wait ends on an event.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from structlog.testing import capture_logs

from procos_testkit.in_process import Doubles, RunningWorker
from procos_testkit.memory_store import Lease
from procos_worker.errors import (
    EngineRefused,
    EngineRejected,
    EngineUnavailable,
    LockExpired,
    LockLost,
    PermanentError,
    StoreUnavailable,
)
from procos_worker.health import Counters
from procos_worker.models import Variable
from procos_worker.orphans import OrphanRecovery
from procos_worker.settings import Settings, TaskSettings
from tests.unit.worker_kit import Logs, events, soon

pytestmark = pytest.mark.timeout(20)

_NS = 'xmlns:bpmn="http://www.omg.org/spec/BPMN/20100524/MODEL"'
CAUGHT = f"""<bpmn:definitions {_NS} id="d"><bpmn:error id="e" errorCode="AI_INPUT_INVALID" />
<bpmn:process id="p"><bpmn:serviceTask id="ask-model" />
<bpmn:boundaryEvent id="b" attachedToRef="ask-model"><bpmn:errorEventDefinition errorRef="e" /></bpmn:boundaryEvent>
</bpmn:process></bpmn:definitions>"""
UNCAUGHT = f"""<bpmn:definitions {_NS} id="d"><bpmn:process id="p"><bpmn:serviceTask id="ask-model" />
</bpmn:process></bpmn:definitions>"""


def _with_task(settings: Settings, **task: Any) -> Settings:
    return settings.model_copy(update={"task": TaskSettings(**task)})


# -- variables with the fetch ------------------------------------------------------------------------


def test_values_that_came_with_the_fetch_are_not_read_again(
    doubles: Doubles, start: Callable[..., RunningWorker],
) -> None:
    task_id = doubles.engine.add_task({"query": b"Summarise: ok", "context": {"k": 1}})
    start()
    soon(lambda: doubles.engine.state(task_id) == "completed", "completion")
    inputs = doubles.store.inputs[task_id].inputs
    assert (inputs.query, inputs.context) == ("Summarise: ok", {"k": 1}), "a Bytes value decoded from base64"
    for call in ("variable_instances", "binary_length", "binary_value"):
        assert not doubles.engine.calls_to(call), call


def test_inputs_that_came_with_the_fetch_over_the_limit_are_refused(
    doubles: Doubles, start: Callable[..., RunningWorker], unit_settings: Callable[..., Settings],
) -> None:
    task_id = doubles.engine.add_task({"query": "x" * 500})
    start(_with_task(unit_settings(), max_input_chars=100, max_input_chars_in_flight=100))
    soon(lambda: doubles.engine.state(task_id) == "bpmn_error", "the BPMN error")
    assert "inputs are 500 characters" in doubles.engine.tasks[task_id].reported["message"]
    assert not doubles.store.calls and not doubles.llm.calls


def test_a_file_input_is_read_from_its_instance(doubles: Doubles, start: Callable[..., RunningWorker]) -> None:
    """A File's content never comes with the fetch: it is read (and refused: a File is not text input)."""
    task_id = doubles.engine.add_task({"query": Variable(value=b"from a file", type="File")})
    start()
    soon(lambda: doubles.engine.state(task_id) == "bpmn_error", "the BPMN error")
    assert [c.args["names"] for c in doubles.engine.calls_to("variable_instances")] == [["query"]]
    assert len(doubles.engine.calls_to("binary_value")) == 1
    assert "got File (bytes)" in doubles.engine.tasks[task_id].reported["message"]


def test_a_fetch_answer_too_large_is_handed_back_and_fetched_without_values(
    doubles: Doubles, start: Callable[..., RunningWorker], logs: Logs,
) -> None:
    doubles.llm.hold()
    running_id = doubles.engine.add_task({"query": "small"})
    running = start(fetch_values_max_bytes=4_000, max_tasks_in_flight=2)
    doubles.llm.wait_in_chat(1)
    large_id = doubles.engine.add_task({"query": "q", "context": "y" * 10_000})
    soon(lambda: events(logs, "engine.fetch_answer_too_large"), "the answer to be dropped")
    event = events(logs, "engine.fetch_answer_too_large")[0]
    assert event["handed_back"] == 1 and event["limit_bytes"] == 4_000
    assert [c.args["task_id"] for c in doubles.engine.calls_to("unlock")] == [large_id], "the running task kept"
    doubles.llm.release()
    soon(lambda: doubles.engine.state(large_id) == doubles.engine.state(running_id) == "completed", "both")
    fetches = [c.args for c in doubles.engine.calls_to("fetch_and_lock")]
    dropped = next(i for i, f in enumerate(fetches) if f["max_answer_bytes"] == 4_000 and i > 0)
    assert fetches[dropped + 1]["variables"] == [] and fetches[dropped + 1]["max_answer_bytes"] is None
    assert [c.args["names"] for c in doubles.engine.calls_to("variable_instances")] == [
        ["context", "query", "system_prompt"]], "the handed-back task read its sizes first"
    assert doubles.store.inputs[large_id].inputs.context == "y" * 10_000
    running.stop()
    assert running.worker.counters.released == 0


def test_a_fetch_answer_too_large_whose_tasks_cant_be_listed_waits_for_their_locks(
    doubles: Doubles, start: Callable[..., RunningWorker], logs: Logs,
) -> None:
    doubles.engine.fail("locked_task_ids", EngineUnavailable("refused"))
    doubles.engine.add_task({"query": "q", "context": "y" * 10_000})
    start(fetch_values_max_bytes=4_000)
    soon(lambda: events(logs, "engine.hand_back_failed"), "the hand-back to fail")
    assert not doubles.engine.calls_to("unlock")


# -- variables, sizes first ---------------------------------------------------------------------------


def test_inputs_over_the_limit_are_refused_from_their_size_before_they_are_downloaded(
    doubles: Doubles, start: Callable[..., RunningWorker], unit_settings: Callable[..., Settings],
) -> None:
    task_id = doubles.engine.add_task({"query": b"x" * 500})
    start(_with_task(unit_settings(fetch_values_max_bytes=0), max_input_chars=100, max_input_chars_in_flight=100))
    soon(lambda: doubles.engine.state(task_id) == "bpmn_error", "the BPMN error")
    reported = doubles.engine.tasks[task_id].reported
    assert reported["code"] == "AI_INPUT_INVALID" and "TASK_MAX_INPUT_CHARS" in reported["message"]
    assert doubles.engine.calls_to("binary_length") and not doubles.engine.calls_to("binary_value")
    assert not doubles.store.calls and not doubles.llm.calls


def test_an_answer_to_the_variable_query_over_the_limit_is_not_read(
    doubles: Doubles, start: Callable[..., RunningWorker], unit_settings: Callable[..., Settings],
) -> None:
    task_id = doubles.engine.add_task({"query": "q", "context": {"blob": "y" * 10_000_000}})
    start(_with_task(unit_settings(fetch_values_max_bytes=0), max_input_chars=100, max_input_chars_in_flight=100))
    soon(lambda: doubles.engine.state(task_id) == "bpmn_error", "the BPMN error")
    assert "their values were not read" in doubles.engine.tasks[task_id].reported["message"]


def test_a_bytes_input_is_downloaded_once_it_fits(doubles: Doubles, start: Callable[..., RunningWorker]) -> None:
    task_id = doubles.engine.add_task({"query": b"Summarise: ok"})
    start(fetch_values_max_bytes=0)
    soon(lambda: doubles.engine.state(task_id) == "completed", "completion")
    assert len(doubles.engine.calls_to("binary_value")) == 1
    assert doubles.store.inputs[task_id].prompt == "Summarise: ok"


def test_variables_are_read_again_while_the_engine_is_unreachable(
    doubles: Doubles, start: Callable[..., RunningWorker], logs: Logs,
) -> None:
    doubles.engine.fail("variable_instances", EngineUnavailable("refused"), EngineUnavailable("refused"))
    task_id = doubles.engine.add_task({"query": "q"})
    start(fetch_values_max_bytes=0)
    soon(lambda: doubles.engine.state(task_id) == "completed", "completion")
    assert len(events(logs, "task.variables_retry", task_id=task_id)) == 2


def test_a_task_lost_while_its_variables_are_read_is_not_reported(
    doubles: Doubles, start: Callable[..., RunningWorker], logs: Logs,
) -> None:
    doubles.engine.fail("variable_instances", LockLost("External task does not exist"))
    task_id = doubles.engine.add_task({"query": "q"})
    running = start(fetch_values_max_bytes=0)
    soon(lambda: events(logs, "task.not_reported", task_id=task_id, state="lost"), "the run to end")
    assert not doubles.engine.calls_to("complete") and not doubles.llm.calls
    running.stop()
    assert running.worker.counters.abandoned == 1


def test_variables_the_engine_refuses_to_give_are_an_incident(
    doubles: Doubles, start: Callable[..., RunningWorker],
) -> None:
    doubles.engine.fail("variable_instances", EngineRejected(403, "AuthorizationException", "no READ"))
    task_id = doubles.engine.add_task({"query": "q"})
    start(fetch_values_max_bytes=0)
    soon(lambda: doubles.engine.state(task_id) == "incident", "the incident")
    assert "refused to give the task's variables" in doubles.engine.tasks[task_id].reported["message"]


def test_a_run_released_while_it_waits_for_the_engine_stops_there(
    doubles: Doubles, start: Callable[..., RunningWorker], logs: Logs,
) -> None:
    doubles.engine.fail("variable_instances", *[EngineUnavailable("refused")] * 10_000)
    task_id = doubles.engine.add_task({"query": "q"})
    running = start(shutdown_grace_s=0, fetch_values_max_bytes=0)
    soon(lambda: events(logs, "task.variables_retry", task_id=task_id), "a retry")
    running.stop()
    assert events(logs, "task.not_reported", task_id=task_id, state="released")
    assert not doubles.llm.calls


def test_tasks_in_flight_share_one_input_budget(
    doubles: Doubles, start: Callable[..., RunningWorker], unit_settings: Callable[..., Settings], logs: Logs,
) -> None:
    """Two 60-character inputs and a budget of 100: the second waits for the first to finish."""
    doubles.llm.hold()
    first = doubles.engine.add_task({"query": "a" * 60})
    second = doubles.engine.add_task({"query": "b" * 60})
    start(_with_task(unit_settings(), max_input_chars=100, max_input_chars_in_flight=100))
    doubles.llm.wait_in_chat(1)
    soon(lambda: events(logs, "task.waiting_for_memory"), "the second task to wait")
    assert doubles.llm.in_chat == 1, "only one input held at a time"
    doubles.llm.release()
    soon(lambda: doubles.engine.state(first) == doubles.engine.state(second) == "completed", "both completed")


# -- reports the engine refuses -----------------------------------------------------------------------


def test_a_completion_refused_every_time_becomes_an_incident_naming_the_stored_answer(
    doubles: Doubles, start: Callable[..., RunningWorker], logs: Logs,
) -> None:
    refusal = EngineRefused("Camunda answered 500 ProcessEngineException: a listener threw")
    doubles.engine.fail("complete", *[refusal] * 3)
    task_id = doubles.engine.add_task({"query": "q"})
    start(report_attempts=3)
    soon(lambda: doubles.engine.state(task_id) == "incident", "the incident")
    stored, _text = doubles.store.outputs[task_id]
    message = doubles.engine.tasks[task_id].reported["message"]
    assert f"ai_context_id {stored.id}" in message and "refused complete 3 times" in message
    assert len(events(logs, "task.report_refused", task_id=task_id)) == 3


def test_a_completion_refused_once_lands_on_the_next_try(
    doubles: Doubles, start: Callable[..., RunningWorker],
) -> None:
    doubles.engine.fail("complete", EngineRefused("Camunda answered 500 OptimisticLockingException"))
    task_id = doubles.engine.add_task({"query": "q"})
    start(report_attempts=3)
    soon(lambda: doubles.engine.state(task_id) == "completed", "completion")
    assert len(doubles.engine.calls_to("complete")) == 2


def test_a_refused_bpmn_error_becomes_an_incident_and_a_refused_failure_is_given_up(
    doubles: Doubles, start: Callable[..., RunningWorker], logs: Logs,
) -> None:
    refusal = EngineRefused("Camunda answered 500 ProcessEngineException")
    doubles.engine.fail("handle_bpmn_error", refusal, refusal)
    doubles.engine.fail("handle_failure", refusal, refusal)
    task_id = doubles.engine.add_task({"context": "no query"})
    start(report_attempts=2)
    soon(lambda: events(logs, "task.abandoned", task_id=task_id), "the report given up")
    # The BPMN error was refused twice, then its incident twice: nothing is left to report it with.
    assert [c.name for c in doubles.engine.calls if c.name.startswith("handle_")] == [
        "handle_bpmn_error", "handle_bpmn_error", "handle_failure", "handle_failure"]
    assert "refused the BPMN error AI_INPUT_INVALID 2 times" in doubles.engine.calls_to("handle_failure")[0].args[
        "message"]


def test_a_completion_answered_expired_locks_the_task_again_and_completes(
    doubles: Doubles, start: Callable[..., RunningWorker], logs: Logs,
) -> None:
    doubles.engine.fail("complete", LockExpired("it is locked by worker 'null'"))
    task_id = doubles.engine.add_task({"query": "q"})
    start()
    soon(lambda: doubles.engine.state(task_id) == "completed", "completion")
    assert [c.args["task_id"] for c in doubles.engine.calls_to("lock")] == [task_id]
    assert events(logs, "task.lock_renewed", task_id=task_id)


def test_a_completion_answered_expired_is_given_up_when_another_worker_took_the_task(
    doubles: Doubles, start: Callable[..., RunningWorker], logs: Logs,
) -> None:
    doubles.engine.fail("complete", LockExpired("it is locked by worker 'null'"))
    doubles.engine.fail("lock", LockLost("it is locked by worker 'other'"))
    task_id = doubles.engine.add_task({"query": "q"})
    start()
    soon(lambda: events(logs, "task.abandoned", task_id=task_id), "the report given up")
    assert len(doubles.engine.calls_to("complete")) == 1


def test_a_relock_that_does_not_reach_the_engine_is_tried_again(
    doubles: Doubles, start: Callable[..., RunningWorker], logs: Logs,
) -> None:
    doubles.engine.fail("complete", LockExpired("it is locked by worker 'null'"))
    doubles.engine.fail("lock", EngineUnavailable("refused"))
    task_id = doubles.engine.add_task({"query": "q"})
    start()
    soon(lambda: doubles.engine.state(task_id) == "completed", "completion")
    assert events(logs, "task.report_retry", task_id=task_id)


# -- a BPMN error only where the model catches it ------------------------------------------------------


def test_a_bpmn_error_the_model_catches_is_thrown(doubles: Doubles, start: Callable[..., RunningWorker]) -> None:
    task_id = doubles.engine.add_task({"context": "no query"}, bpmn=CAUGHT)
    start()
    soon(lambda: doubles.engine.state(task_id) == "bpmn_error", "the BPMN error")


def test_a_bpmn_error_nothing_catches_is_an_incident_naming_the_code(
    doubles: Doubles, start: Callable[..., RunningWorker], logs: Logs,
) -> None:
    first = doubles.engine.add_task({"context": "no query"}, bpmn=UNCAUGHT)
    start()
    soon(lambda: doubles.engine.state(first) == "incident", "the incident")
    message = doubles.engine.tasks[first].reported["message"]
    assert message.startswith("BPMN error AI_INPUT_INVALID is not caught at activity 'ask-model'")
    assert events(logs, "task.bpmn_error_uncaught", task_id=first, code="AI_INPUT_INVALID")


def test_a_bpmn_error_is_thrown_as_before_when_the_model_cannot_be_read(
    doubles: Doubles, start: Callable[..., RunningWorker], logs: Logs,
) -> None:
    doubles.engine.fail("process_definition_xml", EngineUnavailable("refused"))
    task_id = doubles.engine.add_task({"context": "no query"}, bpmn=UNCAUGHT)
    start()
    soon(lambda: doubles.engine.state(task_id) == "bpmn_error", "the BPMN error")
    assert events(logs, "task.catch_check_failed", task_id=task_id)


# -- shutdown inside its release window ---------------------------------------------------------------


def test_an_engine_that_hangs_at_shutdown_cannot_stretch_it_past_the_release_window(
    doubles: Doubles, start: Callable[..., RunningWorker], logs: Logs,
) -> None:
    """The first unlock 'takes' 11 s of the fake clock; the window is 10 s: nothing more is sent."""
    real_unlock = doubles.engine.unlock

    def slow_unlock(task_id: str, *, timeout_s: float | None = None) -> None:
        doubles.clock.advance(11)
        real_unlock(task_id, timeout_s=timeout_s)

    doubles.llm.hold()
    tasks = [doubles.engine.add_task({"query": "q"}) for _ in range(2)]
    running = start(shutdown_grace_s=0, shutdown_release_s=10)
    doubles.llm.wait_in_chat(2)
    doubles.engine.unlock = slow_unlock  # type: ignore[method-assign]
    assert running.stop() == 0
    assert len(events(logs, "task.released", reason="shutdown")) == 1
    assert events(logs, "task.release_failed", error="no time left (WORKER_SHUTDOWN_RELEASE_S)")
    assert events(logs, "worker.release_cut_short")
    assert {doubles.engine.tasks[t].state for t in tasks} == {"open"}
    assert not doubles.engine.calls_to("locked_task_ids"), "no sweep without time left"


def test_a_sweep_the_engine_refuses_is_logged(doubles: Doubles, start: Callable[..., RunningWorker],
                                              logs: Logs) -> None:
    running = start()
    doubles.engine.wait_polling()
    doubles.engine.fail("locked_task_ids", EngineUnavailable("refused"))
    assert running.stop() == 0
    assert events(logs, "worker.sweep_failed")


# -- orphan recovery ----------------------------------------------------------------------------------


def _dead_workers_task(doubles: Doubles, lock_left_s: float) -> str:
    task_id = doubles.engine.add_task({"query": "q"})
    task = doubles.engine.tasks[task_id]
    task.worker_id = "dead-worker"
    task.lock_expires_at = doubles.clock() + lock_left_s
    now = doubles.clock()
    doubles.leases.rows["dead-worker"] = Lease(expires_at=now - 1, sweep_until=now + 60)
    return task_id


def test_a_dead_workers_task_is_unlocked_and_done_by_a_live_worker(
    doubles: Doubles, start: Callable[..., RunningWorker], logs: Logs,
) -> None:
    task_id = _dead_workers_task(doubles, lock_left_s=50)
    running = start()
    soon(lambda: "unit-worker" in doubles.leases.rows, "our lease")
    doubles.clock.advance(11)  # healthy for a whole lease: it may judge others now
    doubles.leases.rows["dead-worker"] = Lease(expires_at=doubles.clock() - 1, sweep_until=doubles.clock() + 60)
    doubles.engine.tasks[task_id].lock_expires_at = doubles.clock() + 50
    soon(lambda: doubles.engine.state(task_id) == "completed", "the orphan completed")
    assert events(logs, "task.orphan_released", task_id=task_id, dead_worker_id="dead-worker")
    running.stop()
    assert running.worker.counters.reclaimed == 1
    assert doubles.leases.rows["unit-worker"].stopped, "a clean stop expires the lease at once"


def _recovery(doubles: Doubles, unit_settings: Callable[..., Settings]) -> tuple[OrphanRecovery, Counters]:
    counters = Counters()
    return OrphanRecovery(unit_settings(), doubles.engine, doubles.leases, counters, clock=doubles.clock), counters


def test_recovery_judges_nobody_before_its_own_lease_is_a_full_lease_old(
    doubles: Doubles, unit_settings: Callable[..., Settings],
) -> None:
    task_id = _dead_workers_task(doubles, lock_left_s=50)
    recovery, counters = _recovery(doubles, unit_settings)
    recovery.tick()
    assert not doubles.leases.calls_to("reap") and doubles.engine.tasks[task_id].worker_id == "dead-worker"
    doubles.clock.advance(10)
    doubles.leases.rows["dead-worker"] = Lease(expires_at=doubles.clock() - 1, sweep_until=doubles.clock() + 60)
    doubles.engine.tasks[task_id].lock_expires_at = doubles.clock() + 50
    recovery.tick()
    assert doubles.engine.tasks[task_id].worker_id is None and counters.reclaimed == 1


def test_recovery_leaves_alone_a_lock_about_to_expire_and_a_live_workers_task(
    doubles: Doubles, unit_settings: Callable[..., Settings],
) -> None:
    about_to_expire = _dead_workers_task(doubles, lock_left_s=2)
    live = doubles.engine.add_task({"query": "q"})
    doubles.engine.tasks[live].worker_id = "live-worker"
    doubles.engine.tasks[live].lock_expires_at = doubles.clock() + 50
    doubles.leases.rows["live-worker"] = Lease(expires_at=doubles.clock() + 100, sweep_until=doubles.clock() + 200)
    recovery, counters = _recovery(doubles, unit_settings)
    recovery.tick()
    doubles.clock.advance(10.5)
    doubles.leases.rows["dead-worker"] = Lease(expires_at=doubles.clock() - 1, sweep_until=doubles.clock() + 60)
    doubles.engine.tasks[about_to_expire].lock_expires_at = doubles.clock() + 2
    recovery.tick()
    assert doubles.engine.tasks[about_to_expire].worker_id == "dead-worker", "left to expire by itself"
    assert doubles.engine.tasks[live].worker_id == "live-worker", "a live worker's task is never unlocked"
    assert counters.reclaimed == 0
    assert [c.args["worker_id"] for c in doubles.engine.calls_to("locked_tasks")] == ["dead-worker"]


def test_recovery_without_its_table_switches_itself_off(doubles: Doubles,
                                                        unit_settings: Callable[..., Settings]) -> None:
    doubles.leases.fail("beat", PermanentError('relation "procos_worker_leases" does not exist'))
    recovery, _counters = _recovery(doubles, unit_settings)
    with capture_logs() as logs:
        recovery.tick()
        doubles.clock.advance(20)
        recovery.tick()
    assert [e["event"] for e in logs] == ["orphans.disabled"]
    assert len(doubles.leases.calls_to("beat")) == 1 and not doubles.leases.calls_to("reap")


def test_recovery_starts_over_after_a_database_outage_and_says_when_it_was_taken_for_dead(
    doubles: Doubles, unit_settings: Callable[..., Settings],
) -> None:
    recovery, _counters = _recovery(doubles, unit_settings)
    with capture_logs() as logs:
        recovery.tick()
        doubles.leases.fail("beat", StoreUnavailable("PostgreSQL can't be reached"))
        recovery.tick()
        doubles.clock.advance(30)  # our lease expired meanwhile
        recovery.tick()
    assert [e["event"] for e in logs] == ["worker.lease_beat_failed", "worker.lease_expired"]
    assert not doubles.leases.calls_to("reap"), "healthy again only since the last beat"


def test_recovery_logs_what_fails_and_goes_on(doubles: Doubles, unit_settings: Callable[..., Settings]) -> None:
    """The engine query, an unlock, the reap and the goodbye can each fail: logged, never fatal."""
    first = _dead_workers_task(doubles, lock_left_s=50)
    second = _dead_workers_task(doubles, lock_left_s=50)
    recovery, counters = _recovery(doubles, unit_settings)
    recovery.tick()
    doubles.clock.advance(10)
    for task_id in (first, second):
        doubles.engine.tasks[task_id].lock_expires_at = doubles.clock() + 50
    doubles.leases.rows["dead-worker"] = Lease(expires_at=doubles.clock() - 1, sweep_until=doubles.clock() + 60)
    doubles.engine.fail("locked_tasks", EngineUnavailable("refused"))
    doubles.leases.fail("reap", StoreUnavailable("PostgreSQL can't be reached"))
    with capture_logs() as logs:
        recovery.tick()  # the reap fails
        recovery.tick()  # the engine query fails
        doubles.engine.fail("unlock", EngineUnavailable("refused"))
        recovery.tick()  # one unlock fails, the other lands
        doubles.leases.fail("release", StoreUnavailable("PostgreSQL can't be reached"))
        recovery.stop(clean=True)
    assert [e["event"] for e in logs] == ["orphans.scan_failed", "orphans.query_failed", "task.orphan_release_failed",
                                          "task.orphan_released", "worker.lease_release_failed"]
    assert counters.reclaimed == 1
