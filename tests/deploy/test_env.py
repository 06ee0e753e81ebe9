"""The settings the worker reads, .env.example and the worker's compose environment are one set."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest

from procos_worker.settings import Settings, env_var_names
from tests.deploy.deploykit import COMPOSE_BLOCK, WORKER_BLOCK, EnvEntry, referenced_names

pytestmark = pytest.mark.deploy

# Settings whose compose value differs from the worker's own default on purpose: inside compose the
# services are reached by their service names, and the worker's HTTP port listens beyond the loopback.
COMPOSE_SPECIFIC = {"CAMUNDA_BASE_URL", "OLLAMA_BASE_URL", "DATABASE_URL", "OPS_HTTP_HOST"}


def _block(entries: list[EnvEntry], title: str) -> list[EnvEntry]:
    return [entry for entry in entries if entry.block == title]


@pytest.fixture
def clean_environ(monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    """No worker setting from the calling shell leaks into a Settings built by a test."""
    for name in env_var_names():
        monkeypatch.delenv(name, raising=False)
    yield monkeypatch


def _settings_from(monkeypatch: pytest.MonkeyPatch, values: dict[str, str]) -> Settings:
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    return Settings(_env_file=None)


def _comparable(settings: Settings) -> dict[str, Any]:
    dumped = settings.model_dump()
    dumped["worker"].pop("id")
    dumped["database"]["url"] = settings.database.url.get_secret_value()
    if settings.camunda.password is not None:
        dumped["camunda"]["password"] = settings.camunda.password.get_secret_value()
    return dumped


def test_env_example_has_only_known_blocks_and_no_duplicates(env_entries: list[EnvEntry]) -> None:
    assert {entry.block for entry in env_entries} == {WORKER_BLOCK, COMPOSE_BLOCK}
    keys = [entry.key for entry in env_entries]
    assert len(keys) == len(set(keys)), "duplicate keys"


def test_env_example_lists_exactly_the_settings_the_worker_reads(env_entries: list[EnvEntry]) -> None:
    worker_keys = {entry.key for entry in _block(env_entries, WORKER_BLOCK)}
    assert worker_keys == env_var_names()


def test_every_setting_has_a_comment_naming_its_default(env_entries: list[EnvEntry]) -> None:
    for entry in _block(env_entries, WORKER_BLOCK):
        assert entry.comment, f"{entry.key} (line {entry.line}) has no comment above it"
    without_default = [
        entry.key
        for entry in _block(env_entries, WORKER_BLOCK)
        if not re.search(r"\b(default|empty)\b", entry.comment, re.IGNORECASE)
    ]
    assert without_default == []


def test_compose_only_variables_cannot_be_mistaken_for_settings(env_entries: list[EnvEntry]) -> None:
    prefixes = tuple(f"{section.upper()}_" for section in Settings.model_fields)
    compose_keys = [entry.key for entry in _block(env_entries, COMPOSE_BLOCK)]
    assert compose_keys
    assert [key for key in compose_keys if key.startswith(prefixes)] == []


def test_compose_and_env_example_refer_to_the_same_variables(
    compose_raw: dict[str, Any], env_entries: list[EnvEntry]
) -> None:
    used = referenced_names(compose_raw)
    documented = {entry.key for entry in env_entries}
    assert used - documented == set(), "compose reads variables .env.example does not list"
    compose_only = {entry.key for entry in _block(env_entries, COMPOSE_BLOCK)}
    assert compose_only - used == set(), "compose-only variables that compose never reads"


def test_worker_service_environment_is_exactly_the_settings(compose_raw: dict[str, Any]) -> None:
    environment = compose_raw["services"]["worker"]["environment"]
    assert isinstance(environment, dict), "use the mapping form of environment"
    assert set(environment) == env_var_names()
    # Each setting is passed through from .env (the worker's own default when empty or unset).
    for name, value in environment.items():
        assert str(value).startswith("${" + name + ":-"), f"{name}: {value!r}"


def test_worker_id_is_left_empty(env_example: dict[str, str]) -> None:
    assert env_example["WORKER_ID"] == ""


def test_env_example_values_are_the_worker_defaults(
    env_entries: list[EnvEntry], clean_environ: pytest.MonkeyPatch
) -> None:
    """.env.example documents the defaults: loading its worker block changes no setting."""
    values = {entry.key: entry.value for entry in _block(env_entries, WORKER_BLOCK)}
    for name in COMPOSE_SPECIFIC:
        assert values[name] == "", f"{name} must be empty in .env.example (compose fills the service name)"
    defaults = _comparable(Settings(_env_file=None))
    assert _comparable(_settings_from(clean_environ, values)) == defaults


def test_the_worker_accepts_the_environment_compose_gives_it(
    services: dict[str, dict[str, Any]], env_example: dict[str, str], clean_environ: pytest.MonkeyPatch
) -> None:
    """Settings built from the worker container's environment (as compose resolves it from a .env
    copied from .env.example) is valid, reaches the services by name and has a per-process id."""
    environment = {name: str(value) for name, value in services["worker"]["environment"].items()}
    first = _settings_from(clean_environ, environment)
    second = _settings_from(clean_environ, environment)
    assert first.worker.id and second.worker.id
    assert first.worker.id != second.worker.id, "replicas would share a worker id"
    assert first.camunda.base_url == "http://camunda:8080/engine-rest"
    assert first.ollama.base_url == "http://ollama:11434"
    assert first.ollama.model == env_example["OLLAMA_MODEL"]
    user, password, db = (env_example[k] for k in ("POSTGRES_WORKER_USER", "POSTGRES_WORKER_PASSWORD", "POSTGRES_DB"))
    assert first.database.url.get_secret_value() == f"postgresql://{user}:{password}@postgres:5432/{db}"
    assert first.camunda.username is None and first.camunda.password is None
    assert first.ollama.keep_alive is None
    assert first.worker.topics == ["ai-query"]
    assert (first.ops.http_host, first.ops.http_port) == ("0.0.0.0", 9464), "Prometheus reaches every replica"
