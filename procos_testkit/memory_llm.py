"""A scripted model server with ``LlmClient``'s interface (``LlmApi``), for unit tests of the pipeline
(the real Ollama, or the fake HTTP one, is what the integration and fault suites use).

Each ``chat`` answers at once (the next of the texts given to ``answer_next`` while any is left, else
``answer``), unless the test scripted an error (``fail``), made the server unreachable (``down``), or
``hold()`` it: then every chat waits inside the call until ``release()``, which is how a test keeps
tasks in flight for as long as it needs. A chat whose ``cancel`` is set (before, or while held) raises
``RunCancelled``, as the real client stops reading the stream.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Mapping
from typing import Any

from procos_testkit.scripted import Scripted
from procos_worker.errors import LlmUnavailable, RunCancelled
from procos_worker.models import LlmResult, ModelFacts
from procos_worker.settings import ThinkLevel

__all__ = ["ScriptedLlm"]

_CANCEL_CHECK_S = 0.01


class ScriptedLlm(Scripted):
    def __init__(self, answer: str = "a scripted answer", *, model: str = "smollm2:135m") -> None:
        super().__init__(lambda call: LlmUnavailable(f"Ollama refuses connections ({call})"))
        self.answer = answer
        self.model = model
        self.answered_model: str | None = None
        """The model name the answers carry (as Ollama reports it); None: the one asked for."""
        self.facts = ModelFacts(num_ctx=None, trained_ctx=None)
        """What ``show`` says about every model (its Modelfile's num_ctx, its trained context)."""
        self.in_chat = 0
        self._open = threading.Event()
        self._open.set()
        self._cond = threading.Condition()
        self._next: deque[str] = deque()

    def answer_next(self, *texts: str) -> None:
        """The next ``len(texts)`` chats answer these, in order (then ``answer`` again)."""
        with self._cond:
            self._next.extend(texts)

    def hold(self) -> None:
        """Chats from now on wait until ``release``."""
        self._open.clear()

    def release(self) -> None:
        self._open.set()

    def wait_in_chat(self, count: int, timeout_s: float = 5.0) -> None:
        """Block until ``count`` chats are waiting in a ``hold``."""
        with self._cond:
            if not self._cond.wait_for(lambda: self.in_chat >= count, timeout=timeout_s):
                raise AssertionError(f"{self.in_chat} chats held, {count} expected after {timeout_s}s")

    def chat(self, messages: list[dict[str, str]], *, model: str | None = None,
             options: Mapping[str, Any] | None = None, format: Mapping[str, Any] | None = None,
             think: bool | ThinkLevel | None = None, cancel: threading.Event | None = None) -> LlmResult:
        self._called("chat", messages=messages, model=model, options=None if options is None else dict(options),
                     format=None if format is None else dict(format), think=think)
        with self._cond:
            self.in_chat += 1
            self._cond.notify_all()
        try:
            while not self._open.wait(_CANCEL_CHECK_S):
                if cancel is not None and cancel.is_set():
                    raise RunCancelled("the run was given up while the model was answering")
        finally:
            with self._cond:
                self.in_chat -= 1
        if cancel is not None and cancel.is_set():
            raise RunCancelled("the run was given up while the model was answering")
        with self._cond:
            answer = self._next.popleft() if self._next else self.answer
        return LlmResult(content=answer, model=self.answered_model or model or self.model, done_reason="stop",
                         prompt_eval_count=sum(len(m["content"]) for m in messages) // 4 or 1,
                         eval_count=len(answer) // 4 or 1, total_duration_ns=1, load_duration_ns=0,
                         prompt_eval_duration_ns=0, eval_duration_ns=1, wall_s=0.0)

    def ping(self) -> list[str]:
        self._called("ping")
        return [self.model]

    def show(self, model: str) -> ModelFacts:
        self._called("show", model=model)
        return self.facts
