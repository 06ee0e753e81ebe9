"""One task's prompt within its model's context window: the earlier turns it is given
(``procos.memory``), the budget they must fit, the cut of ``procos.onOverflow=truncate``, and the one
retry after Ollama refuses a prompt as too long (handler: inputs -> **prompt** -> input row -> **LLM**).

The rooms it calls: ``ai.memory`` (the scope and its key), ``store.turns`` (the newest turns' sizes,
then the texts of those that fit), ``ai.window`` (num_ctx, the estimate, the fit, the refusal). A task
with neither property and a prompt under 16 KB costs nothing here: it is sent as it is, and an overflow
is Ollama's 400 (``truncate: false``), reported with the sizes and the model's context.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from uuid import UUID

from structlog.stdlib import BoundLogger

from procos_worker.ai.api import LlmApi
from procos_worker.ai.memory import memory_key
from procos_worker.ai.registry import ModelRegistry
from procos_worker.ai.taskconfig import TaskConfig
from procos_worker.ai.window import (
    PLAIN_MAX_CHARS,
    Budget,
    ContextLimits,
    Estimator,
    Prompt,
    estimator_for,
    fit,
    overflow_hint,
    too_long,
)
from procos_worker.errors import PromptTooLong, TaskError
from procos_worker.gate import ServiceGate
from procos_worker.models import LlmResult, Task, TaskInputs, TurnSize
from procos_worker.settings import Settings
from procos_worker.store.api import StoreApi

__all__ = ["Chat", "Prompts"]

Chat = Callable[[list[dict[str, str]]], LlmResult]
_REFUSAL = "HTTP 400: the input length exceeds the context length"


class Prompts:
    """Builds each task's prompt and asks it (thread-safe: the only state is the cache of model facts)."""

    def __init__(self, settings: Settings, store: StoreApi, llm: LlmApi, registry: ModelRegistry, *,
                 store_gate: ServiceGate, llm_gate: ServiceGate) -> None:
        self._settings = settings
        self._store = store
        self._registry = registry
        self._limits = ContextLimits(llm.show, settings.window)
        self._store_gate = store_gate
        self._llm_gate = llm_gate

    def first(self, task: Task, config: TaskConfig, inputs: TaskInputs, cancel: threading.Event,
              log: BoundLogger) -> Prompt:
        """The messages of the first try: the system prompt, the newest earlier turns that fit (oldest
        first), the user message (its context cut with ``truncate``). ``InputError`` when the memory's
        variable is missing; ``PromptTooLong`` when the prompt is obviously too long to send."""
        plain = Prompt.plain(inputs, config.model)
        if not config.memory.enabled and config.on_overflow == "error" and plain.chars <= PLAIN_MAX_CHARS:
            return plain
        key = memory_key(task, config.memory)
        budget = self._llm_gate.call(lambda: self._limits.budget(config.model, config.options), cancel)
        sizes = self._recent(task, config, key, cancel)
        estimator = self._estimator(config.model, sizes, cancel)
        fitted = fit(inputs, sizes, budget, estimator, on_overflow=config.on_overflow, model=config.model)
        ids = [size.id for size in fitted.turns]
        texts = self._store_gate.call(lambda: self._store.turn_texts(ids), cancel) if ids else {}
        prompt = Prompt.assemble(inputs, fitted, texts, model=config.model, memory=config.memory, memory_key=key,
                                 sizes=tuple(sizes), budget=budget, estimator=estimator)
        log.info("task.prompt_fitted", num_ctx=budget.num_ctx, reply_tokens=budget.reply_tokens,
                 estimated_tokens=fitted.estimated_tokens, chars_per_token=round(estimator.chars_per_token, 3),
                 memory_turns_found=len(sizes), memory_turns_sent=len(prompt.turns), truncated=prompt.truncated)
        return prompt

    def ask(self, task: Task, config: TaskConfig, prompt: Prompt, *, input_id: UUID, chat: Chat,
            cancel: threading.Event, log: BoundLogger) -> tuple[LlmResult, Prompt]:
        """``chat`` the prompt; after Ollama refuses it as too long, once more with fewer turns or a shorter
        context fitted by the certain bound (the input row rewritten first), else ``PromptTooLong``."""
        try:
            return chat(prompt.messages), prompt
        except PromptTooLong as refused:
            retry = self._retry(prompt, config, cancel)
            log.warning("task.prompt_refused", chars=prompt.chars, memory_turns_sent=len(prompt.turns),
                        retry_memory_turns=None if retry is None else len(retry.turns),
                        retry_chars=None if retry is None else retry.chars)
            if retry is None:
                raise self._too_long(prompt, config, cancel, log) from refused
        self._store_gate.call(lambda: self._store.amend_input(
            input_id, task, retry.inputs, retry.messages, model=config.model, options=config.options,
            window=retry.record()), cancel)
        try:
            return chat(retry.messages), retry
        except PromptTooLong as again:
            raise self._too_long(retry, config, cancel, log) from again

    def _recent(self, task: Task, config: TaskConfig, key: str | None, cancel: threading.Event) -> list[TurnSize]:
        """The sizes of the newest earlier turns of the task's memory scope (none without memory)."""
        if config.memory.kind == "process":
            scope, value = "process", task.process_instance_id
        elif config.memory.kind == "variable" and key is not None:
            scope, value = "variable", key
        else:
            return []
        limit = self._settings.memory.max_turns
        return self._store_gate.call(lambda: self._store.recent_turns(task, scope, value, limit), cancel)

    def _estimator(self, model: str, sizes: list[TurnSize], cancel: threading.Event) -> Estimator:
        measured = self._store_gate.call(lambda: self._registry.chars_per_token(model), cancel)
        return estimator_for(sizes, model, measured, self._settings.window.chars_per_token)

    def _retry(self, prompt: Prompt, config: TaskConfig, cancel: threading.Event) -> Prompt | None:
        """The second try, fitted with one token per UTF-8 byte; None when it would send the same."""
        if prompt.fitted is None or prompt.budget is None or prompt.estimator is None:
            return None  # a plain prompt: nothing to leave out
        certain = prompt.estimator.as_certain()
        fitted = fit(prompt.inputs, prompt.sizes, prompt.budget, certain, on_overflow=config.on_overflow,
                     model=config.model)
        if fitted.same_request(prompt.fitted):
            return None
        texts = dict(prompt.known_turns)
        missing = [size.id for size in fitted.turns if size.id not in texts]
        if missing:  # not expected (a certain fit keeps fewer turns), but never send a turn without its text
            texts.update(self._store_gate.call(lambda: self._store.turn_texts(missing), cancel))
        return Prompt.assemble(prompt.inputs, fitted, texts, model=prompt.model, memory=prompt.memory,
                               memory_key=prompt.memory_key, sizes=prompt.sizes, budget=prompt.budget,
                               estimator=certain, attempt=prompt.attempt + 1, refused=prompt.refused + 1)

    def _too_long(self, prompt: Prompt, config: TaskConfig, cancel: threading.Event,
                  log: BoundLogger) -> PromptTooLong:
        """The refusal with the sizes and the model's context (read now for a plain prompt)."""
        budget = prompt.budget or self._budget_if_known(config, cancel, log)
        estimator = prompt.estimator or self._estimator(config.model, [], cancel)
        return too_long(config.model, budget, prompt.messages, estimator=estimator, refused_by=_REFUSAL,
                        hint=overflow_hint(config.on_overflow, prompt.inputs), memory_turns=len(prompt.turns))

    def _budget_if_known(self, config: TaskConfig, cancel: threading.Event, log: BoundLogger) -> Budget | None:
        try:
            return self._llm_gate.call(lambda: self._limits.budget(config.model, config.options), cancel)
        except TaskError as exc:  # the refusal stands; it is reported without the context it can't name
            log.warning("task.window_unknown", error=exc.message)
            return None
