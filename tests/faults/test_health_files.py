"""Issue 9, item 9: the health record is per process. With one shared file, any live worker on the host
(or in the container) kept it fresh for all: a wedged worker looked healthy as long as another one ran.

``WORKER_HEALTH_FILE`` holds ``{pid}``; ``procos-worker health`` reads every record of the pattern whose
process is alive and fails when one of them is stale or not running.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from procos_testkit.engine import wait_until
from procos_testkit.fake_ollama import FakeOllama
from procos_testkit.worker_process import WorkerProcess
from tests.faults.faultkit import WORKER_COMMAND, worker_env

pytestmark = pytest.mark.faults

MAX_AGE_S = 3


def _health(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([WORKER_COMMAND[0], "health"], env=env, capture_output=True, text=True, timeout=30,
                          check=False)


def test_a_stalled_worker_is_unhealthy_while_another_one_runs(
    tmp_path: Path, deployed: tuple[str, str], fake: FakeOllama, spawn: Callable[..., WorkerProcess],
) -> None:
    topic, _key = deployed
    pattern = str(tmp_path / "health-{pid}.json")
    env = {"OLLAMA_BASE_URL": fake.base_url, "WORKER_HEALTH_FILE": pattern, "WORKER_HEALTH_MAX_AGE_S": str(MAX_AGE_S)}
    first = spawn(topic, **env)
    second = spawn(topic, **env)
    first.wait_for("worker.started")
    second.wait_for("worker.started")
    check_env = worker_env(tmp_path, topic, **env)
    wait_until(lambda: _health(check_env).returncode == 0, 15, "both workers healthy")

    os.kill(second.pid, signal.SIGSTOP)  # wedged: alive, refreshing nothing
    try:
        time.sleep(MAX_AGE_S + 3)
        result = _health(check_env)
        assert result.returncode == 1, f"a stalled worker must make the check fail: {result.stdout}{result.stderr}"
        assert str(second.pid) in result.stderr
    finally:
        os.kill(second.pid, signal.SIGCONT)
    wait_until(lambda: _health(check_env).returncode == 0, 15, "healthy again once it runs")

    first.signal(signal.SIGTERM)
    assert first.wait(20) == 0
    # A worker that stopped leaves a record saying so; its process is gone, so it does not count.
    assert _health(check_env).returncode == 0, "the one still running is healthy"
    second.signal(signal.SIGTERM)
    assert second.wait(20) == 0
    result = _health(check_env)
    assert result.returncode == 1 and "no running worker" in result.stderr
