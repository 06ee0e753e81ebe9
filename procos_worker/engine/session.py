"""The one keep-alive HTTP session every engine call goes through (the library's calls included).

A pool of ``pool_size`` connections to the engine (the poll thread, the heartbeat and one per task in
flight may call at once), no automatic retries (the worker decides what a failure means), the
configured login on every request, and nothing taken from the environment (``trust_env`` off).

``EngineSession.post_json`` sends the calls every task makes (fetchAndLock, complete, failure, BPMN
error) straight on the session's own urllib3 pool: requests' preparation of each call (environment,
cookies, hooks, settings merged) costs twice the CPU of the call itself (1.8 ms against 0.9 ms a call
on the local engine, ``procos_bench``). Its answer, ``JsonAnswer``, has what the library and the client
read of a response, and it can stop reading an answer that grows over a limit (``AnswerTooLarge``).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import requests
import urllib3
from requests.adapters import HTTPAdapter
from requests.auth import AuthBase
from requests.structures import CaseInsensitiveDict

from procos_worker.engine.auth import ClientCredentials, engine_auth
from procos_worker.settings import CamundaSettings

__all__ = ["AnswerTooLarge", "EngineSession", "JsonAnswer", "engine_session", "read_capped"]

_UNREAD = object()
_CHUNK_BYTES = 1 << 16


class AnswerTooLarge(Exception):  # a signal inside the engine package (EngineClient returns None), no outcome
    """The answer grew over the caller's limit: it was not read further and its connection was closed."""


@dataclass(slots=True)
class JsonAnswer:
    """An engine answer read whole: what ``requests.Response`` offers the library and ``engine.client``."""

    status_code: int
    headers: Mapping[str, str]
    content: bytes
    url: str
    reason: str = ""
    _json: Any = field(default=_UNREAD, repr=False)

    @property
    def ok(self) -> bool:
        return self.status_code < 400

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", errors="replace")

    def json(self) -> Any:
        """The body parsed once (the library reads fetchAndLock's answer twice); ``ValueError`` if not JSON."""
        if self._json is _UNREAD:
            self._json = json.loads(self.content)
        return self._json

    def raise_for_status(self) -> None:
        if self.status_code >= 400:
            raise requests.HTTPError(f"{self.status_code} {self.reason} for url: {self.url}",
                                     response=self)  # type: ignore[arg-type]  # read like a Response


class EngineSession(requests.Session):
    def __init__(self, pool_size: int, auth: AuthBase | None) -> None:
        super().__init__()
        self._adapter = HTTPAdapter(pool_connections=1, pool_maxsize=pool_size, max_retries=0)
        self.mount("http://", self._adapter)
        self.mount("https://", self._adapter)
        self.auth = auth
        self._pools: dict[tuple[str, str], urllib3.HTTPConnectionPool] = {}
        # Settings are the one source of configuration: no proxy, CA bundle or .netrc from the environment
        # (requests would look them up again on every call).
        self.trust_env = False

    def post_json(self, url: str, body: Any, *, timeout: float, max_bytes: int | None = None) -> JsonAnswer:
        """POST ``body`` as JSON on the session's pool, with its login; a 401 under client credentials is
        sent once more with a fresh token. Raises requests' own ``ConnectionError`` / ``Timeout`` like
        ``Session.post``, and ``AnswerTooLarge`` when the answer is over ``max_bytes``."""
        try:
            data = json.dumps(body, allow_nan=False).encode("utf-8")
        except ValueError as exc:
            raise requests.exceptions.InvalidJSONError(exc) from exc
        login = self._login()
        answer = self._post(url, data, login, timeout, max_bytes)
        if answer.status_code == 401 and isinstance(self.auth, ClientCredentials) and login is not None:
            answer = self._post(url, data, self.auth.renewed_after_401(login), timeout, max_bytes)
        return answer

    def _pool_for(self, url: str) -> urllib3.HTTPConnectionPool:
        """The adapter's own pool for ``url``'s host, picked with the TLS settings requests would use (so
        both paths share its keep-alive connections)."""
        probe = requests.PreparedRequest()
        probe.url = url
        host, pool_kwargs = self._adapter.build_connection_pool_key_attributes(probe, verify=True, cert=None)
        pool: urllib3.HTTPConnectionPool = self._adapter.poolmanager.connection_from_host(**host,
                                                                                         pool_kwargs=pool_kwargs)
        return pool

    def _login(self) -> str | None:
        """The Authorization header the session's auth object would set (basic, bearer, or a current token)."""
        if not isinstance(self.auth, AuthBase):  # engine_auth gives an AuthBase or None
            return None
        probe = requests.PreparedRequest()
        probe.headers = CaseInsensitiveDict()
        probe.hooks = {"response": []}
        self.auth(probe)
        return probe.headers.get("Authorization")

    def _post(self, url: str, data: bytes, login: str | None, timeout: float, max_bytes: int | None) -> JsonAnswer:
        parts = urlsplit(url)
        pool = self._pools.get((parts.scheme, parts.netloc))
        if pool is None:
            pool = self._pools[(parts.scheme, parts.netloc)] = self._pool_for(url)
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if login is not None:
            headers["Authorization"] = login
        path = parts.path + (f"?{parts.query}" if parts.query else "")
        with _as_requests_errors():
            response = pool.urlopen("POST", path, body=data, headers=headers, retries=False, redirect=False,
                                    timeout=urllib3.Timeout(connect=timeout, read=timeout),
                                    preload_content=False, assert_same_host=False)
        try:
            with _as_requests_errors():
                content = _read(response, max_bytes)
        finally:
            response.release_conn()
        return JsonAnswer(response.status, response.headers, content, url, response.reason or "")


@contextmanager
def _as_requests_errors() -> Iterator[None]:
    """urllib3's exceptions as requests' own (what ``EngineClient`` converts), the way its adapter maps them."""
    try:
        yield
    except urllib3.exceptions.NewConnectionError as exc:  # a subclass of the connect timeout, but refused
        raise requests.ConnectionError(exc) from exc
    except urllib3.exceptions.TimeoutError as exc:
        raise requests.Timeout(exc) from exc
    except urllib3.exceptions.HTTPError as exc:
        raise requests.ConnectionError(exc) from exc


def _read(response: urllib3.BaseHTTPResponse, max_bytes: int | None) -> bytes:
    if max_bytes is None:
        return response.read()
    declared = response.headers.get("Content-Length")
    body = read_capped(response.stream(_CHUNK_BYTES), declared, max_bytes)
    if body is None:
        response.close()  # the rest is never read: the connection is dropped
        size = f"{int(declared):,} bytes, over" if declared is not None and declared.isdigit() else "over"
        raise AnswerTooLarge(f"the answer is {size} {max_bytes:,} bytes")
    return body


def read_capped(chunks: Iterable[bytes], content_length: str | None, max_bytes: int) -> bytes | None:
    """The body from ``chunks``, or None as soon as it is known to be over ``max_bytes`` (from its
    Content-Length, else counted as it streams by): the rest is never read."""
    if content_length is not None and content_length.isdigit() and int(content_length) > max_bytes:
        return None
    body = bytearray()
    for piece in chunks:
        body += piece
        if len(body) > max_bytes:
            return None
    return bytes(body)


def engine_session(settings: CamundaSettings, *, pool_size: int) -> EngineSession:
    return EngineSession(pool_size, engine_auth(settings))
