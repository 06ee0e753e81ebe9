"""One task, start to stored answer: its settings -> inputs -> input row (already answered?) -> LLM ->
output row.

Returns the ``Complete`` outcome built from the committed output row, or raises a ``TaskError``.
It never talks to Camunda: the worker sends the outcome.
"""

from __future__ import annotations

import threading
import time

from structlog.stdlib import BoundLogger

from procos_worker.ai.api import LlmApi
from procos_worker.ai.llm import build_messages
from procos_worker.ai.taskconfig import TaskConfig, TaskConfigs
from procos_worker.flags import build_flags
from procos_worker.gate import ServiceGate
from procos_worker.inputs import build_inputs
from procos_worker.models import Complete, StoredOutput, Task
from procos_worker.outcomes import complete
from procos_worker.settings import Settings
from procos_worker.store.api import StoreApi

__all__ = ["TaskHandler"]


class TaskHandler:
    """Runs the pipeline for one task at a time per call (many calls run in parallel threads)."""

    def __init__(self, settings: Settings, store: StoreApi, llm: LlmApi, configs: TaskConfigs, *,
                 store_gate: ServiceGate, llm_gate: ServiceGate) -> None:
        self._settings = settings
        self._store = store
        self._llm = llm
        self._configs = configs
        self._store_gate = store_gate
        self._llm_gate = llm_gate

    def handle(self, task: Task, cancel: threading.Event, log: BoundLogger) -> Complete:
        """``cancel`` interrupts waits for an unreachable service (lock lost, or shutdown)."""
        # procos.* properties over the defaults; the model registry may need PostgreSQL.
        config = self._store_gate.call(lambda: self._configs.resolve(task), cancel)
        inputs = build_inputs(task, config, self._settings.task)
        messages = build_messages(inputs)

        t0 = time.perf_counter()
        input_id, stored = self._store_gate.call(
            lambda: self._store.save_input(task, inputs, messages, model=config.model, options=config.options,
                                           think=config.think),
            cancel)
        if stored is not None:
            # Redelivered after a crash or an expired lock: the answer exists, don't ask again.
            log.info("task.redelivered", ai_context_id=str(stored.id))
            return _complete(stored, config)
        t1 = time.perf_counter()
        log.debug("task.input_stored", prompt_length=len(messages[-1]["content"]), model=config.model,
                  store_s=round(t1 - t0, 4))

        result = self._llm_gate.call(
            lambda: self._llm.chat(messages, model=config.model, options=config.options, think=config.think),
            cancel)
        t2 = time.perf_counter()
        log.debug("task.llm_answered", response_length=len(result.content), llm_s=round(t2 - t1, 4),
                 eval_count=result.eval_count, prompt_eval_count=result.prompt_eval_count,
                 done_reason=result.done_reason)

        prompt_chars = sum(len(m["content"]) for m in messages)
        output = self._store_gate.call(
            lambda: self._store.save_output(task, result, input_id, prompt_chars=prompt_chars), cancel)
        log.debug("task.stored", ai_context_id=str(output.id), store_s=round(time.perf_counter() - t2, 4))
        return _complete(output, config)


def _complete(output: StoredOutput, config: TaskConfig) -> Complete:
    """The flags under the task's result prefix, in the process or the task's own scope."""
    return complete(build_flags(output, config.result_prefix), output.id, local=config.result_scope == "local")
