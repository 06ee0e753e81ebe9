"""A Camunda engine of a test's own: the stack's engine jar (scripts/stack builds it) started on a free
port against a database the test chose, stopped (this process only) when the test ends.

For tests that must not touch the shared engine's tables, e.g. building indexes on them.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

import requests

__all__ = ["engine_jar", "own_engine"]


def engine_jar() -> Path:
    """The engine jar ``scripts/stack up`` extracted (``$PROCOS_STACK_HOME``, default ~/.cache/procos-stack)."""
    home = Path(os.environ.get("PROCOS_STACK_HOME") or Path.home() / ".cache" / "procos-stack")
    jar = home / "camunda-engine" / "app" / "procos-camunda-engine.jar"
    if not jar.is_file():
        raise AssertionError(f"engine jar {jar} missing: run scripts/stack up")
    return jar


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def own_engine(database_url: str, log_path: Path, start_timeout_s: float = 240.0) -> Iterator[str]:
    """Start an engine on ``database_url`` (postgresql://user:password@host:port/db); yield its REST base URL."""
    parts = urlsplit(database_url)
    port = _free_port()
    java = shutil.which("java")
    assert java, "java not found: run scripts/stack up"
    env = {**os.environ,
           "PROCOS_ENGINE_JDBC_URL": f"jdbc:postgresql://{parts.hostname}:{parts.port or 5432}{parts.path}",
           "PROCOS_ENGINE_JDBC_USER": parts.username or "procos",
           "PROCOS_ENGINE_JDBC_PASSWORD": parts.password or "",
           "PROCOS_ENGINE_PORT": str(port)}
    with log_path.open("ab") as log:
        proc = subprocess.Popen(
            [java, "-Xms128m", "-Xmx384m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1",
             "-jar", str(engine_jar()), f"--server.port={port}"],
            env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    base_url = f"http://127.0.0.1:{port}/engine-rest"
    try:
        deadline = time.monotonic() + start_timeout_s
        while True:
            if proc.poll() is not None:
                raise AssertionError(f"own engine exited with {proc.returncode}; see {log_path}")
            try:
                if requests.get(f"{base_url}/engine", timeout=2).ok:
                    break
            except requests.RequestException:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"own engine not up after {start_timeout_s:g}s; see {log_path}")
            time.sleep(0.5)
        yield base_url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
