"""Fixtures of the fault suite (issue 4): the real Camunda, PostgreSQL and Ollama, the worker as a
subprocess or in-process, and proxies that make a service look down or hold a request.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from procos_testkit.fake_ollama import FakeOllama

# The helpers live beside this file; test modules import them as ``faultkit``.
sys.path.insert(0, str(Path(__file__).resolve().parent))

from faultkit import CAMUNDA_ROOT, HoldingProxy, WorkerProcess, worker_env


@pytest.fixture()
def real_ollama(ollama_up: str) -> str:
    """The real Ollama (the shared ``ollama_up`` check: reachable and serving the model)."""
    return ollama_up


@pytest.fixture()
def fake() -> Iterator[FakeOllama]:
    """The fake Ollama: only for what the real one can't do on demand (slow, 503, NUL, surrogates, huge)."""
    with FakeOllama() as server:
        yield server


@pytest.fixture()
def camunda_proxy() -> Iterator[HoldingProxy]:
    """A counting proxy in front of Camunda that can hold calls (e.g. ``/complete``) or refuse."""
    proxy = HoldingProxy(CAMUNDA_ROOT, upstream_timeout_s=120).start()
    yield proxy
    proxy.stop()


@pytest.fixture()
def spawn(tmp_path: Path) -> Iterator[Callable[..., WorkerProcess]]:
    """Start ``procos-worker run`` subprocesses: ``spawn(topic, ENV=value, ...)``; killed at teardown."""
    started: list[WorkerProcess] = []

    def start(topic: str, **env: str) -> WorkerProcess:
        process = WorkerProcess(worker_env(tmp_path, topic, **env), tmp_path, name=f"worker-{len(started)}")
        started.append(process.start())
        return process

    yield start
    for process in started:
        if process.alive:
            process.kill()
