"""Readiness: can this worker do its job right now? (``/readyz``)

Ready means all of: the Camunda REST API answers, PostgreSQL answers and holds the schema version
this worker expects (``migrations.schema_status(...).current``), and Ollama answers and has the
configured model. Each check has ``OPS_READINESS_TIMEOUT_S``; the three run side by side, so an
answer never takes much longer than one timeout. The probes use clients of their own (with that
timeout), never the worker's, so a probe can't hold up a task. With several Ollama endpoints
(OLLAMA_BASE_URLS) one that serves the model is enough (the worker routes around the others); they
are asked in turn until one does, so a down endpoint before it adds one timeout.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from procos_worker.ai.endpoints import full_model_name
from procos_worker.ai.llm import LlmClient
from procos_worker.engine.client import EngineClient
from procos_worker.errors import ProcosError
from procos_worker.ops.logs import secrets_of
from procos_worker.settings import Settings
from procos_worker.store.context import ContextStore

__all__ = ["Check", "Readiness"]


@dataclass(frozen=True, slots=True)
class Check:
    ok: bool
    detail: str


class Readiness:
    """The three dependency checks, on clients opened once and reused."""

    def __init__(self, settings: Settings) -> None:
        timeout_s = settings.ops.readiness_timeout_s
        w = settings.worker
        self._model = settings.ollama.model
        self._engine = EngineClient(settings.camunda.model_copy(update={"http_timeout_s": timeout_s}), w.id,
                                    async_response_timeout_ms=0, pool_size=1)
        self._store = ContextStore(settings.database.model_copy(update={"connect_timeout_s": timeout_s,
                                                                        "pool_max_size": 1}))
        ollama = settings.ollama.model_copy(update={
            "probe_timeout_s": timeout_s, "connect_timeout_s": min(timeout_s, settings.ollama.connect_timeout_s)})
        self._llms = [LlmClient(ollama, url) for url in settings.ollama.endpoints]
        self._pool = ThreadPoolExecutor(max_workers=3, thread_name_prefix="procos-readyz")
        # The answer goes out on the network: no configured secret may appear in an error text.
        self._secrets = sorted(secrets_of(settings), key=len, reverse=True)
        self._lock = threading.Lock()

    def open(self) -> None:
        self._store.open()

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._store.close()
        self._engine.close()

    def check(self) -> dict[str, Check]:
        """camunda, postgresql, ollama -> Check; every one must be ok to be ready."""
        probes: dict[str, Callable[[], Check]] = {
            "camunda": self._camunda, "postgresql": self._postgresql, "ollama": self._ollama}
        with self._lock:  # one round at a time: concurrent probes would only pile up on a slow service
            futures = {name: self._pool.submit(_guarded, probe) for name, probe in probes.items()}
            return {name: self._masked(future.result()) for name, future in futures.items()}

    def _masked(self, check: Check) -> Check:
        detail = check.detail
        for secret in self._secrets:
            detail = detail.replace(secret, "***")
        return Check(check.ok, detail)

    def _camunda(self) -> Check:
        return Check(True, f"engines {self._engine.engine_name()}")

    def _postgresql(self) -> Check:
        status = self._store.schema_status()
        return Check(status.current, status.describe())

    def _ollama(self) -> Check:
        several = len(self._llms) > 1
        wanted = full_model_name(self._model)
        failed: list[str] = []
        for llm in self._llms:
            where = f" at {llm.base_url}" if several else ""
            try:
                models = llm.ping()
            except ProcosError as exc:
                if not several:
                    raise
                failed.append(exc.message)
                continue
            if wanted in {full_model_name(m) for m in models}:
                return Check(True, f"model {self._model} present{where}")
            failed.append(f"model {self._model} missing{where} (has: {', '.join(models) or 'none'})")
        return Check(False, "; ".join(failed))


def _guarded(probe: Callable[[], Check]) -> Check:
    try:
        return probe()
    except ProcosError as exc:
        return Check(False, exc.message)
