"""camunda-external-task-client-python3, made to use one keep-alive session and per-topic fetch bodies.

The library builds every request itself (URLs, bodies, typed variables, its error messages) but sends
each with the module-level ``requests.post``: a new TCP connection per call, and no way to pass a
session. So the name ``requests`` inside the library's module is pointed at ``_SessionRouter``: its
``post`` goes through ``EngineSession.post_json`` of the ``LibraryClient`` whose call is running (a
context variable, so threads never see each other's), and to ``requests.post`` as before for any other
user of the library. The library reads of an answer only what ``JsonAnswer`` has (``ok``,
``status_code``, ``json()``, ``raise_for_status()``). ``LibraryClient._get_topics`` replaces the
library's one-size topic list with the ``Subscription`` bodies (lock duration, variables and filters
per topic).
"""

from __future__ import annotations

import contextvars
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import requests
from camunda.client import external_task_client as _library
from camunda.client.external_task_client import ExternalTaskClient

from procos_worker.engine.fetch import FetchOrder, Subscription
from procos_worker.engine.session import EngineSession, JsonAnswer

__all__ = ["LibraryClient"]


@dataclass(frozen=True, slots=True)
class _Call:
    session: EngineSession
    topics: Sequence[Subscription] = ()
    max_answer_bytes: int | None = None


_CALL: contextvars.ContextVar[_Call | None] = contextvars.ContextVar("procos_engine_call", default=None)


class _SessionRouter:
    """Stands in for the ``requests`` module inside the library's module."""

    def post(self, url: str, **kwargs: Any) -> requests.Response | JsonAnswer:
        call = _CALL.get()
        if call is None:
            return requests.post(url, **kwargs)
        # The library sends a JSON body with its own Content-Type header, and a timeout in seconds.
        return call.session.post_json(url, kwargs.get("json"), timeout=float(kwargs["timeout"]),
                                      max_bytes=call.max_answer_bytes)

    def __getattr__(self, name: str) -> Any:
        return getattr(requests, name)


if not isinstance(_library.requests, _SessionRouter):
    _library.requests = _SessionRouter()


class LibraryClient(ExternalTaskClient):  # type: ignore[misc]  # the library is untyped
    """``ExternalTaskClient`` whose calls go through ``session`` and whose fetch sends ``Subscription``s."""

    def __init__(self, worker_id: str, base_url: str, session: EngineSession, *, order: FetchOrder,
                 config: dict[str, Any]) -> None:
        sorting = [dict(s) for s in order.sorting] or None
        super().__init__(worker_id, engine_base_url=base_url,
                         config={**config, "usePriority": order.use_priority, "sorting": sorting})
        self._session = session

    @contextmanager
    def _routed(self, topics: Sequence[Subscription] = (), max_answer_bytes: int | None = None) -> Iterator[None]:
        token = _CALL.set(_Call(self._session, topics, max_answer_bytes))
        try:
            yield
        finally:
            _CALL.reset(token)

    def fetch_subscriptions(self, topics: Sequence[Subscription], max_tasks: int,
                            max_answer_bytes: int | None = None) -> Any:
        """``AnswerTooLarge`` when the answer is over ``max_answer_bytes`` (then the tasks it locked are
        unknown: see ``Worker._hand_back_unread``)."""
        # The library reads maxTasks from its config; only the poll thread fetches.
        self.config["maxTasks"] = max_tasks
        with self._routed(topics, max_answer_bytes):
            return self.fetch_and_lock(",".join(t.topic for t in topics))

    def _get_topics(self, topic_names: str, process_variables: Any, variables: Any) -> list[dict[str, Any]]:
        call = _CALL.get()
        if call is None or not call.topics:
            return super()._get_topics(topic_names, process_variables, variables)  # type: ignore[no-any-return]
        return [t.as_rest(deserialize_values=bool(self.config["deserializeValues"]),
                          include_extension_properties=bool(self.config.get("includeExtensionProperties")))
                for t in call.topics]

    def complete(self, task_id: str, global_variables: Any, local_variables: Any = None) -> Any:
        with self._routed():
            return super().complete(task_id, global_variables, local_variables)

    def failure(self, task_id: str, error_message: str, error_details: str, retries: int,
                retry_timeout: int) -> Any:
        with self._routed():
            return super().failure(task_id, error_message, error_details, retries, retry_timeout)

    def bpmn_failure(self, task_id: str, error_code: str, error_message: str, variables: Any = None) -> Any:
        with self._routed():
            return super().bpmn_failure(task_id, error_code, error_message, variables)
