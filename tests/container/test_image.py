"""The worker image, built and run for real with Debian's podman against the local stack.

``stack/container.sh up`` (a phase of ``.ci/run``) installs podman and makes the local base image
``localhost/procos-base:bookworm-py311`` (Debian 12 minbase + python3 3.11, via mmdebstrap); the
Dockerfile is built on it through its ``BASE_IMAGE`` argument, with ``--network host`` so pip reaches
PyPI for the locked, hash-checked dependencies. The container runs with host networking against the
real Camunda, PostgreSQL and Ollama.

What this can NOT check here (no image registry is reachable): the public images themselves
(``python:3.11.x-slim-bookworm``, ``postgres:15-alpine``, ``camunda/camunda-bpm-platform:run-7.24.0``,
``ollama/ollama:0.24.0``) and so compose's health-check commands inside them, Camunda Run reading the
mounted default.yml, the postgres image running the init scripts, the model pull, compose's own
networking (service names) and ``--scale``; and podman is not Docker (its HEALTHCHECK runs on demand
here, ``podman healthcheck run``, where Docker runs it on a timer). tests/deploy checks those files
statically.
"""

from __future__ import annotations

import json
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from procos_testkit.engine import EngineRest, wait_until
from procos_testkit.pg import scratch_database
from procos_worker.settings import Settings

pytestmark = pytest.mark.container

REPO = Path(__file__).resolve().parents[2]
BASE_IMAGE = "localhost/procos-base:bookworm-py311"
PODMAN = ["podman", "--runtime", "runc", "--cgroup-manager", "cgroupfs"]
LIMITS = ["--ulimit", "nofile=20000:20000", "--ulimit", "nproc=1000:1000"]


def podman(*args: str, timeout_s: float = 120, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([*PODMAN, *args], capture_output=True, text=True, timeout=timeout_s, check=False)
    if check and done.returncode != 0:
        raise AssertionError(f"podman {' '.join(args[:3])}... exited {done.returncode}:\n{done.stdout}\n{done.stderr}")
    return done


@pytest.fixture(scope="module")
def image() -> Iterator[str]:
    try:
        podman("image", "exists", BASE_IMAGE, check=True)
    except (OSError, AssertionError) as exc:
        pytest.fail(f"podman or the base image {BASE_IMAGE} is missing ({exc}); run: stack/container.sh up")
    tag = f"localhost/procos-worker:test-{uuid.uuid4().hex[:8]}"
    started = time.monotonic()
    podman("build", "--format", "docker", "--network", "host", "-v", "/etc/ssl/certs:/etc/ssl/certs:ro", *LIMITS,
           "--build-arg", f"BASE_IMAGE={BASE_IMAGE}", "-t", tag, "-f", str(REPO / "Dockerfile"), str(REPO),
           timeout_s=900)
    print(f"\ncontainer: image built in {time.monotonic() - started:.1f} s")  # cold vs warm, in the CI log
    yield tag
    podman("rmi", tag, check=False)  # the tag only: the layers stay cached for the next build
    # Each build whose sources changed leaves its build stage behind untagged: drop the old ones.
    podman("image", "prune", "-f", "--filter", "until=24h", check=False)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _env(settings: Settings, **extra: str) -> list[str]:
    values = {"CAMUNDA_BASE_URL": settings.camunda.base_url, "DATABASE_URL": settings.database.url.get_secret_value(),
              "OLLAMA_BASE_URL": settings.ollama.base_url, "OLLAMA_MODEL": settings.ollama.model,
              "LOG_FORMAT": "json", **extra}
    return [arg for name, value in values.items() for arg in ("-e", f"{name}={value}")]


def _one_shot(image: str, settings: Settings, *command: str, **env: str) -> subprocess.CompletedProcess[str]:
    return podman("run", "--rm", "--network", "host", *LIMITS, *_env(settings, **env), image, *command,
                  timeout_s=180, check=False)


def test_image_runs_the_worker_unprivileged_with_the_healthcheck(image: str) -> None:
    inspected = json.loads(podman("image", "inspect", image).stdout)[0]
    config = inspected["Config"]
    assert config["User"] == "10001:10001"
    assert config["Cmd"] == ["procos-worker", "run"]
    assert config["StopSignal"] == "SIGTERM"
    # Kept only in the docker image format (podman build --format docker); podman lists it here.
    assert inspected["Healthcheck"]["Test"] == ["CMD", "procos-worker", "health"]
    assert "BASE_IMAGE" not in json.dumps(config.get("Env", []))


def test_check_passes_from_the_image(image: str, settings: Settings) -> None:
    done = _one_shot(image, settings, "procos-worker", "check")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "camunda     ok" in done.stdout and "ollama      ok" in done.stdout


def test_init_db_from_the_image_is_idempotent(image: str, settings: Settings) -> None:
    with scratch_database(settings.database.url.get_secret_value(), prefix="procos_fleet_img") as url:
        first = _one_shot(image, settings, "procos-worker", "init-db", DATABASE_URL=url)
        second = _one_shot(image, settings, "procos-worker", "init-db", DATABASE_URL=url)
        assert first.returncode == 0, first.stderr
        assert second.returncode == 0, second.stderr
        assert "nothing to do" in second.stderr, second.stderr
        check = _one_shot(image, settings, "procos-worker", "check", DATABASE_URL=url)
        assert "postgresql  ok" in check.stdout, check.stdout


def test_serves_a_real_task_turns_healthy_and_stops_cleanly_on_sigterm(
    image: str, settings: Settings, engine_rest: EngineRest, ollama_up: str,
) -> None:
    topic, key = engine_rest.deploy_example()
    worker_id = f"procos-container-{uuid.uuid4().hex[:8]}"
    name = f"procos-test-{uuid.uuid4().hex[:8]}"
    podman("run", "-d", "--name", name, "--network", "host", *LIMITS,
           *_env(settings, WORKER_TOPICS=topic, WORKER_ID=worker_id, WORKER_SHUTDOWN_GRACE_S="5",
                 OLLAMA_OPTIONS='{"num_predict": 16}', OPS_HTTP_PORT=str(_free_port())), image)
    try:
        assert podman("exec", name, "id", "-u").stdout.strip() == "10001"
        # The HEALTHCHECK command: healthy once the running worker's /healthz says so. The container shares
        # the host's network here, so the worker gets a port of its own (OPS_HTTP_PORT), not the default.
        wait_until(lambda: podman("healthcheck", "run", name, check=False).returncode == 0, 60,
                   "the container's health check to pass")
        assert podman("inspect", "--format", "{{.State.Health.Status}}", name).stdout.strip() == "healthy"

        pi = engine_rest.start(key, {"query": "What is BPMN? One sentence."})
        wait_until(lambda: engine_rest.passed_task(pi), 300, "the real task completed by the container")
        assert engine_rest.variables(pi)["ai_response_stored"]["value"] is True

        more = [engine_rest.start(key, {"query": f"Name a colour ({i})."}) for i in range(3)]
        time.sleep(1.0)  # some of them in flight when the signal comes
        podman("stop", "--time", "60", name, timeout_s=90)  # SIGTERM (the image's STOPSIGNAL)
        state = json.loads(podman("inspect", name).stdout)[0]["State"]
        assert state["ExitCode"] == 0, state
        logs = podman("logs", name).stderr + podman("logs", name).stdout
        assert '"worker.stopped"' in logs
        assert engine_rest.external_tasks(workerId=worker_id, locked="true") == [], "a task left locked"
        for other in more:  # each finished, or was handed back unlocked for another worker
            for task in engine_rest.external_tasks(processInstanceId=other):
                assert task["lockExpirationTime"] is None, task
    finally:
        podman("rm", "-f", name, check=False)
        for other in locals().get("more", []):
            if engine_rest.external_tasks(processInstanceId=other):
                engine_rest.delete_instance(other)
