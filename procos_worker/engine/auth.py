"""How the worker logs in to the Camunda REST API: basic auth, a static bearer token, or an OAuth2
client-credentials token that is fetched, cached, refreshed before it expires, and fetched again once
when the engine answers 401 (a token revoked or rotated early).

Each is a ``requests`` auth object set on the engine session, so every call carries it, the library's
included. The 401 retry is a response hook (the pattern of ``requests.auth.HTTPDigestAuth``): the
request is sent once more with a fresh token, and only that second answer reaches the caller.

Token endpoint failures are converted here: unreachable or 5xx -> ``EngineUnavailable`` (the poll loop
backs off); a refusal (wrong client id or secret, unknown scope) -> ``EngineAuthFailed`` with the
endpoint's own ``error`` and ``error_description``.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import requests
from requests.auth import AuthBase, HTTPBasicAuth

from procos_worker.errors import EngineAuthFailed, EngineUnavailable
from procos_worker.settings import CamundaSettings

__all__ = ["BearerToken", "ClientCredentials", "engine_auth"]


def engine_auth(settings: CamundaSettings) -> AuthBase | None:
    """The auth object for the configured way of logging in (Settings allows at most one)."""
    if settings.username is not None and settings.password is not None:
        return HTTPBasicAuth(settings.username, settings.password.get_secret_value())
    if settings.token is not None:
        return BearerToken(settings.token.get_secret_value())
    if settings.oauth_token_url and settings.oauth_client_id and settings.oauth_client_secret:
        return ClientCredentials(settings.oauth_token_url, settings.oauth_client_id,
                                 settings.oauth_client_secret.get_secret_value(), scope=settings.oauth_scope,
                                 refresh_margin_s=settings.oauth_refresh_margin_s,
                                 timeout_s=settings.http_timeout_s)
    return None


class BearerToken(AuthBase):
    """A token given in the settings: sent as is; a 401 reaches the caller (there is nothing to refresh)."""

    def __init__(self, token: str) -> None:
        self._header = f"Bearer {token}"

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        request.headers["Authorization"] = self._header
        return request


class ClientCredentials(AuthBase):
    """OAuth2 client-credentials grant (RFC 6749 section 4.4), client authenticated with HTTP basic.

    Thread-safe: one token is shared by every thread; one thread refreshes while the others wait for it.
    ``fetched`` counts token requests, ``refreshed_on_401`` those a 401 caused, ``retried_401`` the calls
    sent again after a 401 (for logs and tests).
    """

    def __init__(self, token_url: str, client_id: str, client_secret: str, *, scope: str | None = None,
                 refresh_margin_s: float = 30.0, timeout_s: float = 30.0) -> None:
        self._token_url = token_url
        self._client_id = client_id
        self._client = HTTPBasicAuth(client_id, client_secret)
        self._scope = scope
        self._margin_s = refresh_margin_s
        self._timeout_s = timeout_s
        self._lock = threading.Lock()
        self._token: str | None = None
        self._refresh_at = 0.0
        self._http = requests.Session()  # never the engine session: that one carries this auth
        self.fetched = 0
        self.refreshed_on_401 = 0
        self.retried_401 = 0

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        request.headers["Authorization"] = f"Bearer {self.token()}"
        request.register_hook("response", self._retry_on_401)  # type: ignore[no-untyped-call]
        return request

    def token(self) -> str:
        """The current token, fetched first when there is none or it is about to expire."""
        with self._lock:
            if self._token is None or time.monotonic() >= self._refresh_at:
                self._fetch()
            assert self._token is not None
            return self._token

    def close(self) -> None:
        self._http.close()

    def _retry_on_401(self, response: requests.Response, **kwargs: Any) -> requests.Response:
        if response.status_code != 401:
            return response
        login = self.renewed_after_401(str(response.request.headers.get("Authorization", "")))
        response.content  # noqa: B018 - read the body so the connection goes back to the pool
        response.close()
        retry = response.request.copy()
        retry.headers["Authorization"] = login
        # The adapter's send runs no hooks: a second 401 goes back to the caller as it is.
        assert response.connection is not None
        second: requests.Response = response.connection.send(retry, **kwargs)
        second.history.append(response)
        second.request = retry
        return second

    def renewed_after_401(self, sent: str) -> str:
        """The Authorization header to send again after the engine answered 401 to ``sent``: a new token,
        unless another thread's retry already replaced the one that was refused."""
        with self._lock:
            if sent.removeprefix("Bearer ") == self._token:
                self._fetch()
                self.refreshed_on_401 += 1
            self.retried_401 += 1
            return f"Bearer {self._token}"

    def _fetch(self) -> None:
        """Ask the token endpoint for a new token (the caller holds ``_lock``)."""
        data = {"grant_type": "client_credentials"}
        if self._scope:
            data["scope"] = self._scope
        started = time.monotonic()
        try:
            response = self._http.post(self._token_url, data=data, auth=self._client, timeout=self._timeout_s,
                                       headers={"Accept": "application/json"})
        except requests.RequestException as exc:
            raise EngineUnavailable(f"token endpoint {self._token_url} can't be reached", details=repr(exc)) from exc
        body = _json_object(response)
        if response.status_code >= 500:
            raise EngineUnavailable(f"token endpoint {self._token_url} answered {response.status_code}",
                                    details=response.text[:2000])
        if response.status_code != 200 or not isinstance(body.get("access_token"), str):
            error = str(body.get("error") or f"HTTP {response.status_code}")
            description = str(body.get("error_description") or "")
            raise EngineAuthFailed(
                f"token endpoint {self._token_url} refused client '{self._client_id}': {error}"
                + (f" ({description})" if description else ""),
                details=f"{response.status_code} {response.text[:2000]}")
        self._token = body["access_token"]
        self.fetched += 1
        lifetime = body.get("expires_in")
        if isinstance(lifetime, int | float) and lifetime > 0:
            self._refresh_at = started + lifetime - min(self._margin_s, lifetime / 2)
        else:
            self._refresh_at = float("inf")  # no expiry given: keep it until the engine says 401


def _json_object(response: requests.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}
