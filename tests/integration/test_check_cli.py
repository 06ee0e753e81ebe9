"""``procos-worker check`` on the real stack: one line per dependency, and the exit code of the first that
failed (3 Camunda, 4 PostgreSQL, 5 Ollama, 6 the model missing, 7 the schema behind, 8 the model registry
refusing a model the settings name or holding options Ollama would refuse).

Each test has a scratch database made by ``init-db`` (the schema and the shipped rows of
procos_ai_models), so the rows it changes are its own.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg.types.json import Jsonb

from procos_testkit.cli import run_cli
from procos_testkit.pg import scratch_database
from procos_worker.settings import Settings

pytestmark = pytest.mark.integration


@pytest.fixture()
def database(settings: Settings, tmp_path: Path) -> Iterator[str]:
    with scratch_database(settings.database.url.get_secret_value()) as url:
        made = run_cli("init-db", cwd=tmp_path, env={"DATABASE_URL": url})
        assert made.returncode == 0, made.stderr
        yield url


def _check(tmp_path: Path, database: str, **env: str) -> tuple[int, dict[str, str]]:
    """The exit code and the lines, by the dependency each names."""
    result = run_cli("check", cwd=tmp_path, env={"DATABASE_URL": database, **env})
    lines = result.stdout.decode().splitlines()
    by_name = {line.split(maxsplit=1)[0]: line.split(maxsplit=1)[1] for line in lines}
    assert len(by_name) == len(lines), lines
    return result.returncode, by_name


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_every_dependency_ok_is_exit_0(database: str, settings: Settings, tmp_path: Path) -> None:
    code, lines = _check(tmp_path, database)
    assert code == 0, lines
    assert list(lines) == ["camunda", "postgresql", "registry", "ollama"]
    assert lines["postgresql"].startswith("ok: schema current")
    # The shipped rows: smollm2:135m and llama3.2:1b.
    assert lines["registry"] == f"ok: OLLAMA_MODEL {settings.ollama.model} allowed; the options of 2 active " \
                                "models are valid"
    assert lines["ollama"] == f"ok: model {settings.ollama.model} present at {settings.ollama.base_url}"


def test_ollama_unreachable_is_exit_5(database: str, tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{_free_port()}"
    code, lines = _check(tmp_path, database, OLLAMA_BASE_URL=url)
    assert code == 5, lines
    assert lines["ollama"].startswith(f"FAILED: Ollama at {url}"), lines["ollama"]
    assert lines["camunda"].startswith("ok:") and lines["registry"].startswith("ok:")


def test_a_model_the_server_lacks_is_exit_6(database: str, settings: Settings, tmp_path: Path) -> None:
    code, lines = _check(tmp_path, database, OLLAMA_MODEL="procos-absent:1b")
    assert code == 6, lines
    assert lines["ollama"].startswith(f"FAILED: model procos-absent:1b not on {settings.ollama.base_url} (has: ")
    assert settings.ollama.model in lines["ollama"]


def test_a_refused_model_and_options_ollama_would_refuse_are_exit_8(
    database: str, settings: Settings, tmp_path: Path,
) -> None:
    with psycopg.connect(database, autocommit=True) as conn:
        conn.execute("UPDATE procos_ai_models SET is_active = false WHERE model_name = %s", (settings.ollama.model,))
        conn.execute("INSERT INTO procos_ai_models (model_name, provider, version, config_data) VALUES "
                     "('procos-typo:1b', 'ollama', '1', %s)", (Jsonb({"options": {"num_ctx": "big"}}),))
    code, lines = _check(tmp_path, database, TASK_TOPIC_DEFAULTS='{"ai-summaries": {"procos.model": "procos-off:1b"}}',
                         REGISTRY_ALLOW_UNREGISTERED="false")
    assert code == 8, lines
    assert lines["registry"] == (
        f"FAILED: model {settings.ollama.model} is disabled in procos_ai_models (set by OLLAMA_MODEL); "
        "model procos-off:1b is not registered in procos_ai_models (set by TASK_TOPIC_DEFAULTS topic "
        "'ai-summaries'); model procos-typo:1b: config_data.options in procos_ai_models: has an option of the "
        "wrong type: num_ctx: Input should be a valid integer")
    # The other lines are still checked and printed.
    assert lines["camunda"].startswith("ok:") and lines["postgresql"].startswith("ok:")


def test_the_registry_is_not_read_when_postgresql_failed(settings: Settings, tmp_path: Path) -> None:
    url = settings.database.url.get_secret_value().replace("5432", str(_free_port()))
    code, lines = _check(tmp_path, url, DATABASE_CONNECT_TIMEOUT_S="2")
    assert code == 4, lines
    assert lines["registry"] == "skipped: PostgreSQL failed"


def test_several_endpoints_get_a_line_each(database: str, settings: Settings, tmp_path: Path) -> None:
    down = f"http://127.0.0.1:{_free_port()}"
    code, lines = _check(tmp_path, database, OLLAMA_BASE_URLS=f"{settings.ollama.base_url},{down}")
    assert code == 5, lines
    assert lines["ollama[1]"] == f"ok: model {settings.ollama.model} present at {settings.ollama.base_url}"
    assert lines["ollama[2]"].startswith(f"FAILED: Ollama at {down}"), lines["ollama[2]"]
    assert "ollama" not in lines
