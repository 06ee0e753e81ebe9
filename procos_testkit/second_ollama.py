"""A second real Ollama for the endpoint tests and the p6 benchmark: ``stack/ollama.sh up`` on a free
port of 127.0.0.1, sharing the stack's binary and model store; ``stop`` (and leaving the ``with``) stops
only this server, never the shared one on 11434."""

from __future__ import annotations

import os
import socket
import subprocess
from pathlib import Path
from types import TracebackType

__all__ = ["SecondOllama", "free_port"]

_OLLAMA_SH = Path(__file__).resolve().parents[1] / "stack" / "ollama.sh"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class SecondOllama:
    """``with SecondOllama() as second: second.base_url``; ``second.stop()`` takes it down mid-run."""

    def __init__(self, port: int | None = None, timeout_s: float = 180.0) -> None:
        self.port = port or free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self._timeout_s = timeout_s
        self.running = False

    def _run(self, command: str) -> None:
        env = {**os.environ, "OLLAMA_BASE_URL": self.base_url}
        done = subprocess.run(["bash", str(_OLLAMA_SH), command], env=env, capture_output=True, text=True,
                              timeout=self._timeout_s, check=False)
        if done.returncode != 0:
            raise AssertionError(f"stack/ollama.sh {command} on {self.base_url} failed ({done.returncode}): "
                                 f"{done.stderr[-2000:]}")

    def start(self) -> SecondOllama:
        self._run("up")
        self.running = True
        return self

    def stop(self) -> None:
        self._run("down")
        self.running = False

    def __enter__(self) -> SecondOllama:
        return self.start()

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.stop()
