"""``procos-worker run``: the worker, with what an operator needs around it.

- the HTTP port (``ops.http``: /metrics, /healthz, /readyz) unless OPS_HTTP_PORT is 0;
- Camunda's indexes (migration 0040) checked, and built concurrently if missing, in the background;
- the scheduled purge, when RETENTION_* asks for one.
The worker itself (``procos_worker.worker``) knows nothing of these.
"""

from __future__ import annotations

import threading
from importlib import metadata

import structlog

from procos_worker import metrics
from procos_worker.errors import ProcosError
from procos_worker.ops.http import OpsServer
from procos_worker.ops.probes import Readiness
from procos_worker.retention import PurgeSchedule
from procos_worker.settings import Settings
from procos_worker.store.context import ContextStore
from procos_worker.worker import Worker

__all__ = ["run", "tune_camunda"]


def run(settings: Settings) -> int:
    """Serve tasks until SIGTERM/SIGINT; returns the exit status."""
    metrics.declare(settings.worker.topics, _version())
    worker = Worker(settings)
    server = None
    if settings.ops.http_port:
        server = OpsServer(settings, worker.health_record, Readiness(settings))
        server.start()
    threading.Thread(target=_tune_in_background, args=(settings,), name="procos-tune", daemon=True).start()
    schedule = PurgeSchedule(settings)
    schedule.start()
    try:
        return worker.run()
    finally:
        schedule.stop()
        if server is not None:
            server.stop()


def _version() -> str:
    try:
        return metadata.version("procos-worker")
    except metadata.PackageNotFoundError:  # run from a checkout that was never installed
        return "unknown"


def tune_camunda(store: ContextStore) -> bool:
    """Camunda's indexes (migration 0040), built concurrently; False when PostgreSQL refused."""
    log = structlog.get_logger("procos_worker.ops.daemon")
    try:
        steps = store.tune_camunda()
    except ProcosError as exc:
        log.error("camunda.tuning_failed", error=str(exc))
        return False
    log.info("camunda.tuned", steps=steps)
    return True


def _tune_in_background(settings: Settings) -> None:
    with ContextStore(settings.database) as store:
        tune_camunda(store)
