"""Fixtures shared by every test: the one Settings object the suite runs with."""

from __future__ import annotations

import pytest

from procos_worker.settings import Settings


@pytest.fixture(scope="session")
def settings() -> Settings:
    """Settings from the environment / .env; the defaults point at the local stack (scripts/stack)."""
    return Settings()
