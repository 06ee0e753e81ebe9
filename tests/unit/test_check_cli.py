"""``procos-worker check``'s registry line where the real stack can't put it on demand: the table unreadable
after PostgreSQL passed, and a topic default that names a bad property (the real-stack cases are in
``tests/integration/test_check_cli.py``)."""

from __future__ import annotations

from typing import Any

import pytest

from procos_worker.errors import StoreUnavailable
from procos_worker.models import ModelRow
from procos_worker.ops import check_cli
from procos_worker.settings import OllamaSettings, Settings, TaskSettings
from procos_worker.store.context import ContextStore
from procos_worker.store.registry import ModelTable

ROWS = [ModelRow(name="smollm2:135m", provider="ollama", version="1", active=True, config_data={})]
STORE: Any = object()  # never reached: ModelTable.load is replaced


def _settings(topic_defaults: dict[str, Any] | None = None) -> Settings:
    return Settings(ollama=OllamaSettings(model="smollm2:135m"), task=TaskSettings(topic_defaults=topic_defaults or {}))


def _load(rows: list[ModelRow] | Exception) -> Any:
    def load(_table: ModelTable) -> list[ModelRow]:
        if isinstance(rows, Exception):
            raise rows
        return rows

    return load


def _registry(monkeypatch: pytest.MonkeyPatch, settings: Settings, rows: list[ModelRow] | Exception) -> Any:
    monkeypatch.setattr(ModelTable, "load", _load(rows))
    store: ContextStore = STORE
    return check_cli._registry(settings, store)


def test_a_registry_that_allows_every_named_model(monkeypatch: pytest.MonkeyPatch) -> None:
    line = _registry(monkeypatch, _settings({"ai-x": {"procos.model": "other:1b"}}), ROWS)
    assert line == ("registry", 0, "ok: OLLAMA_MODEL smollm2:135m allowed; the options of 1 active model are valid")


def test_a_table_unreadable_after_postgresql_passed_is_exit_4(monkeypatch: pytest.MonkeyPatch) -> None:
    line = _registry(monkeypatch, _settings(), StoreUnavailable("PostgreSQL unavailable: connection lost"))
    assert line == ("registry", 4, "FAILED: PostgreSQL unavailable: connection lost")


def test_a_bad_topic_default_is_a_settings_error_exit_2(monkeypatch: pytest.MonkeyPatch) -> None:
    line = _registry(monkeypatch, _settings({"ai-x": {"procos.modle": "other:1b"}}), ROWS)
    assert line[:2] == ("registry", 2)
    assert line[2].startswith("FAILED: TASK_TOPIC_DEFAULTS topic 'ai-x': unknown property procos.modle; did you "
                              "mean procos.model?")
