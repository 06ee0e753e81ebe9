"""procos-worker: Camunda 7 external tasks answered by Ollama, every prompt and answer kept in PostgreSQL.

The public API for downstream code is the read side of the store and the types it returns.
"""

from procos_worker.errors import ProcosError
from procos_worker.models import StoredContext
from procos_worker.settings import Settings
from procos_worker.store import ContextStore
from procos_worker.worker import Worker

__all__ = ["ContextStore", "ProcosError", "Settings", "StoredContext", "Worker"]
__version__ = "0.1.0"
