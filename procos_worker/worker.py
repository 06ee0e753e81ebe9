"""The worker: the poll loop, capacity, heartbeat, shutdown; it sends each outcome to Camunda.

Threads: the main thread waits for a stop and then shuts down; one poll thread long-polls
``fetchAndLock`` for as many tasks as there is free capacity (with the values of the variables its
topic reads, while the answer stays small); one thread per task in flight reads the variables it still
needs (sizes first, ``engine.variables``), takes its share of the input budget,
runs the handler and reports its outcome; the heartbeat extends locks; the lease thread keeps this
worker's lease and recovers dead workers' tasks (``orphans``). Task threads are daemons so that an LLM
call still running at the end of the grace period does not hold the process.

Reports: a stored answer is sent until it lands (engine unreachable: backoff); a 500 with an engine
exception is tried WORKER_REPORT_ATTEMPTS times, then the task gets an incident naming the stored row;
an expired lock nobody else took is locked again; a BPMN error nothing in the model catches becomes an
incident instead.

Shutdown (SIGTERM/SIGINT, or ``stop()``): stop fetching at once (the long poll in progress is
abandoned, not awaited), let tasks in flight finish within WORKER_SHUTDOWN_GRACE_S (not waited out
while Ollama or PostgreSQL is unreachable: those tasks can't finish), unlock the
rest (no retry is consumed), sweep any task the engine still lists as locked by this worker id, close
clients in reverse order, exit 0; everything after the grace shares one WORKER_SHUTDOWN_RELEASE_S window
(a hung engine can't stretch it). Camunda's unlock wakes long polls still pending in the engine, our own
included, so after any unlock the poll in progress is given _POLL_RETURN_S to come back with what it
re-locked (it unlocks that at once) before the final sweep. A long poll still pending when the process
exits can lock a task created in its last WORKER_ASYNC_RESPONSE_TIMEOUT_MS: the lease, marked expired at
the end, lets another live worker unlock it. A second signal exits at once with status 130. No path
completes a task whose output row is not committed: completion is only ever built from a stored row.
"""
from __future__ import annotations

import dataclasses
import os
import random
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import FrameType
from typing import TypeVar

import structlog
from structlog.stdlib import BoundLogger

from procos_worker import metrics
from procos_worker.ai.api import LlmApi
from procos_worker.ai.endpoints import EndpointPool
from procos_worker.ai.registry import ModelRegistry, StatsRefresher
from procos_worker.ai.taskconfig import TaskConfigs
from procos_worker.backoff import Backoff
from procos_worker.budget import InputBudget
from procos_worker.engine.api import EngineApi
from procos_worker.engine.bpmn import BpmnCatalog
from procos_worker.engine.client import EngineClient
from procos_worker.engine.fetch import fetch_order, subscriptions
from procos_worker.engine.variables import VariableLoader
from procos_worker.errors import (
    EngineError,
    EngineRefused,
    EngineUnavailable,
    LockExpired,
    LockLost,
    PermanentError,
    RunCancelled,
    ServiceUnavailable,
    TaskError,
)
from procos_worker.gate import ServiceGate
from procos_worker.handler import TaskHandler
from procos_worker.health import Counters, HealthRecord, HealthState, Progress, record_path
from procos_worker.heartbeat import Heartbeat
from procos_worker.models import BpmnError, Complete, Failure, Outcome, Task
from procos_worker.orphans import OrphanRecovery
from procos_worker.outcomes import internal_error, outcome_for, report_refused, uncaught_bpmn_error
from procos_worker.runners import Runners
from procos_worker.settings import Settings
from procos_worker.store.api import LeaseApi, ModelTableApi, StoreApi
from procos_worker.store.context import ContextStore
from procos_worker.store.leases import LeaseStore
from procos_worker.store.registry import ModelTable
from procos_worker.taskrun import RunState, TaskRun

__all__ = ["Worker"]

_T = TypeVar("_T")

_HEALTH_INTERVAL_S = 2.0
# How often a poll loop waiting for free capacity says it is alive.
_WAIT_BEAT_S = 1.0
_REPORTS: dict[type, metrics.Report] = {Complete: "complete", Failure: "failure", BpmnError: "bpmn_error"}
# Camunda's unlock wakes pending long polls, so our own poll still waiting in the engine re-locks a task we
# release at shutdown and returns it at once; this long is enough for it to come back and be unlocked again.
_POLL_RETURN_S = 2.0
# After a fetch answer too large to read, fetches go without values this long (one large input rarely
# comes alone, and each try costs a download up to the limit and an unlock).
_VALUES_PAUSE_S = 60.0


@dataclass
class _Reporting:
    """One report on its way to Camunda: what is being sent, refusals so far, the backoff between tries."""

    outcome: Outcome
    backoff: Backoff
    refused: int = 0


class Worker:
    """Owns all runtime state of one worker process.

    Attributes:
        settings: the one Settings object.
        engine, store, llm: the clients (opened in ``run``, closed in reverse order).
        configs: each task's settings from its procos.* properties, the topic defaults and the model
            registry (raises ``TaskConfigError`` here when TASK_TOPIC_DEFAULTS is bad).
        variables: reads each task's input variables, sizes first (fetchAndLock fetches none).
        input_budget: input characters of all tasks in flight together (TASK_MAX_INPUT_CHARS_IN_FLIGHT).
        bpmn: the process models, to throw a BPMN error only where one catches it.
        orphans: this worker's lease and the recovery of dead workers' tasks (None if switched off).
        counters: tasks completed / failed / bpmn_errors / abandoned / released since start.

    ``models`` is procos_ai_models (read by the model registry) and ``leases`` procos_worker_leases (orphan
    recovery); by default the ContextStore's tables.
    The keyword arguments after the clients exist for tests: ``clock`` (monotonic seconds: run
    times, lock expiry, the shutdown deadline, the registry's cache), ``draw`` (backoff jitter),
    ``sleep`` (between retries of a report), ``exit_process`` (the second signal) and
    ``health_interval_s``.
    """

    def __init__(self, settings: Settings, *, engine: EngineApi | None = None,
                 store: StoreApi | None = None, llm: LlmApi | None = None, models: ModelTableApi | None = None,
                 leases: LeaseApi | None = None,
                 clock: Callable[[], float] = time.monotonic, draw: Callable[[], float] = random.random,
                 sleep: Callable[[float], None] = time.sleep, exit_process: Callable[[int], object] = os._exit,
                 health_interval_s: float = _HEALTH_INTERVAL_S) -> None:
        self.settings = settings
        w = settings.worker
        # Threads that may call the engine at once: the poll loop, the heartbeat, shutdown, one per task.
        self.engine: EngineApi = engine or EngineClient(
            settings.camunda, w.id, async_response_timeout_ms=w.async_response_timeout_ms,
            order=fetch_order(w), pool_size=w.max_tasks_in_flight + 3)
        # Without variable values: each task reads the ones it needs, sizes first (engine.variables).
        self._subscriptions = [dataclasses.replace(sub, variables=()) for sub in subscriptions(w, [])]
        context = store or ContextStore(settings.database, provider=settings.ollama.provider,
                                        pool_size=settings.pool_size)
        self.store: StoreApi = context
        self.llm: LlmApi = llm or EndpointPool(settings.ollama, settings.backoff, clock=clock, draw=draw)
        if models is None or (leases is None and settings.orphans.recovery):
            if not isinstance(context, ContextStore):
                raise TypeError("a store that is not a ContextStore comes with its models and leases tables "
                                "(models=..., leases=...)")
            models = models or ModelTable(context, settings.ollama.provider)
            leases = leases or LeaseStore(context)
        self._clock = clock
        self._draw = draw
        self._sleep = sleep
        self._exit_process = exit_process
        self._health_interval_s = health_interval_s
        self.store_gate = ServiceGate("postgresql", settings.backoff, self.store.ping, clock=clock, draw=draw)
        self.llm_gate = ServiceGate("ollama", settings.backoff, self.llm.ping, clock=clock, draw=draw)
        self.configs = TaskConfigs(settings, ModelRegistry(settings.registry, models.load,
                                                           option_names=settings.ollama.option_names, clock=clock))
        self.handler = TaskHandler(settings, self.store, self.llm, self.configs,
                                   store_gate=self.store_gate, llm_gate=self.llm_gate)
        # With the values of what a topic's tasks read (those reading more read the rest themselves).
        self._with_values = [dataclasses.replace(sub, variables=tuple(sorted(
            self.configs.topic_variables(sub.topic) | set(sub.variables)))) for sub in subscriptions(w, [])]
        self._values_paused_until = 0.0
        # An input row with no answer after every try of the longest call is an error, not a call running.
        table = models
        self._stats = StatsRefresher(settings.registry.stats_interval_s, lambda: table.refresh_stats(
            window_s=settings.registry.stats_window_s, min_age_s=0.9 * settings.registry.stats_interval_s,
            unanswered_after_s=settings.ollama.timeout_s * settings.ollama.attempts, worker_id=w.id))
        self.variables = VariableLoader(self.engine, settings.task)
        self.input_budget = InputBudget(settings.task.max_input_chars_in_flight)
        self.bpmn = BpmnCatalog(self.engine)
        self.counters = Counters()
        self.progress = Progress(clock=clock)
        self.orphans = (OrphanRecovery(settings, self.engine, leases, self.counters, clock=clock)
                        if settings.orphans.recovery and leases is not None else None)
        self._runs: dict[str, TaskRun] = {}
        self._cond = threading.Condition()
        self._stopping = threading.Event()
        self._signals = 0
        self._heartbeat = Heartbeat(self.engine, self._snapshot,
                                    min(sub.lock_duration_ms for sub in self._subscriptions), clock=clock,
                                    on_tick=lambda: self.progress.beat("heartbeat"))
        self._exit_code = 0
        self._health_state: HealthState = "running"
        self._health_path = record_path(w.health_file, os.getpid())
        self._poll_thread = threading.Thread(target=self._poll_main, name="procos-poll", daemon=True)
        self._task_threads: Runners[TaskRun] = Runners(self._run_task, name="procos-task")
        self._log: BoundLogger = structlog.get_logger("procos_worker.worker").bind(worker_id=w.id)

    # -- public ----------------------------------------------------------------------------------

    def run(self, *, install_signal_handlers: bool = True) -> int:
        """Serve tasks until stopped; returns the process exit status."""
        if install_signal_handlers:
            signal.signal(signal.SIGTERM, self._on_signal)
            signal.signal(signal.SIGINT, self._on_signal)
        self.store.open()
        if self.orphans is not None:
            self.orphans.start()
        self._heartbeat.start()
        self._stats.start()
        self._poll_thread.start()
        self._log.info("worker.started", topics=self.settings.worker.topics,
                       max_tasks_in_flight=self.settings.worker.max_tasks_in_flight)
        while not self._stopping.wait(self._health_interval_s):
            self._write_health("running")
        return self._shutdown()

    def stop(self) -> None:
        """Graceful stop: fetch nothing more; ``run`` then finishes the shutdown."""
        self._stopping.set()
        with self._cond:
            self._cond.notify_all()

    @property
    def in_flight(self) -> int:
        with self._cond:
            return len(self._runs)

    # -- poll loop -------------------------------------------------------------------------------

    def _poll_main(self) -> None:
        try:
            self._poll_loop()
        except Exception:  # noqa: BLE001 - a bug: stop the process (non-zero) rather than idle looking healthy
            self._log.exception("worker.poll_crashed")
            self._exit_code = 1
            self.stop()

    def _poll_loop(self) -> None:
        backoff = Backoff(self.settings.backoff, draw=self._draw)
        while not self._stopping.is_set():
            self.progress.beat("poll")
            free = self._wait_for_capacity()
            if free == 0 or not self._dependencies_up():
                continue
            started = time.perf_counter()
            values_max_bytes = self._values_max_bytes(free)
            try:
                tasks = self.engine.fetch_and_lock(self._with_values if values_max_bytes else self._subscriptions,
                                                   max_tasks=free, max_answer_bytes=values_max_bytes)
            except EngineError as exc:
                metrics.service_state("camunda", not isinstance(exc, EngineUnavailable))
                delay = backoff.next_delay_s()
                self._log.warning("engine.fetch_failed", error=str(exc), retry_in_s=round(delay, 2))
                self._stopping.wait(delay)
                continue
            backoff.reset()
            metrics.polled(time.perf_counter() - started)
            metrics.service_state("camunda", True)
            if tasks is None:
                self._hand_back_unread(values_max_bytes or 0)
                continue
            for task in tasks:
                self._dispatch(task)

    def _values_max_bytes(self, free: int) -> int | None:
        """How large a fetch answer with variable values may be; None: fetch without values."""
        per_task = self.settings.worker.fetch_values_max_bytes
        if per_task == 0 or self._clock() < self._values_paused_until:
            return None
        return free * per_task

    def _hand_back_unread(self, limit_bytes: int) -> None:
        """A fetch answer with values was too large to read (a variable of megabytes): the tasks it locked
        are unknown, so every task this worker id holds and does not run is unlocked (no retry spent),
        and fetches go without values for a while, each task reading its sizes first."""
        self._values_paused_until = self._clock() + _VALUES_PAUSE_S
        with self._cond:
            running = set(self._runs)
        try:
            unread = [task_id for task_id in self.engine.locked_task_ids() if task_id not in running]
            for task_id in unread:
                self.engine.unlock(task_id)
        except EngineError as exc:  # their locks expire and they are fetched again
            self._log.warning("engine.hand_back_failed", error=str(exc))
            return
        self._log.warning("engine.fetch_answer_too_large", limit_bytes=limit_bytes, handed_back=len(unread),
                          without_values_s=_VALUES_PAUSE_S)

    def _wait_for_capacity(self) -> int:
        limit = self.settings.worker.max_tasks_in_flight
        with self._cond:
            while len(self._runs) >= limit and not self._stopping.is_set():
                self._cond.wait(timeout=_WAIT_BEAT_S)  # waiting for capacity is progress, not a wedge
                self.progress.beat("poll")
            return 0 if self._stopping.is_set() else limit - len(self._runs)

    def _dependencies_up(self) -> bool:
        # While Ollama or PostgreSQL is down, fetched tasks could only fail and burn their retries.
        beat = lambda: self.progress.beat("poll")  # noqa: E731 - waiting for a service is progress, not a wedge
        return self.store_gate.wait_until_up(self._stopping, beat) and self.llm_gate.wait_until_up(self._stopping, beat)

    def _dispatch(self, task: Task) -> None:
        self.counters.add("fetched")
        metrics.fetched(task.topic)
        log = self._task_log(task)
        if self._stopping.is_set():
            # Locked by a poll that returned after the stop: hand it straight back.
            self._unlock(task, log, "shutdown")
            return
        run = TaskRun(task=task, lock_duration_ms=self.settings.worker.lock_duration_for(task.topic), clock=self._clock)
        with self._cond:
            current = self._runs.get(task.id)
            if current is not None and current.state in (RunState.RUNNING, RunState.REPORTING):
                # Our lock ran out while the heartbeat could not reach the engine, and this poll locked
                # the task for us again: the run in progress keeps it (a second run would ask the LLM twice).
                current.lock_expires_at = run.lock_expires_at
                log.warning("task.refetched", elapsed_s=current.elapsed_s())
                return
            down = [gate.name for gate in (self.store_gate, self.llm_gate) if gate.is_down]
            if not down:
                self._runs[task.id] = run
                metrics.in_flight(task.topic, +1)
        if down:
            # Locked by a long poll that was already waiting when a dependency went down: the task could
            # only wait here holding its lock; hand it back (no retry spent) for after the recovery.
            self._unlock(task, log, f"{' and '.join(down)} down")
            return
        log.debug("task.fetched", retries=task.retries)
        self._task_threads.run(run)

    # -- one task --------------------------------------------------------------------------------

    def _run_task(self, run: TaskRun) -> None:
        log = self._task_log(run.task)
        try:
            self._report(run, self._outcome(run, log), log)
        finally:
            with self._cond:
                if self._runs.get(run.task.id) is run:
                    del self._runs[run.task.id]
                    metrics.in_flight(run.task.topic, -1)
                self._cond.notify_all()

    def _outcome(self, run: TaskRun, log: BoundLogger) -> Outcome | None:
        """The task's outcome; None when the run was released or lost while it waited or worked."""
        task = run.task
        try:
            # The names its templates read (or the default inputs), and its topic's WORKER_TOPIC_FETCH variables;
            # a bad property: TaskConfigError, an incident.
            names = sorted(self.configs.variables_needed(run.task)
                           | set(self.settings.worker.fetch_for(run.task.topic).variables))
            sized = self._reading_variables(lambda: self.variables.measure(run.task, names), run, log)
            task = sized.task
            with self.input_budget.reserve(sized.chars, run.cancel, on_wait=lambda used: log.info(
                    "task.waiting_for_memory", input_chars=sized.chars, in_flight_chars=used,
                    limit=self.input_budget.capacity)):
                task = self._reading_variables(lambda: self.variables.load(sized), run, log)
                return self.handler.handle(task, run.cancel, log)
        except TaskError as exc:
            return self._caught_or_incident(outcome_for(exc, run.task, self.settings), run.task, log)
        except (ServiceUnavailable, RunCancelled):
            return None  # given up only once the run is no longer ours to report
        except Exception as exc:  # a bug: make it an incident instead of a task locked until expiry
            log.exception("task.unexpected_error")
            return internal_error(exc, task)

    def _caught_or_incident(self, outcome: Outcome, task: Task, log: BoundLogger) -> Outcome:
        """A BPMN error only where the model catches it; an incident naming the code where nothing does."""
        if not isinstance(outcome, BpmnError) or not task.process_definition_id or not task.activity_id:
            return outcome
        try:
            caught = self.bpmn.catches(task.process_definition_id, task.process_instance_id, task.activity_id,
                                       outcome.code)
        except (EngineError, ValueError) as exc:
            # Can't tell: throw it as before rather than hold the task.
            log.warning("task.catch_check_failed", code=outcome.code, error=str(exc))
            return outcome
        if caught:
            return outcome
        log.warning("task.bpmn_error_uncaught", code=outcome.code, activity_id=task.activity_id)
        return uncaught_bpmn_error(outcome, task)

    def _reading_variables(self, read: Callable[[], _T], run: TaskRun, log: BoundLogger) -> _T:
        """``read`` with the engine reachable: retried with backoff while it is not (the lock is kept);
        ``RunCancelled`` once the run is given up or the engine says the task is not ours any more."""
        backoff = Backoff(self.settings.backoff, draw=self._draw)
        while True:
            try:
                return read()
            except EngineUnavailable as exc:
                delay = backoff.next_delay_s()
                log.warning("task.variables_retry", error=exc.message, retry_in_s=round(delay, 2))
                if run.cancel.wait(delay):
                    raise RunCancelled("the run was given up while the engine was unreachable") from exc
            except LockLost as exc:
                if run.give_up(RunState.LOST):
                    log.warning("task.lock_lost", error=str(exc), elapsed_s=run.elapsed_s())
                raise RunCancelled(str(exc)) from exc
            except EngineError as exc:  # refused: fetching again would meet the same refusal
                raise PermanentError(f"Camunda refused to give the task's variables: {exc}",
                                     details=exc.details) from exc

    def _report(self, run: TaskRun, outcome: Outcome | None, log: BoundLogger) -> None:
        if outcome is None or not run.begin_report():
            self.counters.add("abandoned" if run.state is RunState.LOST else "released")
            metrics.task_outcome(run.task.topic, "abandoned" if run.state is RunState.LOST else "released")
            log.info("task.not_reported", state=run.state.value, elapsed_s=run.elapsed_s())
            return
        state = _Reporting(outcome, Backoff(self.settings.backoff, draw=self._draw))
        started = time.perf_counter()
        while True:
            try:
                self._send(run.task, state.outcome)
            except EngineError as exc:
                delay = self._after_refusal(run, state, exc, log)
                if delay is None:
                    self.counters.add("abandoned")
                    metrics.task_outcome(run.task.topic, "abandoned")
                    log.warning("task.abandoned", reason=str(exc), elapsed_s=run.elapsed_s())
                    return
                self._sleep(delay)
                continue
            metrics.reported(_REPORTS[type(state.outcome)], time.perf_counter() - started)
            self._log_outcome(run, state.outcome, log)
            return

    def _after_refusal(self, run: TaskRun, state: _Reporting, exc: EngineError, log: BoundLogger) -> float | None:
        """Seconds to wait before sending the report again, or None to give it up."""
        if isinstance(exc, EngineUnavailable):
            # The answer is stored: keep trying until the engine takes it (or says the lock is gone).
            delay = state.backoff.next_delay_s()
            log.warning("task.report_retry", error=exc.message, retry_in_s=round(delay, 2))
            return delay
        if isinstance(exc, LockExpired):
            return self._relock_to_report(run, state, exc, log)
        if isinstance(exc, EngineRefused):
            return self._refused(state, exc, log)
        return None  # the lock is another worker's, the task is gone, or Camunda rejected the call

    def _relock_to_report(self, run: TaskRun, state: _Reporting, exc: LockExpired, log: BoundLogger) -> float | None:
        """complete checks only the worker id: nobody holds the task now, so take it again and send."""
        try:
            self.engine.lock(run.task.id, run.lock_duration_ms)
        except LockLost:
            return None
        except EngineError as again:
            log.warning("task.report_retry", error=again.message)
            return state.backoff.next_delay_s()
        log.warning("task.lock_renewed", reason=exc.message, elapsed_s=run.elapsed_s())
        return 0.0

    def _refused(self, state: _Reporting, exc: EngineRefused, log: BoundLogger) -> float | None:
        """The engine ran the call and failed (a listener that throws...): bounded, then an incident."""
        state.refused += 1
        log.warning("task.report_refused", attempt=state.refused, outcome=type(state.outcome).__name__,
                    error=exc.message)
        if state.refused < self.settings.worker.report_attempts:
            return state.backoff.next_delay_s()
        incident = report_refused(state.outcome, exc.message, state.refused)
        if incident is None:
            return None
        state.outcome, state.refused = incident, 0
        return 0.0

    def _send(self, task: Task, outcome: Outcome) -> None:
        if isinstance(outcome, Complete):
            self.engine.complete(task.id, outcome.variables, outcome.local_variables)
        elif isinstance(outcome, Failure):
            self.engine.handle_failure(task.id, message=outcome.message, details=outcome.details,
                                       retries=outcome.retries, retry_timeout_ms=outcome.retry_timeout_ms)
        elif isinstance(outcome, BpmnError):
            self.engine.handle_bpmn_error(task.id, code=outcome.code, message=outcome.message,
                                          variables=outcome.variables)

    def _log_outcome(self, run: TaskRun, outcome: Outcome, log: BoundLogger) -> None:
        elapsed = run.elapsed_s()
        if isinstance(outcome, Complete):
            self.counters.add("completed")
            metrics.task_outcome(run.task.topic, "completed")
            log.info("task.completed", elapsed_s=elapsed, ai_context_id=str(outcome.context_id))
        elif isinstance(outcome, Failure):
            self.counters.add("failed")
            metrics.task_outcome(run.task.topic, "incident" if outcome.retries == 0 else "failed")
            event = "task.incident" if outcome.retries == 0 else "task.retry_scheduled"
            log.warning(event, error=outcome.message, retries=outcome.retries,
                        retry_timeout_ms=outcome.retry_timeout_ms, elapsed_s=elapsed)
        elif isinstance(outcome, BpmnError):
            self.counters.add("bpmn_errors")
            metrics.task_outcome(run.task.topic, "bpmn_error")
            log.warning("task.bpmn_error", code=outcome.code, error=outcome.message, elapsed_s=elapsed)

    # -- shutdown --------------------------------------------------------------------------------

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        self._signals += 1
        if self._signals > 1:
            # Second signal: leave now. Unreported tasks stay locked until their lock expires, and
            # nothing unstored was completed (completion is only built from a stored row).
            self._exit_process(130)
            return
        self._log.info("worker.stopping", signal=signal.Signals(signum).name)
        self.stop()

    def _shutdown(self) -> int:
        self._write_health("stopping")
        w = self.settings.worker
        deadline = self._clock() + w.shutdown_grace_s
        with self._cond:
            # A task waiting for an unreachable Ollama/PostgreSQL can't finish: don't wait the grace out.
            while self._runs and self._clock() < deadline and not self._dependency_down():
                self._cond.wait(timeout=min(0.2, max(0.0, deadline - self._clock())))
            leftover = list(self._runs.values())
        # Everything from here on talks to the engine, which may hang: one bounded window for all of it.
        end = self._clock() + w.shutdown_release_s
        released = [run for run in leftover if run.give_up(RunState.RELEASED)]
        for run in released:
            self._unlock(run.task, self._task_log(run.task), "shutdown", end=end)
        self._wait_for_reports(min(self.settings.camunda.http_timeout_s, self._left(end)))
        swept = self._sweep(end)
        if (released or swept) and self._poll_thread.is_alive():
            # Our pending long poll re-locks what we just unlocked; once it has come back (its tasks are
            # unlocked by _dispatch), nothing of ours is left waiting in the engine and a sweep is final.
            self._poll_thread.join(timeout=min(_POLL_RETURN_S, self._left(end)))
            self._sweep(end)
        if self._left(end) == 0:
            self._log.warning("worker.release_cut_short", shutdown_release_s=w.shutdown_release_s)
        self._task_threads.close()
        self._heartbeat.stop()
        self._stats.stop()
        if self.orphans is not None:
            self.orphans.stop(clean=True)
        self.store.close()
        self.engine.close()
        self._write_health("stopped")
        self._log.info("worker.stopped", exit_code=self._exit_code, **self.counters.as_dict())
        return self._exit_code

    def _wait_for_reports(self, timeout_s: float) -> None:
        deadline = self._clock() + timeout_s
        with self._cond:
            while any(r.state is RunState.REPORTING for r in self._runs.values()) and self._clock() < deadline:
                self._cond.wait(timeout=0.1)

    def _sweep(self, end: float) -> int:
        """Unlock what the engine still lists as ours (a poll answered after the stop); returns how many."""
        if self._left(end) == 0:
            return 0
        try:
            held = set(self.engine.locked_task_ids(timeout_s=self._left(end)))
        except EngineError as exc:
            self._log.warning("worker.sweep_failed", error=str(exc))
            return 0
        with self._cond:
            reporting = {tid for tid, r in self._runs.items() if r.state is RunState.REPORTING}
        unlocked = 0
        for task_id in held - reporting:
            if self._left(end) == 0:
                break
            try:
                self.engine.unlock(task_id, timeout_s=self._left(end))
            except EngineError as exc:
                self._log.warning("task.release_failed", task_id=task_id, error=str(exc))
                continue
            unlocked += 1
            self._log.info("task.released", task_id=task_id, reason="sweep")
        return unlocked

    def _unlock(self, task: Task, log: BoundLogger, reason: str, *, end: float | None = None) -> None:
        """Hand the task back; ``end``: a deadline (monotonic) the call must not outlast."""
        if end is not None and self._left(end) == 0:
            log.warning("task.release_failed", error="no time left (WORKER_SHUTDOWN_RELEASE_S)")
            return
        try:
            self.engine.unlock(task.id, timeout_s=None if end is None else self._left(end))
        except EngineError as exc:
            log.warning("task.release_failed", error=str(exc))
            return
        self.counters.add("released")
        metrics.task_outcome(task.topic, "released")
        log.info("task.released", reason=reason)

    # -- small helpers ---------------------------------------------------------------------------

    def _left(self, end: float) -> float:
        """Seconds until the deadline ``end`` on the worker's clock (0 once it passed)."""
        return max(0.0, end - self._clock())

    def _dependency_down(self) -> bool:
        return self.store_gate.is_down or self.llm_gate.is_down

    def _snapshot(self) -> list[TaskRun]:
        with self._cond:
            return list(self._runs.values())

    def _task_log(self, task: Task) -> BoundLogger:
        return self._log.bind(task_id=task.id, process_instance_id=task.process_instance_id, topic=task.topic)

    def health_record(self) -> HealthRecord:
        """The worker's health now: its state, its tasks, what it waits for, its loops' progress."""
        state = self._health_state
        if state == "running" and self._stopping.is_set():
            state = "stopping"
        return HealthRecord(ts=time.time(), state=state, worker_id=self.settings.worker.id, pid=os.getpid(),
                            in_flight=self.in_flight,
                            down=tuple(g.name for g in (self.store_gate, self.llm_gate) if g.is_down),
                            progress_age_s=self.progress.ages_s())

    def _write_health(self, state: HealthState) -> None:
        self._health_state = state
        record = self.health_record()
        try:
            record.write(self._health_path)
        except OSError as exc:
            self._log.warning("worker.health_write_failed", path=str(self._health_path),
                              error=str(exc))
