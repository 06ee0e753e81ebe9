"""Smoke tests of the local stack itself (scripts/stack up): Camunda 7.24.0, its basic-auth twin, PostgreSQL 15.

They talk to the services with plain ``requests`` and ``psycopg`` so that a failure here points at the
stack, not at the worker. A service that is not running fails the test with its name.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
import requests

from procos_worker.settings import Settings

pytestmark = pytest.mark.integration

# scripts/stack's "camunda-auth" service: same engine, basic auth on, H2 in memory, user demo/demo.
AUTH_ENGINE_URL = "http://127.0.0.1:8081/engine-rest"
AUTH_USER = ("demo", "demo")
TIMEOUT_S = 30
HINT = "start the local stack with: scripts/stack up"

BPMN = """<?xml version="1.0" encoding="UTF-8"?>
<bpmn:definitions xmlns:bpmn="http://www.omg.org/spec/BPMN/20100524/MODEL"
                  xmlns:camunda="http://camunda.org/schema/1.0/bpmn"
                  id="defs_{key}" targetNamespace="http://procos.example/smoke">
  <bpmn:process id="{key}" isExecutable="true">
    <bpmn:startEvent id="start"/>
    <bpmn:sequenceFlow id="f1" sourceRef="start" targetRef="ask"/>
    <bpmn:serviceTask id="ask" camunda:type="external" camunda:topic="{topic}"/>
    <bpmn:sequenceFlow id="f2" sourceRef="ask" targetRef="end"/>
    <bpmn:endEvent id="end"/>
  </bpmn:process>
</bpmn:definitions>
"""


def _get(url: str, **kwargs: Any) -> requests.Response:
    try:
        return requests.get(url, timeout=TIMEOUT_S, **kwargs)
    except requests.ConnectionError as exc:
        pytest.fail(f"Camunda engine not reachable at {url} ({exc}); {HINT}")


@pytest.fixture(scope="module")
def engine(settings: Settings) -> str:
    """Base URL of the plain engine, checked to answer."""
    base = settings.camunda.base_url.rstrip("/")
    _get(f"{base}/engine").raise_for_status()
    return base


@pytest.fixture()
def pg(settings: Settings) -> Iterator[psycopg.Connection[Any]]:
    try:
        conn = psycopg.connect(settings.database.url.get_secret_value(), connect_timeout=5, autocommit=True)
    except psycopg.OperationalError as exc:
        pytest.fail(f"PostgreSQL not reachable ({str(exc).strip()}); {HINT}")
    with conn:
        yield conn


def test_engine_answers_with_the_default_engine_and_version(engine: str) -> None:
    assert _get(f"{engine}/engine").json() == [{"name": "default"}]
    assert _get(f"{engine}/version").json()["version"] == "7.24.0"


def test_external_task_deploys_fetches_and_completes(engine: str, pg: psycopg.Connection[Any]) -> None:
    run = uuid.uuid4().hex[:12]
    key, topic, worker = f"smoke_{run}", f"smoke-{run}", f"smoke-worker-{run}"
    # No historyTimeToLive in the BPMN: the engine's default (P1D) must let it deploy.
    deployed = requests.post(
        f"{engine}/deployment/create",
        data={"deployment-name": key, "enable-duplicate-filtering": "false"},
        files={"data": (f"{key}.bpmn", BPMN.format(key=key, topic=topic), "application/xml")},
        timeout=TIMEOUT_S,
    )
    assert deployed.status_code == 200, deployed.text
    deployment_id = deployed.json()["id"]
    try:
        started = requests.post(
            f"{engine}/process-definition/key/{key}/start", json={"businessKey": run}, timeout=TIMEOUT_S
        )
        assert started.status_code == 200, started.text
        instance_id = started.json()["id"]

        # The engine keeps its state in the same PostgreSQL database as the worker.
        row = pg.execute("SELECT topic_name_ FROM act_ru_ext_task WHERE proc_inst_id_ = %s", (instance_id,)).fetchone()
        assert row == (topic,)

        locked = requests.post(
            f"{engine}/external-task/fetchAndLock",
            json={
                "workerId": worker,
                "maxTasks": 5,
                "asyncResponseTimeout": 10_000,
                "topics": [{"topicName": topic, "lockDuration": 60_000}],
            },
            timeout=TIMEOUT_S,
        )
        assert locked.status_code == 200, locked.text
        tasks = locked.json()
        got = [(t["processInstanceId"], t["topicName"], t["workerId"]) for t in tasks]
        assert got == [(instance_id, topic, worker)]

        done = requests.post(
            f"{engine}/external-task/{tasks[0]['id']}/complete",
            json={"workerId": worker, "variables": {"answered": {"value": True, "type": "Boolean"}}},
            timeout=TIMEOUT_S,
        )
        assert done.status_code == 204, done.text

        history = _get(f"{engine}/history/process-instance/{instance_id}").json()
        assert history["state"] == "COMPLETED"
        answered = _get(f"{engine}/history/variable-instance", params={"processInstanceId": instance_id}).json()
        assert [(v["name"], v["value"]) for v in answered] == [("answered", True)]
    finally:
        requests.delete(f"{engine}/deployment/{deployment_id}", params={"cascade": "true"}, timeout=TIMEOUT_S)


def test_postgres_has_the_extensions_and_procos_can_use_them(pg: psycopg.Connection[Any]) -> None:
    available = dict(
        pg.execute(
            "SELECT name, bool_or(trusted) FROM pg_available_extension_versions"
            " WHERE name IN ('uuid-ossp', 'pg_trgm') GROUP BY name"
        ).fetchall()
    )
    # Trusted extensions: the database owner may create them without being superuser.
    assert available == {"uuid-ossp": True, "pg_trgm": True}

    role = pg.execute(
        "SELECT current_user, rolsuper, has_database_privilege(current_user, current_database(), 'CREATE')"
        " FROM pg_roles WHERE rolname = current_user"
    ).fetchone()
    assert role == ("procos", False, True)

    installed = {name for (name,) in pg.execute("SELECT extname FROM pg_extension").fetchall()}
    assert {"uuid-ossp", "pg_trgm"} <= installed
    used = pg.execute("SELECT uuid_generate_v4(), similarity('procos worker', 'procos workers')").fetchone()
    assert used is not None
    generated, similarity = used
    assert isinstance(generated, uuid.UUID) and generated.version == 4
    assert 0.5 < similarity < 1.0


def test_postgres_listens_on_loopback_only(pg: psycopg.Connection[Any]) -> None:
    assert pg.execute("SHOW listen_addresses").fetchone() == ("127.0.0.1",)


def test_basic_auth_engine_rejects_anonymous_and_accepts_demo() -> None:
    # /engine itself is not behind the filter (no engine name in the path): use a real resource.
    url = f"{AUTH_ENGINE_URL}/process-definition/count"
    anonymous = _get(url)
    assert anonymous.status_code == 401, anonymous.text
    assert anonymous.headers.get("WWW-Authenticate", "").startswith("Basic")
    assert _get(url, auth=("demo", "wrong")).status_code == 401
    authorised = _get(url, auth=AUTH_USER)
    assert authorised.status_code == 200, authorised.text
    assert "count" in authorised.json()
