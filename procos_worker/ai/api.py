"""What the task pipeline needs of the model server, as a ``Protocol`` (``LlmClient`` is the real one;
``procos_testkit`` has a scripted one). Implementations raise ``LlmUnavailable`` when the server
can't be reached and the other ``TaskError``s of ``errors`` for what it answers.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from procos_worker.models import LlmResult
from procos_worker.settings import ThinkLevel

__all__ = ["LlmApi"]


class LlmApi(Protocol):
    """Chat with a model; list the models (see ``ai.llm.LlmClient``, one server, and
    ``ai.endpoints.EndpointPool``, several)."""

    def chat(self, messages: list[dict[str, str]], *, model: str | None = None,
             options: Mapping[str, Any] | None = None, format: Mapping[str, Any] | None = None,
             think: bool | ThinkLevel | None = None) -> LlmResult: ...

    def ping(self) -> list[str]: ...
