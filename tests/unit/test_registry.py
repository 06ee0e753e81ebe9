"""The model registry's decisions over rows of procos_ai_models (the rows' SQL is tested on the real
PostgreSQL in tests/integration/test_model_registry.py)."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from procos_worker.ai.registry import ModelRegistry, StatsRefresher, canonical_model_name
from procos_worker.errors import ModelRefused, StoreUnavailable
from procos_worker.models import ModelRow
from procos_worker.settings import RegistrySettings


def _row(name: str, *, active: bool = True, options: Any = None, version: str = "1") -> ModelRow:
    data = {"description": "d"} if options is None else {"options": options}
    return ModelRow(name=name, provider="ollama", version=version, active=active, config_data=data)


class Table:
    """Stands in for store.registry.ModelTable.load: returns the rows, counts the reads."""

    def __init__(self, *rows: ModelRow) -> None:
        self.rows = list(rows)
        self.reads = 0

    def load(self) -> list[ModelRow]:
        self.reads += 1
        return list(self.rows)


def _registry(table: Table, **settings: Any) -> ModelRegistry:
    return ModelRegistry(RegistrySettings(**settings), table.load)


def test_a_registered_model_gives_its_default_options() -> None:
    registry = _registry(Table(_row("smollm2:135m", options={"num_ctx": 4096})))
    assert registry.options_for("smollm2:135m") == {"num_ctx": 4096}


def test_a_disabled_model_is_refused_with_the_registry_message() -> None:
    registry = _registry(Table(_row("big:70b", active=False, options={"num_ctx": 8192})))
    with pytest.raises(ModelRefused) as info:
        registry.options_for("big:70b")
    assert info.value.message == "model big:70b is disabled in procos_ai_models"
    assert "is_active = true" in info.value.details


def test_one_active_version_is_enough_and_the_newest_active_one_counts() -> None:
    # Rows come newest first (store.registry orders them so).
    table = Table(_row("m:1b", active=False, options={"seed": 3}, version="3"),
                  _row("m:1b", options={"seed": 2}, version="2"),
                  _row("m:1b", options={"seed": 1}, version="1"))
    assert _registry(table).options_for("m:1b") == {"seed": 2}


def test_unregistered_models_are_served_unless_the_setting_says_no() -> None:
    assert _registry(Table()).options_for("free:1b") == {}
    with pytest.raises(ModelRefused) as info:
        _registry(Table(), allow_unregistered=False).options_for("free:1b")
    assert info.value.message == "model free:1b is not registered in procos_ai_models"


def test_a_name_without_tag_is_latest_as_ollama_spells_it() -> None:
    assert canonical_model_name("llama3.2") == "llama3.2:latest"
    assert canonical_model_name("host:5000/library/llama3.2") == "host:5000/library/llama3.2:latest"
    assert canonical_model_name("llama3.2:1b") == "llama3.2:1b"
    registry = _registry(Table(_row("mistral", options={"top_k": 5})))
    assert registry.options_for("mistral:latest") == {"top_k": 5}


def test_config_data_without_options_means_none() -> None:
    assert _registry(Table(_row("m:1b"))).options_for("m:1b") == {}


def test_options_that_are_not_an_object_are_refused() -> None:
    with pytest.raises(ModelRefused, match=r"config_data\.options .* not a JSON object"):
        _registry(Table(_row("m:1b", options=[1, 2]))).options_for("m:1b")


def test_an_option_name_ollama_does_not_know_is_refused_unless_it_is_an_extra_name() -> None:
    table = Table(_row("m:1b", options={"num_ctx": 2048, "num_ctxx": 4096}))
    with pytest.raises(ModelRefused) as info:
        _registry(table).options_for("m:1b")
    assert info.value.message == (
        "model m:1b: config_data.options in procos_ai_models: unknown Ollama option 'num_ctxx' (did you mean "
        "'num_ctx'?): Ollama would ignore it and keep its default (an option of a newer Ollama: add its name "
        "to OLLAMA_EXTRA_OPTION_NAMES)")
    extra = ModelRegistry(RegistrySettings(), table.load, option_names=frozenset({"num_ctx", "num_ctxx"}))
    assert extra.options_for("m:1b") == {"num_ctx": 2048, "num_ctxx": 4096}


def test_an_option_of_the_wrong_type_is_refused_before_ollama_is_asked() -> None:
    with pytest.raises(ModelRefused) as info:
        _registry(Table(_row("m:1b", options={"num_ctx": "big", "temperature": 0.2}))).options_for("m:1b")
    assert info.value.message == ("model m:1b: config_data.options in procos_ai_models: has an option of the "
                                  "wrong type: num_ctx: Input should be a valid integer")
    assert "'num_ctx': 'big'" in info.value.details


def test_the_table_is_read_once_per_cache_period() -> None:
    now = [100.0]
    table = Table(_row("m:1b", options={"seed": 1}))
    registry = ModelRegistry(RegistrySettings(cache_s=30), table.load, clock=lambda: now[0])
    for _ in range(50):
        registry.options_for("m:1b")
    assert table.reads == 1
    table.rows = [_row("m:1b", active=False)]
    now[0] += 29.9
    registry.options_for("m:1b")  # still the cached row
    now[0] += 0.2
    with pytest.raises(ModelRefused):
        registry.options_for("m:1b")
    assert table.reads == 2


def test_an_unreachable_database_is_passed_on_for_the_gate_to_wait() -> None:
    def down() -> list[ModelRow]:
        raise StoreUnavailable("PostgreSQL unavailable")

    with pytest.raises(StoreUnavailable):
        ModelRegistry(RegistrySettings(), down).options_for("m:1b")


def test_a_failed_stats_refresh_is_logged_and_tried_again_later() -> None:
    calls: list[str] = []

    def refresh() -> int | None:
        calls.append("x")
        if len(calls) == 1:
            raise StoreUnavailable("PostgreSQL unavailable")
        return 2

    refresher = StatsRefresher(60, refresh)
    assert refresher.refresh_once() is None
    assert refresher.refresh_once() == 2
    assert len(calls) == 2


def test_the_refresher_calls_refresh_each_interval_until_stopped() -> None:
    calls = threading.Semaphore(0)

    def refresh() -> int:
        calls.release()
        return 1

    refresher = StatsRefresher(0.05, refresh)
    refresher.start()
    try:
        assert calls.acquire(timeout=30) and calls.acquire(timeout=30)
    finally:
        refresher.stop()
    while calls.acquire(blocking=False):
        pass
    assert not calls.acquire(timeout=0.3), "refreshed after stop()"


def test_a_zero_interval_means_never() -> None:
    called: list[int] = []
    refresher = StatsRefresher(0, lambda: called.append(1) or 1)
    refresher.start()
    refresher.stop()
    assert called == []
