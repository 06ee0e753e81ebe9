"""``procos-worker check``: one line per dependency, and the exit code of the first that failed.

Camunda (3), PostgreSQL and the schema version (4, 7), the model registry (8: procos_ai_models refuses a
model the settings name, ``OLLAMA_MODEL`` or a topic's ``procos.model``, or an active row holds options
that every task of that model would be refused for), each Ollama endpoint (5) and the model on it (6).
The registry is read only once PostgreSQL passed.
"""

from __future__ import annotations

from procos_worker.ai.endpoints import full_model_name
from procos_worker.ai.llm import LlmClient
from procos_worker.ai.registry import ModelRegistry, canonical_model_name
from procos_worker.ai.taskconfig import TaskConfigs
from procos_worker.engine.client import EngineClient
from procos_worker.errors import EngineError, ModelRefused, ProcosError, TaskConfigError
from procos_worker.settings import Settings
from procos_worker.store.context import ContextStore
from procos_worker.store.registry import ModelTable

__all__ = ["EXIT_CAMUNDA", "EXIT_MODEL", "EXIT_OLLAMA", "EXIT_POSTGRES", "EXIT_REGISTRY", "EXIT_SCHEMA", "check"]

EXIT_CAMUNDA, EXIT_POSTGRES, EXIT_OLLAMA, EXIT_MODEL, EXIT_SCHEMA, EXIT_REGISTRY = 3, 4, 5, 6, 7, 8
_EXIT_CONFIG = 2

Line = tuple[str, int, str]
"""(what was checked, exit code or 0, the message printed after the name)."""


def check(settings: Settings) -> int:
    lines = [_camunda(settings)]
    with ContextStore(settings.database) as store:
        lines.append(_postgresql(store))
        passed = lines[-1][1] == 0
        lines.append(_registry(settings, store) if passed else ("registry", 0, "skipped: PostgreSQL failed"))
    lines += _ollama(settings)
    for name, _code, message in lines:
        print(f"{name:<11} {message}")
    return next((code for _name, code, _message in lines if code), 0)


def _camunda(settings: Settings) -> Line:
    engine = EngineClient(settings.camunda, settings.worker.id, async_response_timeout_ms=0, pool_size=1)
    try:
        return "camunda", 0, f"ok: engines {engine.engine_name()} at {settings.camunda.base_url}"
    except EngineError as exc:
        return "camunda", EXIT_CAMUNDA, f"FAILED: {exc}"
    finally:
        engine.close()


def _postgresql(store: ContextStore) -> Line:
    try:
        status = store.schema_status()
    except ProcosError as exc:
        return "postgresql", EXIT_POSTGRES, f"FAILED: {exc}"
    if status.current:
        return "postgresql", 0, f"ok: {status.describe()}"
    return "postgresql", EXIT_SCHEMA, f"FAILED: {status.describe()}"


def _registry(settings: Settings, store: ContextStore) -> Line:
    """Every model the settings name is allowed, and every active row's options would be sent."""
    try:
        rows = ModelTable(store, settings.ollama.provider).load()
        registry = ModelRegistry(settings.registry, lambda: rows, option_names=settings.ollama.option_names)
        named = _models_named(settings, TaskConfigs(settings, registry))
    except TaskConfigError as exc:
        return "registry", _EXIT_CONFIG, f"FAILED: {exc.message}"
    except ProcosError as exc:
        return "registry", EXIT_POSTGRES, f"FAILED: {exc}"
    active = list(dict.fromkeys(canonical_model_name(row.name) for row in rows if row.active))
    problems: list[str] = []
    for model, source in [*named.items(), *((name, "") for name in active if name not in named)]:
        try:
            registry.options_for(model)
        except ModelRefused as exc:
            problems.append(f"{exc.message} (set by {source})" if source else exc.message)
    if problems:
        return "registry", EXIT_REGISTRY, "FAILED: " + "; ".join(problems)
    models = f"{len(active)} active model" + ("" if len(active) == 1 else "s")
    return "registry", 0, f"ok: OLLAMA_MODEL {settings.ollama.model} allowed; the options of {models} are valid"


def _models_named(settings: Settings, configs: TaskConfigs) -> dict[str, str]:
    """The models the settings name (canonical name -> the layer that set it), ``OLLAMA_MODEL`` first."""
    named = {canonical_model_name(settings.ollama.model): "OLLAMA_MODEL"}
    for topic in settings.task.topic_defaults:
        config = configs.topic_config(topic)
        named.setdefault(canonical_model_name(config.model), config.model_source)
    return named


def _ollama(settings: Settings) -> list[Line]:
    """One line per Ollama endpoint: reachable (probe timeouts) and serving OLLAMA_MODEL."""
    endpoints = settings.ollama.endpoints
    wanted = full_model_name(settings.ollama.model)
    lines: list[Line] = []
    for n, url in enumerate(endpoints, start=1):
        label = "ollama" if len(endpoints) == 1 else f"ollama[{n}]"
        try:
            models = LlmClient(settings.ollama, url).ping()
        except ProcosError as exc:
            lines.append((label, EXIT_OLLAMA, f"FAILED: {exc}"))
            continue
        if wanted in {full_model_name(m) for m in models}:
            lines.append((label, 0, f"ok: model {settings.ollama.model} present at {url}"))
        else:
            lines.append((label, EXIT_MODEL, f"FAILED: model {settings.ollama.model} not on {url} "
                                             f"(has: {', '.join(models) or 'none'})"))
    return lines
