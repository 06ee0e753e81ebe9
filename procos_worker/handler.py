"""One task, start to stored answer: its settings -> inputs -> prompt (memory turns, context window) ->
input row (already answered?) -> LLM -> structured check (ask again to repair) -> output row.

Returns the ``Complete`` outcome built from the committed output row, or raises a ``TaskError``.
It never talks to Camunda: the worker sends the outcome.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from structlog.stdlib import BoundLogger

from procos_worker import metrics
from procos_worker.ai.api import LlmApi
from procos_worker.ai.structured import Checked, StructuredOutput, check_answer, output_invalid, repair_messages
from procos_worker.ai.taskconfig import TaskConfig, TaskConfigs
from procos_worker.ai.window import Prompt
from procos_worker.errors import PermanentError, TaskError
from procos_worker.flags import build_flags
from procos_worker.gate import ServiceGate
from procos_worker.inputs import build_inputs
from procos_worker.models import Complete, LlmResult, StoredOutput, Task, TaskInputs, TypedValue
from procos_worker.outcomes import complete
from procos_worker.prompting import Prompts
from procos_worker.settings import Settings
from procos_worker.store.api import StoreApi

__all__ = ["TaskHandler"]

Messages = list[dict[str, str]]


@dataclass(frozen=True, slots=True)
class _Step:
    """What every step of one task's run needs."""

    task: Task
    config: TaskConfig
    inputs: TaskInputs
    prompt: Prompt
    """The question's first try (``prompting.Prompts.first``)."""
    cancel: threading.Event
    log: BoundLogger


@dataclass(frozen=True, slots=True)
class _Attempt:
    """One structured answer, checked: ``output`` is set when it was valid (and is the output row);
    ``row_id`` is its stored row either way."""

    checked: Checked
    text: str
    row_id: str
    sent: Messages
    """The messages it answered."""
    output: StoredOutput | None = None


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
        self._prompts = Prompts(settings, store, llm, configs.registry, store_gate=store_gate, llm_gate=llm_gate)

    def handle(self, task: Task, cancel: threading.Event, log: BoundLogger) -> Complete:
        """``cancel`` (lock lost, or shutdown) interrupts waits for an unreachable service and the LLM call."""
        # procos.* properties over the defaults; the model registry may need PostgreSQL.
        config = self._store_gate.call(lambda: self._configs.resolve(task), cancel)
        with config.naming_model_source():
            return self._answer(task, config, cancel, log)

    def _answer(self, task: Task, config: TaskConfig, cancel: threading.Event, log: BoundLogger) -> Complete:
        """The pipeline once the task's settings are known."""
        inputs = build_inputs(task, config, self._settings.task)
        # Earlier turns (procos.memory) and the context window (procos.onOverflow): the first try's messages.
        prompt = self._prompts.first(task, config, inputs, cancel, log)
        step = _Step(task, config, inputs, prompt, cancel, log)

        if config.output is not None:
            output, values = self._structured(step, config.output)
            return _complete(output, config, values)

        input_id, stored = self._save_input(step, prompt.messages)
        if stored is not None:
            # Redelivered after a crash or an expired lock, asking the same: the answer exists, don't ask again.
            log.info("task.redelivered", ai_context_id=str(stored.id))
            return _complete(stored, config)
        with _naming_input(input_id):
            result, sent = self._ask(step, input_id)
            output = self._save_output(step, result, input_id, sent.messages, truncated=sent.truncated)
        return _complete(output, config)

    # -- structured answers ------------------------------------------------------------------------

    def _structured(self, step: _Step, spec: StructuredOutput) -> tuple[StoredOutput, Mapping[str, TypedValue]]:
        """Ask, check, and ask again naming what was wrong, up to TASK_OUTPUT_REPAIR_ATTEMPTS times; the
        first valid answer is the output row. Every attempt has its own rows (``repair_input_<n>``,
        ``invalid_output_<n>``): a task fetched again walks the same attempts and reuses what is stored
        (the valid answer, or each invalid one) instead of asking again; it never completes from an
        invalid one. All invalid: ``OutputInvalid`` (AI_OUTPUT_INVALID) naming every stored answer."""
        invalid: list[tuple[str, Checked]] = []
        first = messages = step.prompt.messages
        question_id: UUID | None = None
        for attempt in range(1, self._settings.task.output_repair_attempts + 2):
            extra: dict[str, Any] = {"output_schema": dict(spec.schema), "attempt": attempt}
            if invalid:
                extra["repair_of"] = invalid[-1][0]
            kind = "input" if attempt == 1 else f"repair_input_{attempt}"
            input_id, stored = self._save_input(step, messages, context_type=kind, extra=extra)
            if stored is not None:
                step.log.info("task.redelivered", ai_context_id=str(stored.id), attempt=attempt)
                return stored, self._stored_values(step, spec, stored)
            question_id = question_id or input_id
            with _naming_input(question_id):
                answer = self._attempt(step, spec, messages, (question_id, input_id), attempt)
            if answer.output is not None:
                return answer.output, answer.checked.values
            invalid.append((answer.row_id, answer.checked))
            if attempt == 1:  # what the question was sent as (the window may have fitted it once more)
                first = answer.sent
            messages = repair_messages(first, answer.text, answer.checked, spec)
        raise output_invalid(step.config.where("procos.outputSchema"), invalid)

    def _attempt(self, step: _Step, spec: StructuredOutput, messages: Messages, inputs: tuple[UUID, UUID],
                 attempt: int) -> _Attempt:
        """One answer to ``messages`` (stored as input row ``inputs[1]``): the invalid one an earlier delivery
        stored, or the model's, stored as ``invalid_output_<attempt>`` answering that row, or if valid as
        the output row answering the task's question (``inputs[0]``, its ``input`` row: the turn a reader
        of questions and answers sees), naming the repair request it answered."""
        question_id, input_id = inputs
        kind = f"invalid_output_{attempt}"
        earlier = self._store_gate.call(lambda: self._store.answer_to(step.task.id, input_id, kind), step.cancel)
        if earlier is not None and earlier.content_text is not None:
            checked = check_answer(spec, earlier.content_text, done_reason=earlier.content_data.get("done_reason"))
            if not checked.valid:
                step.log.info("task.answer_reused", ai_context_id=str(earlier.id), attempt=attempt)
                return _Attempt(checked, earlier.content_text, str(earlier.id), messages)
        if attempt == 1:
            result, prompt = self._ask(step, input_id, format=spec.schema)
            messages, truncated = prompt.messages, prompt.truncated
        else:
            result, truncated = self._chat(step, messages, format=spec.schema), step.prompt.truncated
        checked = check_answer(spec, result.content, done_reason=result.done_reason)
        found = {"structured": checked.data, "attempt": attempt}
        if checked.valid:
            repair = {"repair_input_id": str(input_id)} if input_id != question_id else {}
            output = self._save_output(step, result, question_id, messages, extra={**found, **repair},
                                       truncated=truncated)
            return _Attempt(checked, result.content, str(output.id), messages, output)
        row = self._save_output(step, result, input_id, messages, extra={**found, "errors": list(checked.errors)},
                                context_type=kind)
        step.log.warning("task.answer_invalid", ai_context_id=str(row.id), attempt=attempt, error=checked.errors[0])
        return _Attempt(checked, result.content, str(row.id), messages)

    def _stored_values(self, step: _Step, spec: StructuredOutput, stored: StoredOutput) -> Mapping[str, TypedValue]:
        """The variables of a valid answer stored by an earlier delivery (checked again: the answer is
        never completed with unless it matches the task's schema)."""
        row = self._store_gate.call(lambda: self._store.get(stored.id), step.cancel)
        checked = check_answer(spec, "" if row is None or row.content_text is None else row.content_text)
        if not checked.valid:
            raise PermanentError(f"{step.config.where('procos.outputSchema')}: the stored answer {stored.id} does not "
                                 f"match the schema any more (it changed since): {checked.errors[0]}",
                                 details="\n".join(checked.errors))
        return checked.values

    # -- the steps every task takes ----------------------------------------------------------------

    def _save_input(self, step: _Step, messages: Messages, *, context_type: str = "input",
                    extra: Mapping[str, Any] | None = None) -> tuple[UUID, StoredOutput | None]:
        t0 = time.perf_counter()
        config = step.config
        # Only the question (the ``input`` row) records the window and the memory key.
        window, key = (step.prompt.record(), step.prompt.memory_key) if context_type == "input" else (None, None)
        input_id, stored = self._store_gate.call(
            lambda: self._store.save_input(step.task, step.inputs, messages, model=config.model, options=config.options,
                                           think=config.think, context_type=context_type, extra=extra,
                                           window=window, memory_key=key),
            step.cancel)
        if stored is None:
            metrics.stored("input", time.perf_counter() - t0)
            step.log.debug("task.input_stored", prompt_length=len(messages[-1]["content"]), model=config.model,
                           store_s=round(time.perf_counter() - t0, 4))
        return input_id, stored

    def _ask(self, step: _Step, input_id: UUID, *,
             format: Mapping[str, Any] | None = None) -> tuple[LlmResult, Prompt]:
        """The question, through the context window: refused as too long, it is fitted once more (the input
        row rewritten) or reported (``PromptTooLong``). Returns the answer and the prompt it answered."""
        return self._prompts.ask(step.task, step.config, step.prompt, input_id=input_id,
                                 chat=lambda sent: self._chat(step, sent, format=format), cancel=step.cancel,
                                 log=step.log)

    def _chat(self, step: _Step, messages: Messages, *, format: Mapping[str, Any] | None = None) -> LlmResult:
        t0 = time.perf_counter()
        config = step.config
        result = self._llm_gate.call(
            lambda: self._llm.chat(messages, model=config.model, options=config.options, format=format,
                                   think=config.think, cancel=step.cancel),
            step.cancel)
        metrics.llm_answered(result.model, time.perf_counter() - t0, result.prompt_eval_count, result.eval_count)
        step.log.debug("task.llm_answered", response_length=len(result.content),
                       llm_s=round(time.perf_counter() - t0, 4), eval_count=result.eval_count,
                       prompt_eval_count=result.prompt_eval_count, done_reason=result.done_reason)
        return result

    def _save_output(self, step: _Step, result: LlmResult, input_id: UUID, messages: Messages, *,
                     extra: Mapping[str, Any] | None = None, context_type: str = "output",
                     truncated: bool = False) -> StoredOutput:
        t0 = time.perf_counter()
        prompt_chars = sum(len(m["content"]) for m in messages)
        # Only the valid answer (the ``output`` row) is a turn later tasks with memory are given.
        key = step.prompt.memory_key if context_type == "output" else None
        output = self._store_gate.call(
            lambda: self._store.save_output(step.task, result, input_id, prompt_chars=prompt_chars,
                                            prompt_messages=len(messages), memory_key=key,
                                            prompt_truncated=truncated, context_type=context_type, extra=extra),
            step.cancel)
        metrics.stored("output", time.perf_counter() - t0)
        step.log.debug("task.stored", ai_context_id=str(output.id), store_s=round(time.perf_counter() - t0, 4),
                       context_type=context_type)
        return output


@contextmanager
def _naming_input(input_id: UUID) -> Iterator[None]:
    """A task error after the input row is stored: its errorDetails name that row, never the prompt itself."""
    try:
        yield
    except TaskError as exc:
        exc.details = f"{exc.details}\nThe task's prompt is stored in procos_ai_context, input row {input_id}."
        raise


def _complete(output: StoredOutput, config: TaskConfig, answer: Mapping[str, TypedValue] | None = None) -> Complete:
    """The flags (and a structured answer's properties) under the task's result prefix, in the process or
    the task's own scope."""
    variables: dict[str, Any] = build_flags(output, config.result_prefix,
                                            report_truncation=config.on_overflow == "truncate")
    variables.update({f"{config.result_prefix}_{name}": value for name, value in (answer or {}).items()})
    return complete(variables, output.id, local=config.result_scope == "local")
