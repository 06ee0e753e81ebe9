"""The Camunda 7 external-task REST API, named after its calls.

``fetch_and_lock``, ``complete``, ``handle_failure`` and ``handle_bpmn_error`` go through
camunda-external-task-client-python3's ``ExternalTaskClient`` (``engine.library``: per-topic fetch
bodies, its requests sent through our session); it lacks ``extendLock``, ``lock``, ``unlock``, the task
query, the variable-instance calls (sizes before values, see ``engine.variables``) and the
process-instance queries retention needs (running? still in history?), which are added here. Every call
shares one keep-alive ``requests.Session`` (``engine.session``) that carries the login (``engine.auth``).

It sends what it is given: every limit of the engine is checked where outcomes are built
(``procos_worker.outcomes``). A plain value goes as ``{"value": v}`` (the engine infers its type: a
JSON integer becomes an Integer); a ``TypedValue`` goes as ``{"value": v, "type": t}``.

Errors are converted here and nowhere else: connection errors, timeouts,
502/503/504, 408/429 and a 5xx without an engine exception in its body (a proxy's page) ->
``EngineUnavailable``; a 5xx with Camunda's ``{"type": "...Exception"}`` body -> ``EngineRefused`` (the
engine ran the call and its transaction failed); 404 (the task is gone) and the 400s that mean the lock is
no longer ours: another worker's -> ``LockLost``, expired or released (locked by nobody) ->
``LockExpired``; any other 4xx -> ``EngineRejected``. The library raises a bare ``Exception("received
<status> : <type> : <message>")`` for most failures, so the status is read back from that text.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Collection, Mapping, Sequence
from datetime import datetime
from email.utils import parsedate_to_datetime
from typing import Any, TypeVar

import requests

from procos_worker.engine.fetch import FetchOrder, Subscription
from procos_worker.engine.library import LibraryClient
from procos_worker.engine.session import AnswerTooLarge, EngineSession, engine_session, read_capped
from procos_worker.errors import (
    EngineError,
    EngineRefused,
    EngineRejected,
    EngineUnavailable,
    LockExpired,
    LockLost,
)
from procos_worker.models import Task, TypedValue
from procos_worker.settings import CamundaSettings

__all__ = ["EngineClient"]

_T = TypeVar("_T")
_LIBRARY_ERROR = re.compile(r"^received (\d{3})(?: : ([^:]*?))?(?: : (.*))?$", re.DOTALL)
# 400 messages meaning "the lock is not ours any more" (7.24 wording).
_LOCK_GONE = ("lock", "expired", "worker")
# Process instance ids per query (each becomes one SQL IN list in the engine).
_IDS_PER_QUERY = 500
# "... It is locked by worker 'x'." (7.24): 'null' when nobody holds the lock.
_LOCKED_BY = re.compile(r"locked by worker '([^']*)'")
# Statuses of an engine (or a proxy in front of it) that is down, overloaded or too slow: try again later.
_UNREACHABLE = frozenset({0, 408, 429, 502, 503, 504})


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
    def session(self) -> EngineSession:
        return self._session

    def close(self) -> None:
        self._session.close()
        close_auth = getattr(self._session.auth, "close", None)
        if callable(close_auth):
            close_auth()

    # -- the library's calls ---------------------------------------------------------------------

    def fetch_and_lock(self, topics: Sequence[Subscription], *, max_tasks: int,
                       max_answer_bytes: int | None = None) -> list[Task] | None:
        """Long-poll for up to ``max_tasks`` tasks on ``topics`` (each with its lock, variables, filters).
        None when the answer is over ``max_answer_bytes``: it is not read further, and the tasks it
        locked stay locked by this worker id until they are unlocked or their locks expire."""
        try:
            answer = self._converting(lambda: self._client.fetch_subscriptions(topics, max_tasks, max_answer_bytes))
        except AnswerTooLarge:
            return None
        asked = {sub.topic: frozenset(sub.variables) for sub in topics}
        return [Task.from_rest(item, asked.get(str(item.get("topicName")), frozenset())) for item in answer or []]

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

    def lock(self, task_id: str, lock_duration_ms: int) -> None:
        """Lock a task nobody holds (its lock expired or was released) for this worker again."""
        self._post(f"/external-task/{task_id}/lock", {"workerId": self.worker_id, "lockDuration": lock_duration_ms},
                   task_id=task_id)

    def unlock(self, task_id: str, *, timeout_s: float | None = None) -> None:
        """``timeout_s`` shortens CAMUNDA_HTTP_TIMEOUT_S (shutdown has a deadline)."""
        self._post(f"/external-task/{task_id}/unlock", None, task_id=task_id, timeout_s=timeout_s)

    def locked_task_ids(self, *, timeout_s: float | None = None) -> list[str]:
        """Ids of the tasks the engine says this worker id holds (used to sweep at shutdown)."""
        return [task_id for task_id, _left_s in self.locked_tasks(self.worker_id, timeout_s=timeout_s)]

    def locked_tasks(self, worker_id: str, *, timeout_s: float | None = None) -> list[tuple[str, float | None]]:
        """(task id, seconds its lock has left by the engine's own clock) of every task locked by ``worker_id``."""
        def call() -> tuple[Any, str | None]:
            response = self._session.get(f"{self._base_url}/external-task",
                                         params={"workerId": worker_id, "locked": "true"},
                                         timeout=timeout_s or self._timeout_s)
            _raise_for(response)
            return response.json(), response.headers.get("Date")

        items, date = self._converting(call)
        engine_now = _http_date(date)
        return [(str(item["id"]), _seconds_left(item.get("lockExpirationTime"), engine_now)) for item in items]

    def variable_instances(self, process_instance_id: str, names: list[str], *,
                           max_bytes: int) -> list[dict[str, Any]] | None:
        """Every instance of the variables ``names`` in the process instance, all scopes, serialized; Bytes
        values are left out by the engine (``value`` null). None when the answers are over ``max_bytes``
        together: the one that crosses it is not read further (a Json variable is inline and may be huge).

        One query per name: Camunda 7.24's runtime variable query has ``variableName`` but no list of
        names (it ignores ``variableNameIn``, a history-query parameter, and answers every variable of
        the instance)."""
        def call(name: str, left: int) -> bytes | None:
            with self._session.post(f"{self._base_url}/variable-instance", params={"deserializeValues": "false"},
                                    json={"processInstanceIdIn": [process_instance_id], "variableName": name},
                                    timeout=self._timeout_s, stream=True) as response:
                _raise_for(response)
                return _read_capped(response, left)

        rows: list[dict[str, Any]] = []
        left = max_bytes
        for name in names:
            body = self._converting(lambda name=name, left=left: call(name, left))  # type: ignore[misc]
            if body is None:
                return None
            rows += [row for row in json.loads(body) if row.get("name") == name]
            left -= len(body)
        return rows

    def activity_instance_ancestry(self, process_instance_id: str, activity_instance_id: str) -> list[str]:
        """The activity instance ids from ``activity_instance_id`` up to the process instance (its scopes)."""
        def call() -> Any:
            response = self._session.get(f"{self._base_url}/process-instance/{process_instance_id}/activity-instances",
                                         timeout=self._timeout_s)
            _raise_for(response)
            return response.json()

        parents: dict[str, str | None] = {}
        stack = [self._converting(call)]
        while stack:
            node = stack.pop()
            parents[str(node["id"])] = node.get("parentActivityInstanceId")
            stack.extend(node.get("childActivityInstances") or [])
        chain: list[str] = []
        current: str | None = activity_instance_id
        while current is not None and current in parents and current not in chain:
            chain.append(current)
            current = parents[current]
        return chain

    def binary_length(self, variable_instance_id: str, *, up_to: int) -> int:
        """Bytes of a binary variable's value, counted up to ``up_to`` + 1 (then it stops reading). The engine
        streams larger values without a Content-Length, so they are counted, never kept."""
        def call() -> int:
            with self._session.get(f"{self._base_url}/variable-instance/{variable_instance_id}/data",
                                   timeout=self._timeout_s, stream=True) as response:
                _raise_for(response)
                declared = response.headers.get("Content-Length")
                if declared is not None and declared.isdigit():
                    return int(declared)
                counted = 0
                for piece in response.iter_content(chunk_size=1 << 20):
                    counted += len(piece)
                    if counted > up_to:
                        break
                return counted

        return self._converting(call)

    def binary_value(self, variable_instance_id: str, *, max_bytes: int) -> bytes | None:
        """A binary variable's value; None (not read further) when it is over ``max_bytes``."""
        def call() -> bytes | None:
            with self._session.get(f"{self._base_url}/variable-instance/{variable_instance_id}/data",
                                   timeout=self._timeout_s, stream=True) as response:
                _raise_for(response)
                return _read_capped(response, max_bytes)

        return self._converting(call)

    def process_definition_xml(self, definition_id: str) -> str:
        """The BPMN 2.0 XML a process definition was deployed from."""
        def call() -> Any:
            response = self._session.get(f"{self._base_url}/process-definition/{definition_id}/xml",
                                         timeout=self._timeout_s)
            _raise_for(response)
            return response.json()

        return str(self._converting(call)["bpmn20Xml"])

    def calling_activity(self, process_instance_id: str) -> tuple[str, str, str] | None:
        """(process instance, definition id, call activity id) that started ``process_instance_id``, or None."""
        def supers() -> Any:
            response = self._session.get(f"{self._base_url}/process-instance",
                                         params={"subProcessInstance": process_instance_id}, timeout=self._timeout_s)
            _raise_for(response)
            return response.json()

        found = self._converting(supers)
        if not found:
            return None
        parent = found[0]

        def calls() -> Any:
            response = self._session.get(f"{self._base_url}/history/activity-instance",
                                         params={"processInstanceId": parent["id"], "activityType": "callActivity",
                                                 "unfinished": "true"}, timeout=self._timeout_s)
            _raise_for(response)
            return response.json()

        for row in self._converting(calls):
            if row.get("calledProcessInstanceId") == process_instance_id:
                return str(parent["id"]), str(parent["definitionId"]), str(row["activityId"])
        return None

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

    def _post(self, path: str, body: dict[str, Any] | None, *, task_id: str, timeout_s: float | None = None) -> None:
        def call() -> None:
            response = self._session.post(f"{self._base_url}{path}", json=body, timeout=timeout_s or self._timeout_s)
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


def _http_date(value: str | None) -> datetime | None:
    try:
        return parsedate_to_datetime(value) if value else None
    except (TypeError, ValueError):
        return None


def _seconds_left(lock_expiration: Any, engine_now: datetime | None) -> float | None:
    """Seconds until ``lockExpirationTime`` (``2026-11-25T14:07:58.102+0000``), by the engine's clock."""
    if not isinstance(lock_expiration, str) or engine_now is None:
        return None
    try:
        expires = datetime.strptime(lock_expiration, "%Y-%m-%dT%H:%M:%S.%f%z")
    except ValueError:
        return None
    return (expires - engine_now).total_seconds()


def _read_capped(response: requests.Response, max_bytes: int) -> bytes | None:
    return read_capped(response.iter_content(chunk_size=1 << 20), response.headers.get("Content-Length"), max_bytes)


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
    if status in _UNREACHABLE or (status >= 500 and not error_type):
        return EngineUnavailable(f"Camunda answered {status} {error_type}: {message[:300]}",
                                 details=f"{status} {error_type}: {message}")
    if status >= 500:
        return EngineRefused(f"Camunda answered {status} {error_type}: {message[:300]}",
                             details=f"{status} {error_type}: {message}")
    if task_id is not None and (status == 404 or (status == 400 and _means_lock_gone(message))):
        holder = _LOCKED_BY.search(message)
        if status == 400 and ("expired" in message.lower() or (holder is not None and holder.group(1) == "null")):
            return LockExpired(f"task {task_id}: {message[:300]}", details=f"{status} {error_type}: {message}")
        return LockLost(f"task {task_id}: {message[:300] or status}", details=f"{status} {error_type}: {message}")
    return EngineRejected(status, error_type, message)


def _means_lock_gone(message: str) -> bool:
    lowered = message.lower()
    return any(word in lowered for word in _LOCK_GONE)
