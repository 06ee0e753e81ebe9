"""Several Ollama endpoints behind one ``LlmApi`` (``OLLAMA_BASE_URLS``; one endpoint by default).

**Choosing.** Each chat goes to the endpoint with the least work in flight (this process's chats running
on it), among the endpoints that are up and have the task's model; ties go to the endpoint chosen least
so far, so single tasks alternate. Each endpoint's model list (``/api/tags``) is read when it is first
needed and again when older than ``MODELS_MAX_AGE_S``; an endpoint whose list lacks the model is not
chosen for it (if no endpoint lists it, an up endpoint is asked anyway, and its 404 is the answer:
``ModelNotFound``, an incident).

**Draining.** An endpoint that can't be reached (``LlmUnavailable``: refused, no connection within
OLLAMA_CONNECT_TIMEOUT_S, credentials refused) is marked down and gets no new work; the chat that found
it goes on at once to another endpoint, inside the same call, so no Camunda retry is spent. A down
endpoint is probed in the background (``/api/tags``, with backoff) and takes work again once it
answers. An endpoint that fails a chat with ``LlmBusy`` (5xx, timeouts, a connection cut mid-answer,
after its own in-process tries) passes the chat on too, and is probed at once: down if the probe fails.

**All down.** Only when no endpoint that could serve the task is up does the chat raise
``LlmUnavailable``: the worker's gate then waits and the poll loop stops fetching, exactly as with one
server. While every endpoint is down, each chat tries them all (that is the probe), and so does ``ping``.

With one endpoint nothing of this changes what the worker does: the chat goes to it, and its errors
come out as they are.
"""

from __future__ import annotations

import functools
import random
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import structlog

from procos_worker.ai.api import LlmApi
from procos_worker.ai.llm import LlmClient
from procos_worker.backoff import Backoff
from procos_worker.errors import LlmBusy, LlmUnavailable, ModelNotFound, ProcosError
from procos_worker.models import LlmResult, ModelFacts
from procos_worker.settings import BackoffSettings, OllamaSettings, ThinkLevel

__all__ = ["MODELS_MAX_AGE_S", "EndpointPool", "EndpointState", "full_model_name"]

_T = TypeVar("_T")

MODELS_MAX_AGE_S = 30.0
"""How long an endpoint's model list is trusted before it is read again (a model pulled later is seen
within this long)."""


def full_model_name(name: str) -> str:
    """Ollama's name for ``name``: without a tag it means ``:latest``."""
    return name if ":" in name.rsplit("/", 1)[-1] else f"{name}:latest"


def _start_daemon(fn: Callable[[], None]) -> None:
    threading.Thread(target=fn, name="procos-ollama-probe", daemon=True).start()


@dataclass(frozen=True, slots=True)
class EndpointState:
    """One endpoint as the pool sees it (for ``check``, logs and tests)."""

    url: str
    up: bool
    in_flight: int
    chosen: int
    models: frozenset[str] | None
    down_reason: str | None


@dataclass(eq=False)
class _Endpoint:
    url: str
    client: LlmApi
    backoff: Backoff
    in_flight: int = 0
    chosen: int = 0
    down_since: float | None = None
    down_reason: str | None = None
    next_probe_at: float = 0.0
    probing: bool = False
    models: frozenset[str] | None = None  # None: not read yet
    models_at: float = float("-inf")
    refreshing: bool = False

    @property
    def up(self) -> bool:
        return self.down_since is None

    def may_have(self, model: str) -> bool:
        return self.models is None or model in self.models


class EndpointPool:
    """``LlmApi`` over the endpoints of ``settings.endpoints`` (thread-safe; see the module docstring).

    ``clients`` replaces the ``LlmClient`` of some endpoints (tests); ``clock`` (monotonic seconds) times
    outages and probes, ``draw`` is the backoff's jitter, ``spawn`` runs a background probe (a daemon
    thread by default).
    """

    def __init__(self, settings: OllamaSettings, backoff: BackoffSettings, *,
                 clients: Mapping[str, LlmApi] | None = None, clock: Callable[[], float] = time.monotonic,
                 draw: Callable[[], float] = random.random,
                 spawn: Callable[[Callable[[], None]], None] = _start_daemon) -> None:
        given = clients or {}
        self._settings = settings
        self._endpoints = [
            _Endpoint(url, given.get(url) or LlmClient(settings, url), Backoff(backoff, draw=draw))
            for url in settings.endpoints
        ]
        self._several = len(self._endpoints) > 1
        self._clock = clock
        self._spawn = spawn
        self._lock = threading.Lock()
        self._log = structlog.get_logger("procos_worker.ai.endpoints")

    # -- LlmApi ----------------------------------------------------------------------------------

    def chat(self, messages: list[dict[str, str]], *, model: str | None = None,
             options: Mapping[str, Any] | None = None, format: Mapping[str, Any] | None = None,
             think: bool | ThinkLevel | None = None, cancel: threading.Event | None = None) -> LlmResult:
        """Ask one endpoint, moving on to another while one is down or failing (see the module docstring)."""
        name = model or self._settings.model
        return self._on_one_endpoint(name, lambda client: client.chat(
            messages, model=name, options=options, format=format, think=think, cancel=cancel))

    def show(self, model: str) -> ModelFacts:
        """The model's context settings, from an endpoint chosen as for a chat (the endpoints are expected
        to serve the same model files)."""
        return self._on_one_endpoint(model, lambda client: client.show(model))

    def _on_one_endpoint(self, name: str, call: Callable[[LlmApi], _T]) -> _T:
        wanted = full_model_name(name)
        if self._several:
            self._refresh_stale_lists()
        tried: set[int] = set()
        errors: list[ProcosError] = []
        while True:
            endpoint = self._acquire(wanted, tried)
            if endpoint is None:
                raise self._give_up(name, wanted, errors)
            tried.add(id(endpoint))
            try:
                result = call(endpoint.client)
            except LlmUnavailable as exc:
                self._mark_down(endpoint, exc)
                errors.append(exc)
            except LlmBusy as exc:
                errors.append(exc)
                self._probe_soon(endpoint)
            except ModelNotFound as exc:
                errors.append(exc)
                if self._several:
                    self._refresh(endpoint)
            else:
                self._mark_up(endpoint)
                return result
            finally:
                self._release(endpoint)
            if self._several and not isinstance(errors[-1], ModelNotFound):
                self._log.info("ollama.chat_moved", endpoint=endpoint.url, error=errors[-1].message)

    def ping(self) -> list[str]:
        """Probe every endpoint; the models of those that answer. ``LlmUnavailable`` when none does."""
        found: set[str] = set()
        failures: list[LlmUnavailable] = []
        for endpoint in self._endpoints:
            try:
                models = endpoint.client.ping()
            except LlmUnavailable as exc:
                self._mark_down(endpoint, exc)
                failures.append(exc)
                continue
            self._mark_up(endpoint, models)
            found.update(models)
        if len(failures) == len(self._endpoints):
            raise self._all_down(failures)
        return sorted(found)

    # -- inspection --------------------------------------------------------------------------------

    def states(self) -> list[EndpointState]:
        with self._lock:
            return [EndpointState(e.url, e.up, e.in_flight, e.chosen, e.models, e.down_reason)
                    for e in self._endpoints]

    # -- choosing ------------------------------------------------------------------------------------

    def _acquire(self, model: str, tried: set[int]) -> _Endpoint | None:
        """The endpoint for the next try (its work in flight counted), or None when none is left to try."""
        with self._lock:
            now = self._clock()
            if self._several:
                self._start_due_probes(now)
            untried = [e for e in self._endpoints if id(e) not in tried]
            up = [e for e in untried if e.up]
            listed = [e for e in up if e.may_have(model)]
            if listed:
                choices = listed
            elif up and not any(not e.up and e.may_have(model) for e in self._endpoints):
                # No endpoint that is up lists the model, and none that is down might have it: ask anyway,
                # its 404 is the authoritative answer (the lists may be a little old).
                choices = up
            elif not any(e.up for e in self._endpoints):
                # Everything is down: trying is the probe (a drained endpoint gets work only this way).
                choices = [e for e in untried if e.may_have(model)] or untried
            else:
                return None
            if not choices:
                return None
            chosen = min(choices, key=lambda e: (e.in_flight, e.chosen, self._endpoints.index(e)))
            chosen.in_flight += 1
            chosen.chosen += 1
            return chosen

    def _release(self, endpoint: _Endpoint) -> None:
        with self._lock:
            endpoint.in_flight -= 1

    def _give_up(self, name: str, wanted: str, errors: Sequence[ProcosError]) -> ProcosError:
        """The error that ends a chat no endpoint answered: a busy endpoint's error (transient), else
        ``LlmUnavailable`` while an endpoint that might have the model is down or none answered at all
        (wait), else ``ModelNotFound`` (every endpoint that answered lacks the model: an incident)."""
        if not self._several and errors:
            return errors[-1]
        busy = [e for e in errors if isinstance(e, LlmBusy)]
        if busy:
            return busy[-1]
        missing = [e for e in errors if isinstance(e, ModelNotFound)]
        with self._lock:
            waiting = [e for e in self._endpoints if not e.up and e.may_have(wanted)]
            summary = "; ".join(f"{e.url}: " + (f"down ({e.down_reason})" if not e.up else
                                                "up" if e.may_have(wanted) else "no such model")
                                for e in self._endpoints)
        if waiting or not missing:
            details = "\n".join(e.details for e in errors if isinstance(e, LlmUnavailable)) or summary
            return LlmUnavailable(f"no Ollama endpoint that could serve model '{name}' is up ({summary})",
                                  details=details)
        return ModelNotFound(
            f"model '{name}' is on none of the Ollama endpoints ({', '.join(e.url for e in self._endpoints)}): "
            "pull or create it, or fix procos.model / TASK_TOPIC_DEFAULTS / OLLAMA_MODEL",
            details="\n".join(e.details for e in missing))

    def _all_down(self, failures: Sequence[LlmUnavailable]) -> LlmUnavailable:
        if not self._several:
            return failures[0]
        return LlmUnavailable(
            f"none of the {len(self._endpoints)} Ollama endpoints can be reached: "
            + "; ".join(f.message for f in failures),
            details="\n".join(f.details for f in failures))

    # -- model lists ---------------------------------------------------------------------------------

    def _refresh_stale_lists(self) -> None:
        """Read the model list of every up endpoint that has none yet or an old one (one thread each)."""
        with self._lock:
            now = self._clock()
            stale = [e for e in self._endpoints
                     if e.up and not e.refreshing and now - e.models_at >= MODELS_MAX_AGE_S]
            for endpoint in stale:
                endpoint.refreshing = True
        for endpoint in stale:
            self._refresh(endpoint, claimed=True)

    def _refresh(self, endpoint: _Endpoint, *, claimed: bool = False) -> None:
        """Read one endpoint's model list now; a failure marks it down."""
        if not claimed:
            with self._lock:
                if endpoint.refreshing:
                    return
                endpoint.refreshing = True
        try:
            models = endpoint.client.ping()
        except LlmUnavailable as exc:
            self._mark_down(endpoint, exc)
        else:
            self._mark_up(endpoint, models)
        finally:
            with self._lock:
                endpoint.refreshing = False

    # -- up and down --------------------------------------------------------------------------------

    def _mark_down(self, endpoint: _Endpoint, exc: LlmUnavailable) -> None:
        with self._lock:
            now = self._clock()
            endpoint.next_probe_at = now + endpoint.backoff.next_delay_s()
            endpoint.down_reason = exc.message
            if endpoint.down_since is not None:
                return
            endpoint.down_since = now
        if self._several:
            self._log.warning("ollama.endpoint_down", endpoint=endpoint.url, error=exc.message)

    def _mark_up(self, endpoint: _Endpoint, models: Sequence[str] | None = None) -> None:
        with self._lock:
            now = self._clock()
            if models is not None:
                endpoint.models = frozenset(full_model_name(m) for m in models)
                endpoint.models_at = now
            if endpoint.down_since is None:
                return
            down_s = now - endpoint.down_since
            endpoint.down_since = None
            endpoint.down_reason = None
            endpoint.backoff.reset()
        if self._several:
            self._log.info("ollama.endpoint_up", endpoint=endpoint.url, down_s=round(down_s, 3))

    def _start_due_probes(self, now: float) -> None:
        """Under the lock: probe, in the background, each down endpoint whose backoff delay has passed."""
        for endpoint in self._endpoints:
            if not endpoint.up and not endpoint.probing and now >= endpoint.next_probe_at:
                endpoint.probing = True
                self._spawn(functools.partial(self._probe, endpoint))

    def _probe_soon(self, endpoint: _Endpoint) -> None:
        """After a failed chat: is the endpoint still there? A failed probe drains it."""
        if not self._several:
            return
        with self._lock:
            if endpoint.probing:
                return
            endpoint.probing = True
        self._spawn(functools.partial(self._probe, endpoint))

    def _probe(self, endpoint: _Endpoint) -> None:
        try:
            self._refresh(endpoint)
        finally:
            with self._lock:
                endpoint.probing = False
