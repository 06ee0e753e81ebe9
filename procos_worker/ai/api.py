"""What the task pipeline needs of the model server, as a ``Protocol`` (``LlmClient`` is the real one;
``procos_testkit`` has a scripted one). Implementations raise ``LlmUnavailable`` when the server
can't be reached and the other ``TaskError``s of ``errors`` for what it answers.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any, Protocol

from procos_worker.models import LlmResult, ModelFacts
from procos_worker.settings import ThinkLevel

__all__ = ["LlmApi"]


class LlmApi(Protocol):
    """Chat with a model; list the models; what a model's context is (see ``ai.llm.LlmClient``, one
    server, and ``ai.endpoints.EndpointPool``, several)."""

    def chat(self, messages: list[dict[str, str]], *, model: str | None = None,
             options: Mapping[str, Any] | None = None, format: Mapping[str, Any] | None = None,
             think: bool | ThinkLevel | None = None, cancel: threading.Event | None = None) -> LlmResult:
        """``RunCancelled`` once ``cancel`` is set (the answer is not wanted any more)."""
        ...

    def ping(self) -> list[str]: ...

    def show(self, model: str) -> ModelFacts:
        """The model's own context settings (its Modelfile's num_ctx, the context it was trained for)."""
        ...
