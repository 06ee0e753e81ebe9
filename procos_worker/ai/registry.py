"""The model registry: procos_ai_models decides which models tasks may use and their default options,
and its ``performance_stats`` are kept current from the stored rows.

- A model whose rows all have ``is_active = false`` is refused: ``ModelRefused`` (an incident)
  "model X is disabled in procos_ai_models".
- A model without a row is served unless ``REGISTRY_ALLOW_UNREGISTERED=false``.
- ``config_data.options`` of the model's row (the newest active one, if the model has several
  versions) are its default Ollama options: over ``OLLAMA_OPTIONS``, under the topic's and the task's.
  An option name Ollama does not know there is ``ModelRefused`` too.
- ``performance_stats.chars_per_token_prompt`` of that row is what the context window's estimate
  starts from when a conversation has no figures of its own (``ai.window``).
- The table is read at most once per ``REGISTRY_CACHE_S`` per worker process, not per task.
- ``StatsRefresher`` asks the store every ``REGISTRY_STATS_INTERVAL_S`` to recompute
  ``performance_stats`` from procos_ai_context; the store lets one worker of the fleet do it per
  interval (an advisory lock and the time of the last refresh), so no row is updated per task.

The SQL is in ``store.registry``; this module gets it as callables (ai/ does not import store/).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import structlog

from procos_worker.errors import ModelRefused, ProcosError
from procos_worker.models import ModelRow
from procos_worker.settings import OLLAMA_OPTION_NAMES, RegistrySettings, option_problem

__all__ = ["ModelRegistry", "StatsRefresher", "canonical_model_name"]


def canonical_model_name(name: str) -> str:
    """Ollama's own spelling: a name without a tag means ``:latest``."""
    return name if ":" in name.rsplit("/", 1)[-1] else f"{name}:latest"


@dataclass(frozen=True, slots=True)
class _Table:
    """One read of procos_ai_models: the rows by model name (newest first), and what is wrong with the
    options of each model whose newest active row has options Ollama would refuse."""

    rows: dict[str, list[ModelRow]]
    problems: dict[str, str]


class ModelRegistry:
    """Which models may be used, and their default options (a cached read of procos_ai_models)."""

    def __init__(self, settings: RegistrySettings, load: Callable[[], list[ModelRow]],
                 *, option_names: frozenset[str] = OLLAMA_OPTION_NAMES,
                 clock: Callable[[], float] = time.monotonic) -> None:
        """``option_names``: the names ``config_data.options`` may use (``OllamaSettings.option_names``)."""
        self._settings = settings
        self._option_names = option_names
        self._load = load
        self._clock = clock
        self._lock = threading.Lock()
        self._table: _Table | None = None
        self._loaded_at = 0.0

    def options_for(self, model: str) -> Mapping[str, Any]:
        """The model's default options; ``ModelRefused`` if the registry does not allow it."""
        table = self._snapshot()
        name = canonical_model_name(model)
        rows = table.rows.get(name, [])
        if not rows:
            if self._settings.allow_unregistered:
                return {}
            raise ModelRefused(
                f"model {model} is not registered in procos_ai_models",
                details=f"REGISTRY_ALLOW_UNREGISTERED is false and procos_ai_models has no row for {model}: "
                        "insert one, or use a registered model (procos.model, TASK_TOPIC_DEFAULTS, OLLAMA_MODEL)",
            )
        active = [row for row in rows if row.active]
        if not active:
            raise ModelRefused(
                f"model {model} is disabled in procos_ai_models",
                details=f"every row of {model} in procos_ai_models has is_active = false; enable one "
                        f"(UPDATE procos_ai_models SET is_active = true WHERE model_name = '{model}') "
                        "or choose another model (procos.model, TASK_TOPIC_DEFAULTS, OLLAMA_MODEL)",
            )
        problem = table.problems.get(name)
        if problem:
            raise ModelRefused(f"model {model}: {problem}",
                               details=f"config_data of {model}: {dict(active[0].config_data)!r}")
        options: Mapping[str, Any] = active[0].config_data.get("options") or {}
        return options

    def chars_per_token(self, model: str) -> float | None:
        """The model's measured characters per prompt token (``performance_stats``), if it has one."""
        rows = [row for row in self._snapshot().rows.get(canonical_model_name(model), []) if row.active]
        return rows[0].chars_per_token if rows else None

    def _snapshot(self) -> _Table:
        # One reader at a time: tasks arriving together share one read instead of each making their own.
        with self._lock:
            now = self._clock()
            if self._table is None or now - self._loaded_at >= self._settings.cache_s:
                by_name: dict[str, list[ModelRow]] = {}
                for row in self._load():  # newest first (store.registry orders them)
                    by_name.setdefault(canonical_model_name(row.name), []).append(row)
                # Checked once per read of the table, not per task.
                problems = {name: problem for name, rows in by_name.items()
                            if (problem := self._options_problem(rows))}
                self._table, self._loaded_at = _Table(by_name, problems), now
            return self._table

    def _options_problem(self, rows: list[ModelRow]) -> str | None:
        """What is wrong with the options of the newest active row, if any."""
        active = [row for row in rows if row.active]
        if not active:
            return None
        options = active[0].config_data.get("options") or {}
        if not isinstance(options, dict):
            return "config_data.options in procos_ai_models is not a JSON object"
        problem = option_problem(options, self._option_names)
        return None if problem is None else f"config_data.options in procos_ai_models: {problem}"


class StatsRefresher:
    """A thread that calls ``refresh`` every ``interval_s`` (``refresh`` returns how many models it
    updated, or None when another worker refreshed recently)."""

    def __init__(self, interval_s: float, refresh: Callable[[], int | None]) -> None:
        self._interval_s = interval_s
        self._refresh = refresh
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._main, name="procos-model-stats", daemon=True)
        self._log = structlog.get_logger("procos_worker.ai.registry")

    def start(self) -> None:
        if self._interval_s > 0:
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)

    def refresh_once(self) -> int | None:
        try:
            updated = self._refresh()
        except ProcosError as exc:  # the database is down or rejects the query: try again next interval
            self._log.warning("registry.stats_failed", error=exc.message)
            return None
        if updated is not None:
            self._log.info("registry.stats_refreshed", models=updated)
        return updated

    def _main(self) -> None:
        while not self._stop.wait(self._interval_s):
            self.refresh_once()
