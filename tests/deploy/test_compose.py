"""docker-compose.yml: schema-valid, pinned images, the right mounts, health checks and start order."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from procos_worker.settings import WorkerSettings
from tests.deploy.deploykit import (
    BPMN_DIR,
    CAMUNDA_DEFAULT_YML,
    COMPOSE_FILE,
    COMPOSE_SCHEMA,
    DOCKERFILE,
    INIT_SQL,
    REPO,
    InterpolationError,
    interpolate_tree,
    load_yaml,
)

pytestmark = pytest.mark.deploy

SCHEMA_SHA256 = "1f91e091f16b2dd50ab8860e02bb391d22df553d91c145eacedb1b6eff9c3f0e"


def _volumes(service: dict[str, Any]) -> list[tuple[str, str]]:
    """(source, target) of a service's short-syntax volumes, sources of bind mounts made absolute."""
    pairs: list[tuple[str, str]] = []
    for spec in service.get("volumes", []):
        assert isinstance(spec, str), f"use the short volume syntax: {spec!r}"
        source, target = spec.split(":")[:2]
        if source.startswith((".", "/")):
            source = str((COMPOSE_FILE.parent / source).resolve())
        pairs.append((source, target))
    return pairs


def _healthcheck_text(service: dict[str, Any]) -> str:
    test = service["healthcheck"]["test"]
    return " ".join(test) if isinstance(test, list) else str(test)


def _image_tag(image: str) -> str | None:
    name = image.split("@", 1)[0]
    last = name.rsplit("/", 1)[-1]
    return last.split(":", 1)[1] if ":" in last else None


def test_vendored_schema_is_the_recorded_copy() -> None:
    import hashlib

    assert hashlib.sha256(COMPOSE_SCHEMA.read_bytes()).hexdigest() == SCHEMA_SHA256


def _check_jsonschema(
    schema_args: list[str], document: dict[str, Any], tmp_path: Path
) -> subprocess.CompletedProcess[str]:
    instance = tmp_path / "docker-compose.resolved.json"
    instance.write_text(json.dumps(document), encoding="utf-8")
    return subprocess.run(
        [sys.executable, "-m", "check_jsonschema", "--output-format", "text", *schema_args, str(instance)],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )


def test_compose_file_validates_against_the_compose_spec_schema(compose: dict[str, Any], tmp_path: Path) -> None:
    """check-jsonschema with the vendored Compose Specification schema (draft 7)."""
    schema = json.loads(COMPOSE_SCHEMA.read_text(encoding="utf-8"))
    assert schema["$schema"].startswith("https://json-schema.org/draft-07/")
    result = _check_jsonschema(["--schemafile", str(COMPOSE_SCHEMA)], compose, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "ok -- validation done" in result.stdout


def test_compose_file_validates_against_check_jsonschemas_own_copy(compose: dict[str, Any], tmp_path: Path) -> None:
    """The copy check-jsonschema ships (an independently updated version of the same schema)."""
    result = _check_jsonschema(["--builtin-schema", "vendor.compose-spec"], compose, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_schema_rejects_a_broken_file(compose: dict[str, Any], tmp_path: Path) -> None:
    """The validation is not vacuous: an unknown service key and a bad depends_on condition fail."""
    broken = json.loads(json.dumps(compose))
    broken["services"]["worker"]["contianer_name"] = "typo"
    broken["services"]["worker"]["depends_on"]["postgres"]["condition"] = "service_ready"
    result = _check_jsonschema(["--schemafile", str(COMPOSE_SCHEMA)], broken, tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "contianer_name" in result.stdout
    assert "service_ready" in result.stdout


@pytest.mark.parametrize("missing", ["POSTGRES_PASSWORD", "POSTGRES_USER", "POSTGRES_DB", "ENGINE_ADMIN_PASSWORD",
                                     "POSTGRES_WORKER_USER", "POSTGRES_WORKER_PASSWORD", "GRAFANA_ADMIN_PASSWORD"])
def test_credentials_are_required_from_env(
    compose_raw: dict[str, Any], env_example: dict[str, str], missing: str
) -> None:
    env = {key: value for key, value in env_example.items() if key != missing}
    with pytest.raises(InterpolationError, match=missing):
        interpolate_tree(compose_raw, env)
    with pytest.raises(InterpolationError, match=missing):
        interpolate_tree(compose_raw, {**env, missing: ""})


def test_no_credential_is_written_into_the_deployment_files(env_example: dict[str, str]) -> None:
    secrets = {env_example[key] for key in ("POSTGRES_PASSWORD", "ENGINE_ADMIN_PASSWORD", "POSTGRES_WORKER_PASSWORD",
                                            "GRAFANA_ADMIN_PASSWORD")}
    for path in (COMPOSE_FILE, CAMUNDA_DEFAULT_YML, DOCKERFILE):
        text = path.read_text(encoding="utf-8")
        for secret in secrets:
            assert not re.search(rf"(?<![\w-]){re.escape(secret)}(?![\w-])", text), f"{secret!r} in {path.name}"


def test_every_image_is_pinned_to_a_tag(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        image = service.get("image")
        assert image, f"{name} has no image (a built service needs a tagged image: name too)"
        tag = _image_tag(image)
        assert tag, f"{name}: {image} has no tag"
        assert tag != "latest", f"{name}: {image} uses latest"


def test_images_are_the_agreed_ones(services: dict[str, dict[str, Any]]) -> None:
    assert services["postgres"]["image"] == "postgres:15-alpine"
    assert services["camunda"]["image"] == "camunda/camunda-bpm-platform:run-7.24.0"
    assert re.fullmatch(r"ollama/ollama:\d+\.\d+\.\d+", services["ollama"]["image"])
    assert services["ollama-pull"]["image"] == services["ollama"]["image"]


def test_worker_image_tag_is_the_package_version(services: dict[str, dict[str, Any]]) -> None:
    import tomllib

    version = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]["version"]
    assert services["worker"]["image"] == f"procos-worker:{version}"
    assert services["worker"]["build"] == {"context": ".", "dockerfile": "Dockerfile"}


def test_no_service_has_a_fixed_container_name(services: dict[str, dict[str, Any]]) -> None:
    assert [name for name, service in services.items() if "container_name" in service] == []


def test_worker_scales(services: dict[str, dict[str, Any]]) -> None:
    worker = services["worker"]
    assert "ports" not in worker, "a published port would clash between replicas"
    assert worker["environment"]["WORKER_ID"] == "", "an id set here would be shared by every replica"
    assert worker["restart"] in {"unless-stopped", "always", "on-failure"}
    assert worker["init"] is True


def test_worker_gets_time_to_stop_gracefully(services: dict[str, dict[str, Any]]) -> None:
    grace = services["worker"]["stop_grace_period"]
    match = re.fullmatch(r"(\d+)s", grace)
    assert match, grace
    assert int(match.group(1)) > WorkerSettings().shutdown_grace_s


def test_worker_starts_after_everything_it_needs(services: dict[str, dict[str, Any]]) -> None:
    depends = services["worker"]["depends_on"]
    assert {name: spec["condition"] for name, spec in depends.items()} == {
        "postgres": "service_healthy",
        "camunda": "service_healthy",
        "ollama": "service_healthy",
        "ollama-pull": "service_completed_successfully",
        "init-db": "service_completed_successfully",
    }
    assert services["camunda"]["depends_on"] == {"postgres": {"condition": "service_healthy"}}
    assert services["ollama-pull"]["depends_on"] == {"ollama": {"condition": "service_healthy"}}
    # init-db builds procos' indexes on Camunda's tables, so it runs once Camunda has made them.
    assert services["init-db"]["depends_on"]["camunda"] == {"condition": "service_healthy"}


def test_every_service_waited_on_as_healthy_has_a_healthcheck(services: dict[str, dict[str, Any]]) -> None:
    for service in services.values():
        for name, spec in service.get("depends_on", {}).items():
            if spec["condition"] == "service_healthy":
                assert services[name]["healthcheck"]["test"], name


def test_postgres_runs_the_schema_file_of_the_test_suite(services: dict[str, dict[str, Any]]) -> None:
    postgres = services["postgres"]
    init = sorted((dst, src) for src, dst in _volumes(postgres) if dst.startswith("/docker-entrypoint-initdb.d/"))
    assert [Path(dst).name for dst, _ in init] == ["05-procos-roles.sh", "10-procos-init-db.sql",
                                                   "20-procos-grants.sql"]  # run in name order
    target, source = init[1]
    assert Path(source) == INIT_SQL.resolve()
    assert target.endswith(".sql")
    assert INIT_SQL.is_file(), "sql/init-db.sql (the lead's schema file) is missing"
    assert "procos_ai_context" in INIT_SQL.read_text(encoding="utf-8")


def test_postgres_health_check_and_data_volume(services: dict[str, dict[str, Any]], compose: dict[str, Any]) -> None:
    postgres = services["postgres"]
    check = _healthcheck_text(postgres)
    assert "pg_isready" in check
    # TCP, not the socket: the init-time server listens on the socket only.
    assert "-h 127.0.0.1" in check
    assert ("postgres-data", "/var/lib/postgresql/data") in _volumes(postgres)
    assert set(compose["volumes"]) == {"postgres-data", "ollama-data", "prometheus-data", "grafana-data"}
    # A fixed project name gives fixed volume names: procos_postgres-data, procos_ollama-data.
    assert compose["name"] == "procos"


def test_camunda_uses_the_procos_database(services: dict[str, dict[str, Any]], env_example: dict[str, str]) -> None:
    env = services["camunda"]["environment"]
    assert env["DB_DRIVER"] == "org.postgresql.Driver"
    assert env["DB_URL"] == f"jdbc:postgresql://postgres:5432/{env_example['POSTGRES_DB']}"
    assert env_example["POSTGRES_DB"] == "procos"
    assert env["DB_USERNAME"] == env_example["POSTGRES_USER"]
    assert env["DB_PASSWORD"] == env_example["POSTGRES_PASSWORD"]
    assert "/engine-rest/engine" in _healthcheck_text(services["camunda"])


def test_camunda_deploys_the_bpmn_directory(services: dict[str, dict[str, Any]]) -> None:
    mounts = dict((target, source) for source, target in _volumes(services["camunda"]))
    resources = [t for t in mounts if t.startswith("/camunda/configuration/resources")]
    assert len(resources) == 1
    assert Path(mounts[resources[0]]) == BPMN_DIR.resolve()
    assert Path(mounts["/camunda/configuration/default.yml"]) == CAMUNDA_DEFAULT_YML.resolve()


def test_the_example_process_is_there_for_camunda_to_deploy() -> None:
    bpmn = BPMN_DIR / "ai-query.bpmn"
    assert bpmn.is_file(), "bpmn/ai-query.bpmn (the lead's example process) is missing"
    text = bpmn.read_text(encoding="utf-8")
    assert re.search(r'camunda:topic="ai-query"', text)


def test_camunda_configuration_sets_a_history_time_to_live_and_takes_secrets_from_env(
    services: dict[str, dict[str, Any]],
) -> None:
    config = load_yaml(CAMUNDA_DEFAULT_YML)
    bpm = config["camunda.bpm"]
    assert re.fullmatch(r"P\d+D", bpm["generic-properties"]["properties"]["history-time-to-live"])
    assert bpm["admin-user"] == {"id": "${ENGINE_ADMIN_USER}", "password": "${ENGINE_ADMIN_PASSWORD}"}
    # Every Spring placeholder without a default must be in the camunda container's environment.
    text = CAMUNDA_DEFAULT_YML.read_text(encoding="utf-8")
    needed = set(re.findall(r"\$\{([A-Z_][A-Z0-9_]*)\}", text))
    assert needed
    assert needed <= set(services["camunda"]["environment"])


def test_ollama_keeps_models_in_a_volume_and_pulls_the_configured_model(
    services: dict[str, dict[str, Any]], env_example: dict[str, str]
) -> None:
    assert ("ollama-data", "/root/.ollama") in _volumes(services["ollama"])
    pull = services["ollama-pull"]
    assert pull["restart"] == "no"
    assert pull["environment"]["OLLAMA_HOST"] == "http://ollama:11434"
    model = pull["environment"]["PROCOS_MODEL"]
    assert model == env_example["OLLAMA_MODEL"] == services["worker"]["environment"]["OLLAMA_MODEL"]
    script = " ".join(pull["command"])
    assert 'ollama pull "${PROCOS_MODEL}"' in script
    assert pull["entrypoint"] == ["/bin/sh", "-c"]


def test_worker_reaches_the_services_by_their_compose_names(
    services: dict[str, dict[str, Any]], env_example: dict[str, str]
) -> None:
    env = services["worker"]["environment"]
    assert env["CAMUNDA_BASE_URL"] == "http://camunda:8080/engine-rest"
    assert env["OLLAMA_BASE_URL"] == "http://ollama:11434"
    user, password, db = (env_example[k] for k in ("POSTGRES_WORKER_USER", "POSTGRES_WORKER_PASSWORD", "POSTGRES_DB"))
    assert env["DATABASE_URL"] == f"postgresql://{user}:{password}@postgres:5432/{db}"  # its own login


def test_an_explicit_database_url_wins(compose_raw: dict[str, Any], env_example: dict[str, str]) -> None:
    url = "postgresql://other:secret@db.example:5432/procos"
    resolved = interpolate_tree(compose_raw, {**env_example, "DATABASE_URL": url})
    assert resolved["services"]["worker"]["environment"]["DATABASE_URL"] == url
