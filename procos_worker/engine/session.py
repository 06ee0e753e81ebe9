"""The one keep-alive HTTP session every engine call goes through (the library's calls included).

A pool of ``pool_size`` connections to the engine (the poll thread, the heartbeat and one per task in
flight may call at once), no automatic retries (the worker decides what a failure means), the
configured login on every request, and nothing taken from the environment (``trust_env`` off).
"""

from __future__ import annotations

import requests
from requests.adapters import HTTPAdapter

from procos_worker.engine.auth import engine_auth
from procos_worker.settings import CamundaSettings

__all__ = ["engine_session"]


def engine_session(settings: CamundaSettings, *, pool_size: int) -> requests.Session:
    session = requests.Session()
    adapter = HTTPAdapter(pool_connections=1, pool_maxsize=pool_size, max_retries=0)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    session.auth = engine_auth(settings)
    # Settings are the one source of configuration: no proxy, CA bundle or .netrc from the environment
    # (requests would look them up again on every call).
    session.trust_env = False
    return session
