"""Schema versions on the real PostgreSQL: a fresh database built by sql/init-db.sql and a database
of the first release upgraded by sql/migrations/ end with the same schema, and init-db is idempotent."""

from __future__ import annotations

import re
import shutil
import subprocess
import threading
from pathlib import Path
from typing import Any

import psycopg
import pytest

from procos_testkit.pg import scratch_database
from procos_worker.settings import Settings
from procos_worker.store import migrations

pytestmark = pytest.mark.integration

FIRST_RELEASE_SQL = Path(__file__).resolve().parents[1] / "fixtures" / "init-db-0.1.0.sql"


def _pg_dump() -> str:
    # The client must match the 15 server; Debian keeps each version's tools apart.
    for candidate in ("/usr/lib/postgresql/15/bin/pg_dump", shutil.which("pg_dump")):
        if candidate and Path(candidate).exists():
            return candidate
    raise AssertionError("pg_dump not found (Debian package postgresql-client-15)")


def _schema(url: str) -> str:
    dump = subprocess.run([_pg_dump(), "--schema-only", "--no-owner", "--no-privileges", url],
                          capture_output=True, text=True, check=True, timeout=120).stdout
    # Comments and SET lines carry nothing about the schema; the database name appears in none.
    # \restrict / \unrestrict carry a random key per dump.
    lines = [line for line in dump.splitlines()
             if line.strip() and not line.startswith(("--", "SET ", "SELECT ", "\\restrict", "\\unrestrict"))]
    return "\n".join(lines)


def _models(url: str) -> list[tuple[Any, ...]]:
    with _connect(url) as conn:
        return conn.execute("SELECT model_name, config_data FROM procos_ai_models "
                            "ORDER BY model_name, provider, version").fetchall()


def _connect(url: str) -> psycopg.Connection[Any]:
    return psycopg.connect(url, autocommit=True)


def test_fresh_and_upgraded_databases_have_the_same_schema(settings: Settings) -> None:
    base = settings.database.url.get_secret_value()
    with scratch_database(base) as fresh, scratch_database(base) as old:
        with _connect(fresh) as conn:
            assert migrations.upgrade(conn) == ["created the schema from init-db.sql"]
            assert migrations.schema_status(conn).current
        with _connect(old) as conn:
            conn.execute(FIRST_RELEASE_SQL.read_text(encoding="utf-8").encode())
            before = migrations.schema_status(conn)
            assert before.has_schema and not before.current
            assert before.missing == [m.version for m in migrations.known_migrations()]
            steps = migrations.upgrade(conn)
            assert steps == [f"applied migration {m.version:04d}_{m.name}" for m in migrations.known_migrations()]
            assert migrations.schema_status(conn).current
        assert _schema(fresh) == _schema(old)
        # Data migrations too: the default model rows end the same (config_data.options, num_ctx 4096).
        assert _models(fresh) == _models(old)
        assert ("smollm2:135m", {"description": "SmolLM2-135M-Instruct, the local stack and test model",
                                 "options": {"num_ctx": 4096}}) in _models(fresh)


def test_upgrade_twice_changes_nothing_and_init_db_sql_reruns(settings: Settings) -> None:
    base = settings.database.url.get_secret_value()
    with scratch_database(base) as url, _connect(url) as conn:
        migrations.upgrade(conn)
        first = _schema(url)
        assert migrations.upgrade(conn) == []
        conn.execute(migrations.init_db_sql().encode())  # what compose's init script or psql would do again
        assert _schema(url) == first
        rows = conn.execute("SELECT version, name FROM procos_schema_migrations ORDER BY version").fetchall()
        assert rows == [(m.version, m.name) for m in migrations.known_migrations()]


def test_concurrent_upgrades_apply_each_migration_once(settings: Settings) -> None:
    base = settings.database.url.get_secret_value()
    with scratch_database(base) as url:
        with _connect(url) as conn:
            conn.execute(FIRST_RELEASE_SQL.read_text(encoding="utf-8").encode())
        results: list[list[str]] = []
        errors: list[BaseException] = []

        def run() -> None:
            try:
                with _connect(url) as conn:
                    results.append(migrations.upgrade(conn))
            except BaseException as exc:  # noqa: BLE001 - collected and asserted below
                errors.append(exc)

        threads = [threading.Thread(target=run) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert errors == []
        applied = [step for steps in results for step in steps]
        assert sorted(applied) == sorted(f"applied migration {m.version:04d}_{m.name}"
                                         for m in migrations.known_migrations())


def test_check_reports_a_database_whose_schema_is_behind(settings: Settings, tmp_path: Path) -> None:
    base = settings.database.url.get_secret_value()
    with scratch_database(base) as url:
        with _connect(url) as conn:
            conn.execute(FIRST_RELEASE_SQL.read_text(encoding="utf-8").encode())
        env = {"DATABASE_URL": url, "PATH": "/usr/bin:/bin"}
        behind = _cli("check", env, tmp_path)
        assert behind.returncode == 7, behind.stdout + behind.stderr
        assert re.search(r"postgresql\s+FAILED: schema behind: migrations 0001", behind.stdout), behind.stdout
        upgraded = _cli("init-db", env, tmp_path)
        assert upgraded.returncode == 0, upgraded.stderr
        assert "applied migration 0001_bpmn_step" in upgraded.stderr
        again = _cli("check", env, tmp_path)
        assert re.search(r"postgresql\s+ok: schema current", again.stdout), again.stdout


def _cli(command: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    import sys

    return subprocess.run([sys.executable, "-m", "procos_worker", command], capture_output=True, text=True,
                          env={**env, "LOG_FORMAT": "json"}, cwd=cwd, timeout=120, check=False)
