"""The worker: the poll loop, capacity, heartbeat, shutdown; it sends each outcome to Camunda.

Threads: the main thread waits for a stop and then shuts down; one poll thread long-polls
``fetchAndLock`` for as many tasks as there is free capacity; one thread per task in flight runs the
handler and reports its outcome; the heartbeat thread extends locks. Task threads are daemons so that
an LLM call still running at the end of the grace period does not hold the process.

Shutdown (SIGTERM/SIGINT, or ``stop()``): stop fetching at once (the long poll in progress is
abandoned, not awaited), let tasks in flight finish within WORKER_SHUTDOWN_GRACE_S (not waited out
while Ollama or PostgreSQL is unreachable: those tasks can't finish), unlock the
rest (no retry is consumed), sweep any task the engine still lists as locked by this worker id, close
clients in reverse order, exit 0. Camunda's unlock wakes long polls still pending in the engine, our own
included, so after any unlock the poll in progress is given _POLL_RETURN_S to come back with what it
re-locked (it unlocks that at once) before the final sweep. A long poll still pending when the process
exits can lock a task created in its last WORKER_ASYNC_RESPONSE_TIMEOUT_MS; that task waits out its lock.
A second signal exits at once with status 130. No path completes
a task whose output row is not committed: completion is only ever built from a stored row.
"""

from __future__ import annotations

import dataclasses
import os
import random
import signal
import threading
import time
from collections.abc import Callable
from types import FrameType

import structlog
from structlog.stdlib import BoundLogger

from procos_worker import metrics
from procos_worker.ai.api import LlmApi
from procos_worker.ai.endpoints import EndpointPool
from procos_worker.ai.registry import ModelRegistry, StatsRefresher
from procos_worker.ai.taskconfig import TaskConfigs
from procos_worker.backoff import Backoff
from procos_worker.engine.api import EngineApi
from procos_worker.engine.client import EngineClient
from procos_worker.engine.fetch import Subscription, fetch_order, subscriptions
from procos_worker.errors import EngineError, EngineUnavailable, ServiceUnavailable, TaskConfigError, TaskError
from procos_worker.gate import ServiceGate
from procos_worker.handler import TaskHandler
from procos_worker.health import Counters, HealthRecord, HealthState, Progress
from procos_worker.heartbeat import Heartbeat
from procos_worker.inputs import FetchVariables, requested_variables
from procos_worker.models import BpmnError, Complete, Failure, Outcome, Task
from procos_worker.outcomes import internal_error, outcome_for
from procos_worker.settings import Settings
from procos_worker.store.api import ModelTableApi, StoreApi
from procos_worker.store.context import ContextStore
from procos_worker.store.registry import ModelTable
from procos_worker.taskrun import RunState, TaskRun

__all__ = ["Worker"]

_HEALTH_INTERVAL_S = 2.0
# How often a poll loop waiting for free capacity says it is alive.
_WAIT_BEAT_S = 1.0
_REPORTS: dict[type, metrics.Report] = {Complete: "complete", Failure: "failure", BpmnError: "bpmn_error"}
# Camunda's unlock wakes pending long polls, so our own poll still waiting in the engine re-locks a task we
# release at shutdown and returns it at once; this long is enough for it to come back and be unlocked again.
_POLL_RETURN_S = 2.0


class Worker:
    """Owns all runtime state of one worker process.

    Attributes:
        settings: the one Settings object.
        engine, store, llm: the clients (opened in ``run``, closed in reverse order).
        configs: each task's settings from its procos.* properties, the topic defaults and the model
            registry (raises ``TaskConfigError`` here when TASK_TOPIC_DEFAULTS is bad).
        fetch_variables: the variable names fetchAndLock asks for (learned from the tasks' templates).
        counters: tasks completed / failed / bpmn_errors / abandoned / released since start.

    ``models`` is procos_ai_models (read by the model registry); by default the ContextStore's table.
    The keyword arguments after the clients exist for tests: ``clock`` (monotonic seconds: run
    times, lock expiry, the shutdown deadline, the registry's cache), ``draw`` (backoff jitter),
    ``sleep`` (between retries of a report), ``exit_process`` (the second signal) and
    ``health_interval_s``.
    """

    def __init__(self, settings: Settings, *, engine: EngineApi | None = None,
                 store: StoreApi | None = None, llm: LlmApi | None = None, models: ModelTableApi | None = None,
                 clock: Callable[[], float] = time.monotonic, draw: Callable[[], float] = random.random,
                 sleep: Callable[[float], None] = time.sleep, exit_process: Callable[[int], object] = os._exit,
                 health_interval_s: float = _HEALTH_INTERVAL_S) -> None:
        self.settings = settings
        w = settings.worker
        # Threads that may call the engine at once: the poll loop, the heartbeat, shutdown, one per task.
        self.engine: EngineApi = engine or EngineClient(
            settings.camunda, w.id, async_response_timeout_ms=w.async_response_timeout_ms,
            order=fetch_order(w), pool_size=w.max_tasks_in_flight + 3)
        self._subscriptions = subscriptions(w, requested_variables(settings.task))
        context = store or ContextStore(settings.database, provider=settings.ollama.provider)
        self.store: StoreApi = context
        self.llm: LlmApi = llm or EndpointPool(settings.ollama, settings.backoff, clock=clock, draw=draw)
        if models is None:
            if not isinstance(context, ContextStore):
                raise TypeError("a store that is not a ContextStore comes with its models table (models=...)")
            models = ModelTable(context, settings.ollama.provider)
        self._clock = clock
        self._draw = draw
        self._sleep = sleep
        self._exit_process = exit_process
        self._health_interval_s = health_interval_s
        self.store_gate = ServiceGate("postgresql", settings.backoff, self.store.ping, clock=clock, draw=draw)
        self.llm_gate = ServiceGate("ollama", settings.backoff, self.llm.ping, clock=clock, draw=draw)
        self.configs = TaskConfigs(settings, ModelRegistry(settings.registry, models.load, clock=clock))
        self.fetch_variables = FetchVariables(settings.task)
        self.handler = TaskHandler(settings, self.store, self.llm, self.configs,
                                   store_gate=self.store_gate, llm_gate=self.llm_gate)
        # An input row with no answer after every try of the longest call is an error, not a call running.
        table = models
        self._stats = StatsRefresher(settings.registry.stats_interval_s, lambda: table.refresh_stats(
            window_s=settings.registry.stats_window_s, min_age_s=0.9 * settings.registry.stats_interval_s,
            unanswered_after_s=settings.ollama.timeout_s * settings.ollama.attempts, worker_id=w.id))
        self.counters = Counters()
        self.progress = Progress(clock=clock)
        self._runs: dict[str, TaskRun] = {}
        self._cond = threading.Condition()
        self._stopping = threading.Event()
        self._signals = 0
        self._heartbeat = Heartbeat(self.engine, self._snapshot,
                                    min(sub.lock_duration_ms for sub in self._subscriptions), clock=clock,
                                    on_tick=lambda: self.progress.beat("heartbeat"))
        self._exit_code = 0
        self._health_state: HealthState = "running"
        self._poll_thread = threading.Thread(target=self._poll_main, name="procos-poll", daemon=True)
        self._log: BoundLogger = structlog.get_logger("procos_worker.worker").bind(worker_id=w.id)

    # -- public ----------------------------------------------------------------------------------

    def run(self, *, install_signal_handlers: bool = True) -> int:
        """Serve tasks until stopped; returns the process exit status."""
        if install_signal_handlers:
            signal.signal(signal.SIGTERM, self._on_signal)
            signal.signal(signal.SIGINT, self._on_signal)
        self.store.open()
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
            subs = self._with_learned_variables()
            started = time.perf_counter()
            try:
                tasks = self.engine.fetch_and_lock(subs, max_tasks=free)
            except EngineError as exc:
                metrics.service_state("camunda", not isinstance(exc, EngineUnavailable))
                delay = backoff.next_delay_s()
                self._log.warning("engine.fetch_failed", error=str(exc), retry_in_s=round(delay, 2))
                self._stopping.wait(delay)
                continue
            backoff.reset()
            metrics.polled(time.perf_counter() - started)
            metrics.service_state("camunda", True)
            fetched = {sub.topic: frozenset(sub.variables) for sub in subs}
            for task in tasks:
                self._dispatch(task, fetched.get(task.topic, frozenset()))

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

    def _dispatch(self, task: Task, fetched: frozenset[str]) -> None:
        self.counters.add("fetched")
        metrics.fetched(task.topic)
        log = self._task_log(task)
        if self._stopping.is_set():
            # Locked by a poll that returned after the stop: hand it straight back.
            self._unlock(task, log, "shutdown")
            return
        missing = self._unfetched_variables(task, fetched)
        if missing:
            # Its templates read variables this fetch didn't ask for: the next fetch asks for them, and
            # the engine resolves each from the task's execution (local before process) as it does here.
            self.fetch_variables.learn(task.topic, missing)
            self._unlock(task, log, f"fetch again with variables {', '.join(sorted(missing))}")
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
        threading.Thread(target=self._run_task, args=(run,), name=f"procos-task-{task.id[:8]}", daemon=True).start()

    def _with_learned_variables(self) -> list[Subscription]:
        """Each topic's subscription, asking also for the variables its tasks' templates were seen to read."""
        return [dataclasses.replace(sub, variables=tuple(dict.fromkeys(
                    [*sub.variables, *self.fetch_variables.names([sub.topic])])))
                for sub in self._subscriptions]

    def _unfetched_variables(self, task: Task, fetched: frozenset[str]) -> frozenset[str]:
        try:
            return self.configs.variables_needed(task) - fetched
        except TaskConfigError:
            return frozenset()  # a modelling mistake: the handler raises it again, as an incident

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
        """The task's outcome; None when the run was released or lost while a service was down."""
        try:
            return self.handler.handle(run.task, run.cancel, log)
        except TaskError as exc:
            return outcome_for(exc, run.task, self.settings)
        except ServiceUnavailable:
            return None  # a gate gives up only once the run is no longer ours to report
        except Exception as exc:  # a bug: make it an incident instead of a task locked until expiry
            log.exception("task.unexpected_error")
            return internal_error(exc)

    def _report(self, run: TaskRun, outcome: Outcome | None, log: BoundLogger) -> None:
        if outcome is None or not run.begin_report():
            self.counters.add("abandoned" if run.state is RunState.LOST else "released")
            metrics.task_outcome(run.task.topic, "abandoned" if run.state is RunState.LOST else "released")
            log.info("task.not_reported", state=run.state.value, elapsed_s=run.elapsed_s())
            return
        backoff = Backoff(self.settings.backoff, draw=self._draw)
        started = time.perf_counter()
        while True:
            try:
                self._send(run.task, outcome)
            except EngineUnavailable as exc:
                # The answer is stored: keep trying until the engine takes it (or says the lock is gone).
                delay = backoff.next_delay_s()
                log.warning("task.report_retry", error=exc.message, retry_in_s=round(delay, 2))
                self._sleep(delay)
                continue
            except EngineError as exc:
                self.counters.add("abandoned")
                metrics.task_outcome(run.task.topic, "abandoned")
                log.warning("task.abandoned", reason=str(exc), elapsed_s=run.elapsed_s())
                return
            metrics.reported(_REPORTS[type(outcome)], time.perf_counter() - started)
            self._log_outcome(run, outcome, log)
            return

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
        grace_s = self.settings.worker.shutdown_grace_s
        deadline = self._clock() + grace_s
        with self._cond:
            # A task waiting for an unreachable Ollama/PostgreSQL can't finish: don't wait the grace out.
            while self._runs and self._clock() < deadline and not self._dependency_down():
                self._cond.wait(timeout=min(0.2, max(0.0, deadline - self._clock())))
            leftover = list(self._runs.values())
        released = [run for run in leftover if run.give_up(RunState.RELEASED)]
        for run in released:
            self._unlock(run.task, self._task_log(run.task), "shutdown")
        self._wait_for_reports(self.settings.camunda.http_timeout_s)
        swept = self._sweep()
        if (released or swept) and self._poll_thread.is_alive():
            # Our pending long poll re-locks what we just unlocked; once it has come back (its tasks are
            # unlocked by _dispatch), nothing of ours is left waiting in the engine and a sweep is final.
            self._poll_thread.join(timeout=_POLL_RETURN_S)
            self._sweep()
        self._heartbeat.stop()
        self._stats.stop()
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

    def _sweep(self) -> int:
        """Unlock what the engine still lists as ours (a poll answered after the stop); returns how many."""
        try:
            held = set(self.engine.locked_task_ids())
        except EngineError as exc:
            self._log.warning("worker.sweep_failed", error=str(exc))
            return 0
        with self._cond:
            reporting = {tid for tid, r in self._runs.items() if r.state is RunState.REPORTING}
        unlocked = 0
        for task_id in held - reporting:
            try:
                self.engine.unlock(task_id)
            except EngineError as exc:
                self._log.warning("task.release_failed", task_id=task_id, error=str(exc))
                continue
            unlocked += 1
            self._log.info("task.released", task_id=task_id, reason="sweep")
        return unlocked

    def _unlock(self, task: Task, log: BoundLogger, reason: str) -> None:
        try:
            self.engine.unlock(task.id)
        except EngineError as exc:
            log.warning("task.release_failed", error=str(exc))
            return
        self.counters.add("released")
        metrics.task_outcome(task.topic, "released")
        log.info("task.released", reason=reason)

    # -- small helpers ---------------------------------------------------------------------------

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
            record.write(self.settings.worker.health_file)
        except OSError as exc:
            self._log.warning("worker.health_write_failed", path=str(self.settings.worker.health_file),
                              error=str(exc))
