"""Fixtures of the deployment checks: .env.example and docker-compose.yml, read once per session."""

from __future__ import annotations

from typing import Any

import pytest

from tests.deploy.deploykit import COMPOSE_FILE, ENV_EXAMPLE, EnvEntry, interpolate_tree, load_yaml, parse_env_file


@pytest.fixture(scope="session")
def env_entries() -> list[EnvEntry]:
    return parse_env_file(ENV_EXAMPLE)


@pytest.fixture(scope="session")
def env_example(env_entries: list[EnvEntry]) -> dict[str, str]:
    """.env.example as the environment compose interpolates with (as after ``cp .env.example .env``)."""
    return {entry.key: entry.value for entry in env_entries}


@pytest.fixture(scope="session")
def compose_text() -> str:
    return COMPOSE_FILE.read_text(encoding="utf-8")


@pytest.fixture(scope="session")
def compose_raw() -> dict[str, Any]:
    document = load_yaml(COMPOSE_FILE)
    assert isinstance(document, dict)
    return document


@pytest.fixture(scope="session")
def compose(compose_raw: dict[str, Any], env_example: dict[str, str]) -> dict[str, Any]:
    """docker-compose.yml interpolated with .env.example."""
    resolved = interpolate_tree(compose_raw, env_example)
    assert isinstance(resolved, dict)
    return resolved


@pytest.fixture(scope="session")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    found = compose["services"]
    assert isinstance(found, dict)
    return found
