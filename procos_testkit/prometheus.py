"""A real Prometheus for tests: Debian's ``prometheus`` package (server and promtool).

``prometheus_binaries()`` finds ``promtool`` and ``prometheus`` on PATH, or unpacks the Debian package
into the stack home (``apt-get download`` + ``dpkg-deb -x``: no root, no system service started),
once; later calls reuse it. ``PrometheusServer`` runs one on a free loopback port with a scrape
configuration of the test's own, and answers PromQL queries through its HTTP API.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import requests
import yaml

__all__ = ["PrometheusServer", "prometheus_binaries"]


def _stack_home() -> Path:
    return Path(os.environ.get("PROCOS_STACK_HOME") or Path.home() / ".cache" / "procos-stack")


def prometheus_binaries() -> tuple[Path, Path]:
    """(promtool, prometheus), from PATH or unpacked from Debian's package into the stack home."""
    on_path = shutil.which("promtool"), shutil.which("prometheus")
    if on_path[0] and on_path[1]:
        return Path(on_path[0]), Path(on_path[1])
    root = _stack_home() / "prometheus"
    promtool, server = root / "usr" / "bin" / "promtool", root / "usr" / "bin" / "prometheus"
    if not (promtool.is_file() and server.is_file()):
        _unpack_debian_package(root)
    return promtool, server


def _unpack_debian_package(root: Path) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        download = ["apt-get", "download", "prometheus"]
        if subprocess.run(download, cwd=tmp, capture_output=True, check=False).returncode != 0:
            sudo = [] if os.geteuid() == 0 else ["sudo", "-n"]
            subprocess.run([*sudo, "apt-get", "update"], capture_output=True, check=True, timeout=600)
            subprocess.run(download, cwd=tmp, capture_output=True, check=True, timeout=600)
        [deb] = list(Path(tmp).glob("prometheus_*.deb"))
        staging = root.with_name("prometheus.partial")
        shutil.rmtree(staging, ignore_errors=True)
        subprocess.run(["dpkg-deb", "-x", str(deb), str(staging)], check=True, timeout=300)
        shutil.rmtree(root, ignore_errors=True)
        staging.rename(root)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class PrometheusServer:
    """``prometheus`` scraping ``targets`` (host:port) every ``scrape_interval_s`` as job ``procos-worker``."""

    def __init__(self, targets: list[str], workdir: Path, scrape_interval_s: float = 1.0) -> None:
        self.workdir = workdir
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.config = workdir / "prometheus.yml"
        interval = f"{int(scrape_interval_s * 1000)}ms"
        self.config.write_text(yaml.safe_dump({
            "global": {"scrape_interval": interval, "evaluation_interval": interval},
            "scrape_configs": [{"job_name": "procos-worker", "static_configs": [{"targets": targets}]}],
        }), encoding="utf-8")
        self._proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> PrometheusServer:
        _promtool, server = prometheus_binaries()
        log = (self.workdir / "prometheus.log").open("ab")
        self._proc = subprocess.Popen(
            [str(server), f"--config.file={self.config}", f"--storage.tsdb.path={self.workdir / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn"],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while True:
            try:
                if requests.get(f"{self.url}/-/ready", timeout=2).ok:
                    return self
            except requests.RequestException:
                pass
            if self._proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"prometheus did not start; see {self.workdir / 'prometheus.log'}")
            time.sleep(0.2)

    def __exit__(self, *_exc: object) -> None:
        if self._proc is not None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(timeout=10)

    def query(self, expr: str) -> list[dict[str, Any]]:
        """An instant query; the result vector (``metric`` labels and ``value``)."""
        answer = requests.get(f"{self.url}/api/v1/query", params={"query": expr}, timeout=10).json()
        if answer.get("status") != "success":
            raise AssertionError(f"prometheus refused {expr!r}: {answer}")
        result: list[dict[str, Any]] = answer["data"]["result"]
        return result

    def value(self, expr: str) -> float | None:
        """The single value of a query that returns one series (None when it returns none)."""
        result = self.query(expr)
        if not result:
            return None
        assert len(result) == 1, result
        return float(result[0]["value"][1])

    def targets(self) -> list[dict[str, Any]]:
        answer = requests.get(f"{self.url}/api/v1/targets", timeout=10).json()
        active: list[dict[str, Any]] = answer["data"]["activeTargets"]
        return active
