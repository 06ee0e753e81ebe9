"""How the engine client turns REST failures into the project's errors (no engine needed: these are
the exact exceptions and bodies camunda-external-task-client-python3 and Camunda 7.24 produce)."""

from __future__ import annotations

import pytest
import requests

from procos_worker.engine.client import EngineClient
from procos_worker.engine.fetch import Subscription
from procos_worker.errors import EngineRefused, EngineRejected, EngineUnavailable, LockExpired, LockLost
from procos_worker.settings import CamundaSettings


def _client() -> EngineClient:
    return EngineClient(CamundaSettings(base_url="http://127.0.0.1:9"), "w", async_response_timeout_ms=0)


def _raise(exc: BaseException) -> None:
    raise exc


@pytest.mark.parametrize(
    ("raised", "task_id", "expected"),
    [
        (Exception("received 404 : RestException : External task with id x does not exist"), "x", LockLost),
        (Exception("received 400 : BadUserRequestException : External Task x cannot be extended by worker 'w'. "
                   "It is locked by worker 'other'."), "x", LockLost),
        # Nobody else holds it (expired, or unlocked): lock it again, the run goes on.
        (Exception("received 400 : BadUserRequestException : Cannot extend a lock that expired"), "x", LockExpired),
        (Exception("received 400 : RestException : The lock of the External Task x cannot be extended by worker "
                   "'w''. It is locked by worker 'null'."), "x", LockExpired),
        # A 500 with an engine exception: the engine ran the call and failed (not "unreachable").
        (Exception("received 500 : ProcessEnginePersistenceException : An exception occurred in the persistence"
                   " layer"), "x", EngineRefused),
        (Exception("received 500 : ProcessEngineException : Unknown method used in expression"), "x", EngineRefused),
        # Unreachable, overloaded or a proxy's page: wait and try again.
        (Exception("received 500"), "x", EngineUnavailable),
        (Exception("received 502"), "x", EngineUnavailable),
        (Exception("received 503 : : Service Unavailable"), "x", EngineUnavailable),
        (Exception("received 504"), "x", EngineUnavailable),
        (Exception("received 429"), "x", EngineUnavailable),
        (Exception("received 408"), "x", EngineUnavailable),
        (Exception("received 401"), None, EngineRejected),
        (Exception("received 403 : AuthorizationException : not allowed"), "x", EngineRejected),
        (Exception("received 400 : InvalidRequestException : bad topic"), None, EngineRejected),
        (requests.ConnectionError("refused"), None, EngineUnavailable),
        (requests.ReadTimeout("slow"), "x", EngineUnavailable),
    ],
)
def test_library_and_http_errors_are_classified(raised: BaseException, task_id: str | None,
                                                expected: type[Exception]) -> None:
    with pytest.raises(expected):
        _client()._converting(lambda: _raise(raised), task_id=task_id)


def test_unknown_exceptions_are_not_swallowed() -> None:
    with pytest.raises(ZeroDivisionError):
        _client()._converting(lambda: _raise(ZeroDivisionError()))


def test_unreachable_engine_is_engine_unavailable() -> None:
    client = _client()
    with pytest.raises(EngineUnavailable) as info:
        client.fetch_and_lock([Subscription("t", 1000, ("query",))], max_tasks=1)
    assert "127.0.0.1:9" in info.value.message
