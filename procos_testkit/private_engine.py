"""A Camunda engine of one's own: the local stack's engine jar started on a free port with an in-memory H2
database, for tests that would strain or stop the shared engine (a 300 MB variable, a restart).

The jar is the one ``scripts/stack`` builds (``$PROCOS_STACK_HOME/camunda-engine/app``); its Spring profile
``auth`` selects H2, and basic auth is switched off here. The process is this object's own: ``stop()``
ends exactly it.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import uuid
from pathlib import Path
from types import TracebackType

import requests

__all__ = ["PrivateEngine", "engine_jar"]


def engine_jar() -> Path:
    home = Path(os.environ.get("PROCOS_STACK_HOME") or Path.home() / ".cache" / "procos-stack")
    return home / "camunda-engine" / "app" / "procos-camunda-engine.jar"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class PrivateEngine:
    """``with PrivateEngine(heap="2g") as engine: engine.rest_url ...``"""

    def __init__(self, heap: str = "768m", log_path: Path | None = None, start_timeout_s: float = 240.0) -> None:
        self.heap = heap
        self.port = _free_port()
        self.rest_url = f"http://127.0.0.1:{self.port}/engine-rest"
        self.log_path = log_path
        self.start_timeout_s = start_timeout_s
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> PrivateEngine:
        jar = engine_jar()
        if not jar.is_file():
            raise RuntimeError(f"engine jar not found at {jar}: run scripts/stack up camunda first")
        env = {**os.environ, "PROCOS_ENGINE_BASIC_AUTH": "false",
               "PROCOS_ENGINE_JDBC_URL": f"jdbc:h2:mem:procos-private-{uuid.uuid4().hex[:8]};DB_CLOSE_DELAY=-1"}
        log = self.log_path.open("ab") if self.log_path else subprocess.DEVNULL
        self._proc = subprocess.Popen(
            ["java", "-Xms128m", f"-Xmx{self.heap}", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1",
             "-Dspring.profiles.active=auth", "-Dprocos.stack.service=private", "-jar", str(jar),
             f"--server.port={self.port}"],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        deadline = time.monotonic() + self.start_timeout_s
        while True:
            try:
                if requests.get(f"{self.rest_url}/engine", timeout=2).ok:
                    return self
            except requests.RequestException:
                pass
            if self._proc.poll() is not None:
                raise RuntimeError(f"the private engine exited with {self._proc.returncode} during start")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"the private engine did not answer within {self.start_timeout_s:g}s")
            time.sleep(0.5)

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)

    def __enter__(self) -> PrivateEngine:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
