"""The Camunda 7 external-task REST API, named after its calls.

``fetch_and_lock``, ``complete``, ``handle_failure`` and ``handle_bpmn_error`` go through
camunda-external-task-client-python3's ``ExternalTaskClient`` (``engine.library``: per-topic fetch
bodies, its requests sent through our session); it lacks ``extendLock``, ``unlock``, the task query and
the process-instance queries retention needs (running? still in history?), which are added here.
Every call shares one keep-alive ``requests.Session`` (``engine.session``) that carries the login
(``engine.auth``).

It sends what it is given: every limit of the engine is checked where outcomes are built
(``procos_worker.outcomes``). A plain value goes as ``{"value": v}`` (the engine infers its type: a
JSON integer becomes an Integer); a ``TypedValue`` goes as ``{"value": v, "type": t}``.

Errors are converted here and nowhere else: connection errors, timeouts and 5xx ->
``EngineUnavailable``; 404 (the task is gone) and the 400s that mean the lock is no longer ours ->
``LockLost``; any other 4xx -> ``EngineRejected``. The library raises a bare ``Exception("received
<status> : <type> : <message>")`` for most failures, so the status is read back from that text.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any, TypeVar

import requests

from procos_worker.engine.fetch import FetchOrder, Subscription
from procos_worker.engine.library import LibraryClient
from procos_worker.engine.session import engine_session
from procos_worker.errors import EngineError, EngineRejected, EngineUnavailable, LockLost
from procos_worker.models import Task, TypedValue
from procos_worker.settings import CamundaSettings

__all__ = ["EngineClient"]

_T = TypeVar("_T")
_LIBRARY_ERROR = re.compile(r"^received (\d{3})(?: : ([^:]*?))?(?: : (.*))?$", re.DOTALL)
# 400 messages meaning "the lock is not ours any more" (7.24 wording).
_LOCK_GONE = ("lock", "expired", "worker")
# Process instance ids per query (each becomes one SQL IN list in the engine).
_IDS_PER_QUERY = 500


class EngineClient:
    """One worker's view of the engine: a worker id plus the REST calls it makes."""

    def __init__(self, settings: CamundaSettings, worker_id: str, *, async_response_timeout_ms: int,
                 order: FetchOrder | None = None, pool_size: int = 10) -> None:
        """``pool_size``: connections kept open to the engine (threads that may call at once)."""
        self.worker_id = worker_id
        self._base_url = settings.base_url
        self._timeout_s = settings.http_timeout_s
        self._session = engine_session(settings, pool_size=pool_size)
        config: dict[str, Any] = {
            "asyncResponseTimeout": async_response_timeout_ms,
            "httpTimeoutMillis": int(settings.http_timeout_s * 1000),
            "includeExtensionProperties": True,
            "deserializeValues": False,
        }
        self._client = LibraryClient(worker_id, settings.base_url, self._session, order=order or FetchOrder(),
                                     config=config)

    @property
    def session(self) -> requests.Session:
        return self._session

    def close(self) -> None:
        self._session.close()
        close_auth = getattr(self._session.auth, "close", None)
        if callable(close_auth):
            close_auth()

    # -- the library's calls ---------------------------------------------------------------------

    def fetch_and_lock(self, topics: Sequence[Subscription], *, max_tasks: int) -> list[Task]:
        """Long-poll for up to ``max_tasks`` tasks on ``topics`` (each with its lock, variables, filters)."""
        answer = self._converting(lambda: self._client.fetch_subscriptions(topics, max_tasks))
        return [Task.from_rest(item) for item in answer or []]

    def complete(self, task_id: str, variables: Mapping[str, Any],
                 local_variables: Mapping[str, Any] | None = None) -> None:
        """``local_variables`` are set in the task's own scope (its activity instance), ``variables`` in
        the process instance's (where they exist, else at the top)."""
        self._converting(lambda: self._client.complete(task_id, _wire(variables), _wire(local_variables or {})),
                         task_id=task_id)

    def handle_failure(self, task_id: str, *, message: str, details: str, retries: int,
                       retry_timeout_ms: int) -> None:
        self._converting(
            lambda: self._client.failure(task_id, message, details, retries, retry_timeout_ms),
            task_id=task_id,
        )

    def handle_bpmn_error(self, task_id: str, *, code: str, message: str,
                          variables: Mapping[str, Any] | None = None) -> None:
        self._converting(
            lambda: self._client.bpmn_failure(task_id, code, message, _wire(variables or {})),
            task_id=task_id,
        )

    # -- what the library lacks ------------------------------------------------------------------

    def extend_lock(self, task_id: str, new_duration_ms: int) -> None:
        self._post(f"/external-task/{task_id}/extendLock",
                   {"workerId": self.worker_id, "newDuration": new_duration_ms}, task_id=task_id)

    def unlock(self, task_id: str) -> None:
        self._post(f"/external-task/{task_id}/unlock", None, task_id=task_id)

    def locked_task_ids(self) -> list[str]:
        """Ids of the tasks the engine says this worker id holds (used to sweep at shutdown)."""
        def call() -> Any:
            response = self._session.get(f"{self._base_url}/external-task",
                                         params={"workerId": self.worker_id, "locked": "true"},
                                         timeout=self._timeout_s)
            _raise_for(response)
            return response.json()

        return [str(item["id"]) for item in self._converting(call)]

    def running_instance_ids(self, ids: Collection[str]) -> set[str]:
        """Which of ``ids`` are process instances the engine still runs (active or suspended)."""
        return self._instance_ids("/process-instance", ids)

    def historic_instance_ids(self, ids: Collection[str]) -> set[str]:
        """Which of ``ids`` still have a process-instance history (Camunda's history cleanup removes it)."""
        return self._instance_ids("/history/process-instance", ids)

    def historic_instance_count(self) -> int:
        """How many process instances the engine's history holds (0 when it keeps no history)."""
        def call() -> Any:
            response = self._session.get(f"{self._base_url}/history/process-instance/count", timeout=self._timeout_s)
            _raise_for(response)
            return response.json()

        return int(self._converting(call)["count"])

    def engine_name(self) -> str:
        """``GET /engine``: the cheapest call that proves the REST API answers (and auth works)."""
        def call() -> Any:
            response = self._session.get(f"{self._base_url}/engine", timeout=self._timeout_s)
            _raise_for(response)
            return response.json()

        engines = self._converting(call)
        return ", ".join(str(e.get("name")) for e in engines) or "(none)"

    def _instance_ids(self, path: str, ids: Collection[str]) -> set[str]:
        # POST queries: a list of ids in a GET query string would outgrow URL limits.
        wanted = sorted(set(ids))
        found: set[str] = set()
        for start in range(0, len(wanted), _IDS_PER_QUERY):
            chunk = wanted[start : start + _IDS_PER_QUERY]

            def call(chunk: list[str] = chunk) -> Any:
                response = self._session.post(f"{self._base_url}{path}", json={"processInstanceIds": chunk},
                                              timeout=self._timeout_s)
                _raise_for(response)
                return response.json()

            found.update(str(item["id"]) for item in self._converting(call))
        return found

    def _post(self, path: str, body: dict[str, Any] | None, *, task_id: str) -> None:
        def call() -> None:
            response = self._session.post(f"{self._base_url}{path}", json=body, timeout=self._timeout_s)
            _raise_for(response, task_id)

        self._converting(call, task_id=task_id)

    def _converting(self, call: Callable[[], _T], *, task_id: str | None = None) -> _T:
        try:
            return call()
        except EngineError:
            raise
        except requests.HTTPError as exc:
            status = exc.response.status_code if exc.response is not None else 0
            raise _classify(status, "HTTPError", str(exc), task_id) from exc
        except requests.RequestException as exc:  # refused, timed out, broken mid-answer
            raise EngineUnavailable(f"Camunda at {self._base_url} can't be reached", details=repr(exc)) from exc
        except Exception as exc:  # the library raises bare Exception("received <status> ...")
            match = _LIBRARY_ERROR.match(str(exc))
            if match is None:
                raise
            status, error_type, message = int(match.group(1)), match.group(2) or "", match.group(3) or ""
            raise _classify(status, error_type.strip(), message.strip(), task_id) from exc


def _wire(variables: Mapping[str, Any]) -> dict[str, Any]:
    """Typed values as Camunda's ``{"value", "type"}`` (the library passes a dict holding "value" through
    as it is, and wraps anything else as ``{"value": v}``)."""
    return {name: {"value": v.value, "type": v.type} if isinstance(v, TypedValue) else v
            for name, v in variables.items()}


def _raise_for(response: requests.Response, task_id: str | None = None) -> None:
    status = response.status_code
    if status < 400:
        return
    try:
        body = response.json()
    except ValueError:
        body = {}
    error_type = str(body.get("type", "")) if isinstance(body, dict) else ""
    message = str(body.get("message", response.text[:500])) if isinstance(body, dict) else response.text[:500]
    raise _classify(status, error_type, message, task_id)


def _classify(status: int, error_type: str, message: str, task_id: str | None) -> Exception:
    if status >= 500 or status == 0:
        return EngineUnavailable(f"Camunda answered {status} {error_type}: {message[:300]}",
                                 details=f"{status} {error_type}: {message}")
    if task_id is not None and (status == 404 or (status == 400 and _means_lock_gone(message))):
        return LockLost(f"task {task_id}: {message[:300] or status}", details=f"{status} {error_type}: {message}")
    return EngineRejected(status, error_type, message)


def _means_lock_gone(message: str) -> bool:
    lowered = message.lower()
    return any(word in lowered for word in _LOCK_GONE)
