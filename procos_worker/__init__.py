"""procos-worker: Camunda 7 external tasks answered by Ollama, every prompt and answer kept in PostgreSQL.

The public API for downstream code is the read side of the store and the types it returns. Names are
imported on first use, so that small entry points (the fake Ollama, the proxy, `procos-worker
health`) don't pay for loading the worker's dependencies.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from procos_worker.errors import ProcosError
    from procos_worker.models import StoredContext
    from procos_worker.settings import Settings
    from procos_worker.store.context import ContextStore
    from procos_worker.worker import Worker

__all__ = ["ContextStore", "ProcosError", "Settings", "StoredContext", "Worker"]
__version__ = "0.1.0"

_HOMES = {
    "ContextStore": "procos_worker.store.context",
    "ProcosError": "procos_worker.errors",
    "Settings": "procos_worker.settings",
    "StoredContext": "procos_worker.models",
    "Worker": "procos_worker.worker",
}


def __getattr__(name: str) -> Any:
    if name in _HOMES:
        return getattr(importlib.import_module(_HOMES[name]), name)
    raise AttributeError(f"module 'procos_worker' has no attribute {name!r}")
