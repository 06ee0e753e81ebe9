"""One task, start to stored answer: inputs -> input row (and: already answered?) -> LLM -> output row.

Returns the ``Complete`` outcome built from the committed output row, or raises a ``TaskError``.
It never talks to Camunda: the worker sends the outcome.
"""

from __future__ import annotations

import threading
import time

from structlog.stdlib import BoundLogger

from procos_worker.ai.llm import LlmClient, build_messages
from procos_worker.errors import TaskError
from procos_worker.fingerprint import input_hash
from procos_worker.flags import build_flags
from procos_worker.gate import ServiceGate
from procos_worker.inputs import parse_inputs
from procos_worker.models import Complete, Task
from procos_worker.outcomes import complete
from procos_worker.settings import Settings
from procos_worker.store.context import ContextStore

__all__ = ["TaskHandler"]


class TaskHandler:
    """Runs the pipeline for one task at a time per call (many calls run in parallel threads)."""

    def __init__(self, settings: Settings, store: ContextStore, llm: LlmClient,
                 store_gate: ServiceGate, llm_gate: ServiceGate) -> None:
        self._settings = settings
        self._store = store
        self._llm = llm
        self._store_gate = store_gate
        self._llm_gate = llm_gate

    def handle(self, task: Task, cancel: threading.Event, log: BoundLogger) -> Complete:
        """``cancel`` (lock lost, or shutdown) interrupts waits for an unreachable service and the LLM call."""
        inputs = parse_inputs(task, self._settings.task)

        messages = build_messages(inputs)
        prompt = messages[-1]["content"]
        ollama = self._settings.ollama
        attempt = input_hash(task.process_instance_id, messages, ollama.model, ollama.options)
        t0 = time.perf_counter()
        input_id, stored = self._store_gate.call(
            lambda: self._store.save_input(task, inputs, prompt, input_hash=attempt), cancel)
        if stored is not None:
            # Redelivered after a crash or an expired lock, asking the same: the answer exists, don't ask again.
            log.info("task.redelivered", ai_context_id=str(stored.id))
            return complete(build_flags(stored), stored.id)
        t1 = time.perf_counter()
        log.info("task.input_stored", prompt_length=len(prompt), store_s=round(t1 - t0, 4))

        try:
            result = self._llm_gate.call(lambda: self._llm.chat(messages, cancel=cancel), cancel)
            t2 = time.perf_counter()
            log.info("task.llm_answered", response_length=len(result.content), llm_s=round(t2 - t1, 4),
                     eval_count=result.eval_count, prompt_eval_count=result.prompt_eval_count,
                     done_reason=result.done_reason)
            output = self._store_gate.call(
                lambda: self._store.save_output(task, result, input_id, input_hash=attempt), cancel)
        except TaskError as exc:
            # errorDetails names where the prompt is, never the prompt itself.
            exc.details = f"{exc.details}\nThe task's prompt is stored in procos_ai_context, input row {input_id}."
            raise
        log.info("task.stored", ai_context_id=str(output.id), store_s=round(time.perf_counter() - t2, 4))
        return complete(build_flags(output), output.id)
