"""The Ollama chat call (task inputs -> **LLM** -> store).

Ollama's and httpx's exceptions become the project's here:
a run given up (its ``cancel`` set: lock lost, or released at shutdown) stops reading the stream at the
next chunk -> ``RunCancelled``, and the request is closed, which stops Ollama generating for it;
connection refused, or no connection within OLLAMA_CONNECT_TIMEOUT_S (a black-holed host) ->
``LlmUnavailable`` (the worker waits for Ollama, fetching nothing new); 401/403 from an authenticating
proxy -> ``LlmAuthFailed`` (waits the same way: every task would fail alike);
503/5xx, 408/429 (a timing-out or rate-limiting proxy in front of Ollama), no bytes for
OLLAMA_READ_TIMEOUT_S, the whole answer over OLLAMA_TIMEOUT_S, a dropped connection -> ``LlmBusy`` after
``OLLAMA_ATTEMPTS`` in-process tries;
404 (model not found) -> ``ModelNotFound``; other 4xx (a model asked to think that can't) ->
``LlmRequestInvalid``: both are incidents. A probe (``ping``) that fails in any way, within
OLLAMA_PROBE_TIMEOUT_S per step, is ``LlmUnavailable``.

Timeouts: httpx bounds the connect (OLLAMA_CONNECT_TIMEOUT_S) and each wait for bytes (OLLAMA_READ_TIMEOUT_S:
the first chunk comes after the model is loaded and the prompt evaluated, then one chunk per token or
so); the stream loop bounds the whole answer (OLLAMA_TIMEOUT_S), checked at each chunk, so the total
can be overrun by at most one read timeout.

Every request carries ``"truncate": false``: Ollama would otherwise cut a prompt longer than the
context window silently (200 OK, only ``prompt_eval_count`` shows it); with it, Ollama 0.24 answers
400 "the input length exceeds the context length" at once, which becomes ``PromptTooLong``. It also
carries ``"shift": false``: by default an answer that reaches the end of the context makes the runner
drop part of the prompt and go on; with it the answer stops there, with ``done_reason`` "length". The
``ollama`` package has neither argument, so the body is written here and sent through the package's
own request layer. ``think`` (reasoning models) is sent as given; the streamed
``message.thinking`` pieces are kept apart from the answer (``LlmResult.thinking``).
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
    LlmAuthFailed,
    LlmBusy,
    LlmRequestInvalid,
    LlmUnavailable,
    ModelNotFound,
    ProcosError,
    PromptTooLong,
    RunCancelled,
)
from procos_worker.models import LlmResult, ModelFacts, TaskInputs
from procos_worker.settings import OllamaSettings, ThinkLevel

__all__ = ["LlmClient", "build_messages"]

_T = TypeVar("_T")
_BAD_OPTION = re.compile(r'option "[^"]*" must be of type')
_OVERFLOW = "exceeds the context length"
_NO_THINKING = "does not support thinking"
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
    """Chat with one Ollama server (``base_url``, default OLLAMA_BASE_URL), with a bounded number of tries
    on transient errors."""

    def __init__(self, settings: OllamaSettings, base_url: str | None = None) -> None:
        self._settings = settings
        self.base_url = base_url or settings.base_url
        self._timeout = httpx.Timeout(connect=settings.connect_timeout_s,
                                      read=min(settings.read_timeout_s, settings.timeout_s),
                                      write=min(settings.read_timeout_s, settings.timeout_s),
                                      pool=settings.timeout_s)
        self._probe_timeout = httpx.Timeout(settings.probe_timeout_s, connect=settings.connect_timeout_s)
        headers = settings.http_headers()
        self._client = ollama.Client(host=self.base_url, timeout=self._timeout, headers=headers)
        if not any(name.lower() == "authorization" for name in headers):
            # The ollama package adds OLLAMA_API_KEY from the process environment by itself; the settings
            # are the only configuration (an api_key set to nothing means no key).
            self._client._client.headers.pop("authorization", None)

    def chat(self, messages: list[dict[str, str]], *, model: str | None = None,
             options: Mapping[str, Any] | None = None, format: Mapping[str, Any] | None = None,
             think: bool | ThinkLevel | None = None, cancel: threading.Event | None = None) -> LlmResult:
        """Ask ``model`` (default OLLAMA_MODEL) with ``options`` (default OLLAMA_OPTIONS), constrained to
        the JSON Schema ``format`` if given, with ``think`` if given (default OLLAMA_THINK); raise a project
        error that says what to do next (``RunCancelled`` once ``cancel`` is set: the answer is not wanted
        any more)."""
        stop = threading.Event() if cancel is None else cancel
        retrying = Retrying(
            retry=retry_if_exception_type(LlmBusy),
            stop=stop_after_attempt(self._settings.attempts),
            wait=wait_exponential_jitter(multiplier=0.5, max=5.0),
            sleep=lambda seconds: _sleep_unless(stop, seconds),
            reraise=True,
        )
        return retrying(self._chat_once, messages, model or self._settings.model,
                        self._settings.options if options is None else options, format=format,
                        think=self._settings.think if think is None else think, cancel=stop)

    def ping(self) -> list[str]:
        """The models the server has. Every step bounded by OLLAMA_PROBE_TIMEOUT_S (connect: the connect
        timeout); any failure is ``LlmUnavailable``: a server that can't list its models can't serve."""
        try:
            listing = self._converting(lambda: self._client._request(
                ollama.ListResponse, "GET", "/api/tags", timeout=self._probe_timeout), self._settings.model,
                read_limit=("OLLAMA_PROBE_TIMEOUT_S", self._settings.probe_timeout_s))
        except LlmUnavailable:
            raise
        except ProcosError as exc:
            raise LlmUnavailable(f"Ollama at {self.base_url} failed its probe (GET /api/tags): {exc.message}",
                                 details=exc.details) from exc
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

    def _chat_once(self, messages: list[dict[str, str]], model: str, options: Mapping[str, Any], *,
                   format: Mapping[str, Any] | None, think: bool | ThinkLevel | None,
                   cancel: threading.Event) -> LlmResult:
        if cancel.is_set():
            raise RunCancelled("the run was given up before the model was asked")
        started = time.perf_counter()
        body: dict[str, Any] = {"model": model, "messages": _wire_safe(messages), "stream": True, "truncate": False,
                                "shift": False}
        if options:
            body["options"] = dict(options)
        if format is not None:
            body["format"] = dict(format)
        if think is not None:
            body["think"] = think
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
        thinking: list[str] = []
        final: ollama.ChatResponse | None = None
        with closing(parts):
            for part in parts:
                if cancel.is_set():
                    # Leaving the loop closes the stream: Ollama stops generating for a client that is gone.
                    raise RunCancelled("the run was given up while the model was answering")
                if part.message.content:
                    pieces.append(part.message.content)
                if part.message.thinking:
                    thinking.append(part.message.thinking)
                if part.done:
                    final = part
                if time.perf_counter() - started > self._settings.timeout_s:
                    raise LlmBusy(f"Ollama at {self.base_url} did not finish within "
                                  f"{self._settings.timeout_s:g} s (OLLAMA_TIMEOUT_S)")
        if final is None:
            raise LlmBusy(f"Ollama at {self.base_url} ended the answer without its final chunk")
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
            thinking="".join(thinking),
        )

    def _converting(self, call: Callable[[], _T], model: str, *,
                    read_limit: tuple[str, float] | None = None) -> _T:
        where = self.base_url
        read_name, read_s = read_limit or ("OLLAMA_READ_TIMEOUT_S",
                                           min(self._settings.read_timeout_s, self._settings.timeout_s))
        try:
            return call()
        except ollama.ResponseError as exc:
            raise _from_status(exc.status_code, exc.error, model, where) from exc
        except (ConnectionError, httpx.ConnectError) as exc:  # the client wraps it, except in a stream
            raise LlmUnavailable(f"Ollama at {where} can't be reached", details=repr(exc)) from exc
        except httpx.ConnectTimeout as exc:
            # Nothing answered the connection (a black-holed host, a dead route): down, not merely slow.
            raise LlmUnavailable(
                f"Ollama at {where} did not accept a connection within {self._settings.connect_timeout_s:g} s "
                "(OLLAMA_CONNECT_TIMEOUT_S)", details=repr(exc)) from exc
        except httpx.ReadTimeout as exc:
            raise LlmBusy(
                f"Ollama at {where} sent nothing for {read_s:g} s ({read_name})", details=repr(exc)) from exc
        except httpx.TimeoutException as exc:
            raise LlmBusy(f"Ollama at {where} timed out ({type(exc).__name__})", details=repr(exc)) from exc
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
    if status in (401, 403):
        return LlmAuthFailed(
            f"Ollama at {where} refused the credentials (HTTP {status}): check OLLAMA_API_KEY / OLLAMA_HEADERS",
            details=details)
    if status == 400 and _NO_THINKING in str(error):
        return LlmRequestInvalid(
            f"model '{model}' does not support thinking: set procos.think (or the topic's default, or "
            "OLLAMA_THINK) to false or leave it empty for this model, or use a thinking model",
            details=details)
    if status == 400 and _OVERFLOW in str(error):
        return PromptTooLong(f"the prompt does not fit the context window of model '{model}' ({error})",
                             details=details)
    if (400 <= status < 500 and status not in _TRANSIENT_4XX) or _BAD_OPTION.search(str(error)):
        # Ollama 0.24 answers an option of the wrong type (OLLAMA_OPTIONS {"num_ctx": "abc"}) with a 500.
        return LlmRequestInvalid(
            f"Ollama rejected the request ({status}: {str(error)[:200]}); check the options (procos.options, "
            "TASK_TOPIC_DEFAULTS, config_data in procos_ai_models, OLLAMA_OPTIONS) and the model",
            details=details,
        )
    return LlmBusy(f"Ollama busy or failing (HTTP {status})", details=details)
