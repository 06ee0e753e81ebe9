"""The workers' least-privilege database login, made the way compose makes it: a private PostgreSQL 15
cluster (initdb, like the postgres image's first start) runs deploy/postgres/05-procos-roles.sh and then
sql/init-db.sql as the owner; the worker's login can do what the worker does and nothing else."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
from pydantic import SecretStr

from procos_worker.models import LlmResult, Task, TaskInputs
from procos_worker.settings import DatabaseSettings
from procos_worker.store.context import ContextStore
from tests.deploy.deploykit import INIT_SQL, REPO

pytestmark = pytest.mark.deploy

PG_BIN = Path("/usr/lib/postgresql/15/bin")
ROLES_SCRIPT = REPO / "deploy" / "postgres" / "05-procos-roles.sh"
GRANTS_SQL = REPO / "sql" / "grants.sql"
OLD_INIT_SQL = REPO / "tests" / "fixtures" / "init-db-0.1.0.sql"
WORKER, WORKER_PW = "procos_worker", "worker-pw-123"


def _as_postgres(*cmd: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    runner = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else ["sudo", "-n", "-u", "postgres"]
    done = subprocess.run([*runner, "env", *(f"{k}={v}" for k, v in (env or {}).items()), *cmd],
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, f"{cmd[0]} failed: {done.stdout}\n{done.stderr}"
    return done


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Cluster:
    directory: Path
    port: int

    def psql(self, database: str, *args: str, env: dict[str, str] | None = None) -> str:
        return _as_postgres(str(PG_BIN / "psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", str(self.directory),
                            "-p", str(self.port), "-d", database, *args, env=env).stdout

    def url(self, database: str, user: str = "postgres", password: str | None = None) -> str:
        auth = f"{user}:{password}" if password else user
        host = f"127.0.0.1:{self.port}" if password else ""
        query = "" if password else f"?host={self.directory}&port={self.port}"
        return f"postgresql://{auth}@{host}/{database}{query}"

    def new_database(self, run_roles_script: bool = True, init_sql: Path = INIT_SQL) -> str:
        """A database made as the postgres image makes one: roles script, then the schema file, as the owner."""
        name = f"procos_{uuid.uuid4().hex[:6]}"
        self.psql("postgres", "-c", f"CREATE DATABASE {name}")
        if run_roles_script:
            env = {"POSTGRES_USER": "postgres", "POSTGRES_DB": name, "POSTGRES_WORKER_USER": WORKER,
                   "POSTGRES_WORKER_PASSWORD": WORKER_PW, "PGHOST": str(self.directory), "PGPORT": str(self.port)}
            _as_postgres("sh", str(ROLES_SCRIPT), env=env)
        self.psql(name, "-f", str(init_sql))
        if run_roles_script:
            self.psql(name, "-f", str(GRANTS_SQL))
        return name


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    assert (PG_BIN / "initdb").exists(), "PostgreSQL 15 binaries missing: scripts/stack up postgres installs them"
    # Not under pytest's tmp dir: pytest makes that 0700 (root only) at every session start.
    directory = Path(tempfile.mkdtemp(prefix="procos-pg-roles-"))
    shutil.chown(directory, "postgres")
    os.chmod(directory, 0o700)
    data = directory / "data"
    port = _free_port()
    _as_postgres(str(PG_BIN / "initdb"), "-D", str(data), "-U", "postgres", "--auth-local=trust",
                 "--auth-host=scram-sha-256", "-E", "UTF8")
    _as_postgres(str(PG_BIN / "pg_ctl"), "-D", str(data), "-w", "-l", str(directory / "log"), "-o",
                 f"-p {port} -k {directory} -c listen_addresses=127.0.0.1 -c fsync=off", "start")
    try:
        yield Cluster(directory, port)
    finally:
        _as_postgres(str(PG_BIN / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop")
        shutil.rmtree(directory, ignore_errors=True)


def _task() -> Task:
    return Task(id=f"t-{uuid.uuid4().hex[:8]}", topic="ai-query", worker_id="w", process_instance_id="pi-1",
                activity_id="ask-ai")


def _answer() -> LlmResult:
    return LlmResult(content="an answer", model="smollm2:135m", done_reason="stop", prompt_eval_count=3,
                     eval_count=2, total_duration_ns=1, load_duration_ns=0, prompt_eval_duration_ns=1,
                     eval_duration_ns=1, wall_s=0.01)


def _fails(url: str, sql: str) -> str:
    with psycopg.connect(url, autocommit=True) as conn, pytest.raises(psycopg.errors.InsufficientPrivilege) as info:
        conn.execute(sql.encode())
    return str(info.value)


def test_the_worker_login_does_the_workers_job(cluster: Cluster) -> None:
    name = cluster.new_database()
    url = cluster.url(name, WORKER, WORKER_PW)
    with ContextStore(DatabaseSettings(url=SecretStr(url))) as store:
        task = _task()
        input_id, stored = store.save_input(task, TaskInputs(query="q"), [{"role": "user", "content": "q"}],
                                            model="m", options={})
        assert stored is None
        output = store.save_output(task, _answer(), input_id)
        assert store.get(output.id) is not None
        assert store.conversation("pi-1")
        assert store.schema_status().current  # what `procos-worker check` reads


def test_the_worker_login_can_do_nothing_else(cluster: Cluster) -> None:
    name = cluster.new_database()
    cluster.psql(name, "-c", "CREATE TABLE act_ru_variable_like (id int)")  # the owner's other tables: Camunda's
    url = cluster.url(name, WORKER, WORKER_PW)
    assert "act_ru_variable_like" in _fails(url, "SELECT * FROM act_ru_variable_like")
    assert "schema public" in _fails(url, "CREATE TABLE mine (id int)")
    assert "procos_ai_context" in _fails(url, "DROP TABLE procos_ai_context")
    assert "procos_ai_context" in _fails(url, "ALTER TABLE procos_ai_context ADD COLUMN x int")
    assert "procos_schema_migrations" in _fails(url, "INSERT INTO procos_schema_migrations VALUES (99, 'x')")
    with psycopg.connect(url) as conn:
        role = conn.execute("SELECT rolsuper, rolcreaterole, rolcreatedb FROM pg_roles WHERE rolname = current_user")
        assert role.fetchone() == (False, False, False)


def test_every_procos_table_is_granted_and_init_db_stays_idempotent(cluster: Cluster) -> None:
    name = cluster.new_database()
    owner = cluster.url(name)
    with ContextStore(DatabaseSettings(url=SecretStr(owner))) as store:
        assert store.upgrade_schema() == []  # init-db as the owner: nothing to do on a fresh database
    with psycopg.connect(owner) as conn:
        tables = [r[0] for r in conn.execute(
            "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = 'public' AND c.relkind IN ('r', 'v') AND c.relname LIKE 'procos%'").fetchall()]
        assert "procos_ai_context" in tables and "procos_ai_models" in tables
        for table in tables:
            wanted = "SELECT" if table == "procos_schema_migrations" else "INSERT"
            granted = conn.execute("SELECT has_table_privilege('procos_dml', %s, %s)", (table, wanted)).fetchone()
            assert granted == (True,), f"procos_dml lacks {wanted} on {table}: a migration forgot the grant block"


def test_an_older_database_gets_the_grants_from_init_db(cluster: Cluster) -> None:
    """A database made by the first release's init-db.sql, before the role existed; then `init-db` as owner."""
    name = cluster.new_database(run_roles_script=False, init_sql=OLD_INIT_SQL)
    env = {"POSTGRES_USER": "postgres", "POSTGRES_DB": name, "POSTGRES_WORKER_USER": WORKER,
           "POSTGRES_WORKER_PASSWORD": WORKER_PW, "PGHOST": str(cluster.directory), "PGPORT": str(cluster.port)}
    _as_postgres("sh", str(ROLES_SCRIPT), env=env)
    url = cluster.url(name, WORKER, WORKER_PW)
    assert "procos_ai_context" in _fails(url, "SELECT count(*) FROM procos_ai_context")
    with ContextStore(DatabaseSettings(url=SecretStr(cluster.url(name)))) as store:
        steps = store.upgrade_schema()
    assert "applied migration 0001_bpmn_step" in steps
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT count(*) FROM procos_ai_context").fetchone() == (0,)



def test_the_worker_login_leaves_camunda_tuning_to_the_owner(cluster: Cluster) -> None:
    """A worker starting with the DML-only login checks Camunda's indexes and leaves the building to
    `init-db` with the owner's login (only a table's owner may index it)."""
    name = cluster.new_database()
    for table in ("act_ru_variable", "act_hi_varinst"):  # the columns the indexes use, owned like Camunda's
        cluster.psql(name, "-c", f"CREATE TABLE {table} (id_ varchar(64), name_ varchar(255), text_ varchar(4000))")
    worker = ContextStore(DatabaseSettings(url=SecretStr(cluster.url(name, WORKER, WORKER_PW))))
    owner = ContextStore(DatabaseSettings(url=SecretStr(cluster.url(name))))
    with worker, owner:
        steps = worker.tune_camunda()
        assert [s for s in steps if s.startswith("not the owner of act_")] == [
            "not the owner of act_ru_variable: idx_act_ru_variable_ai_context_id not built (run procos-worker "
            "init-db with the owner's login)",
            "not the owner of act_hi_varinst: idx_act_hi_varinst_ai_context_id not built (run procos-worker "
            "init-db with the owner's login)"]
        assert steps[-1] == "optimize_camunda_for_ai() not called"
        assert [s for s in owner.tune_camunda() if "built concurrently" in s] != []
        again = worker.tune_camunda()
        assert "idx_act_ru_variable_ai_context_id present" in again
        assert again[-1].startswith("optimize_camunda_for_ai(): ")
