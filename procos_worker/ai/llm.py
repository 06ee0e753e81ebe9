"""The Ollama chat call (task inputs -> **LLM** -> store).

Ollama's and httpx's exceptions become the project's here:
a run given up (its ``cancel`` set: lock lost, or released at shutdown) stops reading the stream at the
next chunk -> ``RunCancelled``, and the request is closed, which stops Ollama generating for it;
connection refused -> ``LlmUnavailable`` (the worker waits for Ollama, fetching nothing new);
503/5xx, 408/429 (a timing-out or rate-limiting proxy in front of Ollama), timeouts, a dropped connection
-> ``LlmBusy`` after ``OLLAMA_ATTEMPTS`` in-process tries; 404 (model not found) -> ``ModelNotFound``; other
4xx -> ``LlmRequestInvalid``: both are incidents.

Every request carries ``"truncate": false``: Ollama would otherwise cut a prompt longer than the
context window silently (200 OK, only ``prompt_eval_count`` shows it); with it, Ollama 0.24 answers
400 "the input length exceeds the context length" at once, which becomes ``PromptTooLong``. It also
carries ``"shift": false``: by default an answer that reaches the end of the context makes the runner
drop part of the prompt and go on; with it the answer stops there, with ``done_reason`` "length". The
``ollama`` package has neither argument, so the body is written here and sent through the package's
own request layer.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable, Generator, Mapping
from contextlib import closing
from typing import Any, TypeVar, cast

import httpx
import ollama
from tenacity import Retrying, retry_if_exception_type, stop_after_attempt, wait_exponential_jitter

from procos_worker.errors import (
    LlmBusy,
    LlmRequestInvalid,
    LlmUnavailable,
    ModelNotFound,
    PromptTooLong,
    RunCancelled,
)
from procos_worker.models import LlmResult, ModelFacts, TaskInputs
from procos_worker.settings import OllamaSettings

__all__ = ["LlmClient", "build_messages"]

_T = TypeVar("_T")
_BAD_OPTION = re.compile(r'option "[^"]*" must be of type')
_OVERFLOW = "exceeds the context length"
_SURROGATE = re.compile("[\ud800-\udfff]")
_NUM_CTX = re.compile(r"^num_ctx\s+(\d+)\s*$", re.MULTILINE)
# Request timeout and too many requests: said by a proxy or gateway, worth trying again later.
_TRANSIENT_4XX = frozenset({408, 429})


def _wire_safe(messages: list[dict[str, str]]) -> list[dict[str, str]]:
    """Lone surrogates can't be encoded to UTF-8 for the request: send U+FFFD, as Ollama's JSON decoder
    would make of a ``\\ud800`` escape. The stored prompt keeps the original (see textcodec)."""
    return [{k: _SURROGATE.sub("\ufffd", v) for k, v in m.items()} for m in messages]


def build_messages(inputs: TaskInputs) -> list[dict[str, str]]:
    """The chat messages for one task: optional system prompt, then the question with its context."""
    messages: list[dict[str, str]] = []
    if inputs.system_prompt:
        messages.append({"role": "system", "content": inputs.system_prompt})
    if inputs.context is None:
        user = inputs.query
    else:
        context = inputs.context if isinstance(inputs.context, str) else json.dumps(inputs.context, ensure_ascii=False)
        user = f"Context:\n{context}\n\nQuestion:\n{inputs.query}"
    messages.append({"role": "user", "content": user})
    return messages


class LlmClient:
    """Chat with one Ollama server, with a bounded number of tries on transient errors."""

    def __init__(self, settings: OllamaSettings) -> None:
        self._settings = settings
        self._client = ollama.Client(host=settings.base_url, timeout=settings.timeout_s)

    def chat(self, messages: list[dict[str, str]], *, model: str | None = None,
             options: Mapping[str, Any] | None = None, format: Mapping[str, Any] | None = None,
             cancel: threading.Event | None = None) -> LlmResult:
        """Ask ``model`` (default OLLAMA_MODEL) with ``options`` (default OLLAMA_OPTIONS), constrained to
        the JSON Schema ``format`` if given; raise a project error that says what to do next
        (``RunCancelled`` once ``cancel`` is set: the answer is not wanted any more)."""
        stop = threading.Event() if cancel is None else cancel
        retrying = Retrying(
            retry=retry_if_exception_type(LlmBusy),
            stop=stop_after_attempt(self._settings.attempts),
            wait=wait_exponential_jitter(multiplier=0.5, max=5.0),
            sleep=lambda seconds: _sleep_unless(stop, seconds),
            reraise=True,
        )
        return retrying(self._chat_once, messages, model or self._settings.model,
                        self._settings.options if options is None else options, format, stop)

    def ping(self) -> list[str]:
        """The models the server has; raises like ``chat`` when it can't be reached."""
        listing = self._converting(self._client.list, self._settings.model)
        return [m.model for m in listing.models if m.model]

    def show(self, model: str) -> ModelFacts:
        """The model's own context settings (``/api/show``): the Modelfile's num_ctx and the context it was
        trained for; raises like ``chat`` (404: ``ModelNotFound``)."""
        shown = self._converting(lambda: self._client.show(model), model)
        match = _NUM_CTX.search(shown.parameters or "")
        info = shown.modelinfo or {}
        trained = info.get(f"{info.get('general.architecture')}.context_length")
        return ModelFacts(num_ctx=int(match.group(1)) if match else None,
                          trained_ctx=trained if isinstance(trained, int) and trained > 0 else None)

    def _chat_once(self, messages: list[dict[str, str]], model: str, options: Mapping[str, Any],
                   format: Mapping[str, Any] | None, cancel: threading.Event) -> LlmResult:
        if cancel.is_set():
            raise RunCancelled("the run was given up before the model was asked")
        started = time.perf_counter()
        body: dict[str, Any] = {"model": model, "messages": _wire_safe(messages), "stream": True, "truncate": False,
                                "shift": False}
        if options:
            body["options"] = dict(options)
        if format is not None:
            body["format"] = dict(format)
        if self._settings.keep_alive is not None:
            body["keep_alive"] = self._settings.keep_alive
        return self._converting(lambda: self._stream_chat(body, started, cancel), model)

    def _stream_chat(self, body: dict[str, Any], started: float, cancel: threading.Event) -> LlmResult:
        """Streamed, so a huge answer is held about twice (its pieces, then the joined text) instead of
        four times (raw body, decoded text, parsed JSON, model), and OLLAMA_TIMEOUT_S bounds the whole
        generation rather than each read."""
        parts = cast(Generator[ollama.ChatResponse, None, None],
                     self._client._request(ollama.ChatResponse, "POST", "/api/chat", json=body, stream=True))
        pieces: list[str] = []
        final: ollama.ChatResponse | None = None
        with closing(parts):
            for part in parts:
                if cancel.is_set():
                    # Leaving the loop closes the stream: Ollama stops generating for a client that is gone.
                    raise RunCancelled("the run was given up while the model was answering")
                if part.message.content:
                    pieces.append(part.message.content)
                if part.done:
                    final = part
                if time.perf_counter() - started > self._settings.timeout_s:
                    raise LlmBusy(f"Ollama at {self._settings.base_url} did not finish within "
                                  f"{self._settings.timeout_s:g} s (OLLAMA_TIMEOUT_S)")
        if final is None:
            raise LlmBusy(f"Ollama at {self._settings.base_url} ended the answer without its final chunk")
        content = "".join(pieces)
        pieces.clear()
        return LlmResult(
            content=content,
            model=final.model or str(body["model"]),
            done_reason=final.done_reason,
            prompt_eval_count=final.prompt_eval_count or 0,
            eval_count=final.eval_count or 0,
            total_duration_ns=final.total_duration or 0,
            load_duration_ns=final.load_duration or 0,
            prompt_eval_duration_ns=final.prompt_eval_duration or 0,
            eval_duration_ns=final.eval_duration or 0,
            wall_s=time.perf_counter() - started,
        )

    def _converting(self, call: Callable[[], _T], model: str) -> _T:
        where = self._settings.base_url
        try:
            return call()
        except ollama.ResponseError as exc:
            raise _from_status(exc.status_code, exc.error, model, where) from exc
        except (ConnectionError, httpx.ConnectError) as exc:  # the client wraps it, except in a stream
            raise LlmUnavailable(f"Ollama at {where} can't be reached", details=repr(exc)) from exc
        except httpx.TimeoutException as exc:
            raise LlmBusy(
                f"Ollama at {where} did not answer within {self._settings.timeout_s:g} s (OLLAMA_TIMEOUT_S)",
                details=repr(exc),
            ) from exc
        except httpx.TransportError as exc:
            raise LlmBusy(f"Ollama at {where}: connection broke: {exc}", details=repr(exc)) from exc
        except (ValueError, KeyError) as exc:
            raise LlmBusy(f"Ollama at {where} sent an answer that does not parse", details=repr(exc)) from exc


def _sleep_unless(cancel: threading.Event, seconds: float) -> None:
    """tenacity's wait between tries, cut short when the run is given up (the next try then stops)."""
    cancel.wait(seconds)


def _from_status(status: int, error: Any, model: str, where: str) -> Exception:
    details = f"Ollama at {where} answered HTTP {status}: {error}"
    if status == 404:
        return ModelNotFound(
            f"model '{model}' is not on the Ollama server at {where}: pull or create it, or fix procos.model / "
            "TASK_TOPIC_DEFAULTS / OLLAMA_MODEL",
            details=details,
        )
    if status in _TRANSIENT_4XX:
        return LlmBusy(f"Ollama busy or failing (HTTP {status})", details=details)
    if status == 400 and _OVERFLOW in str(error):
        return PromptTooLong(f"the prompt does not fit the context window of model '{model}' ({error})",
                             details=details)
    if 400 <= status < 500 or _BAD_OPTION.search(str(error)):
        # Ollama 0.24 answers an option of the wrong type (OLLAMA_OPTIONS {"num_ctx": "abc"}) with a 500.
        return LlmRequestInvalid(
            f"Ollama rejected the request ({status}: {str(error)[:200]}); check the options (procos.options, "
            "TASK_TOPIC_DEFAULTS, config_data in procos_ai_models, OLLAMA_OPTIONS) and the model",
            details=details,
        )
    return LlmBusy(f"Ollama busy or failing (HTTP {status})", details=details)
