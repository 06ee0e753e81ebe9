"""The benchmark's library worker (``procos_bench.library_worker``) stops on SIGTERM.

The library's ``subscribe`` loop catches ``BaseException``: a SIGTERM handler that raises ``SystemExit``
is swallowed, and every benchmark run with the library worker waited 10 s for the harness to kill it.
"""

from __future__ import annotations

import signal
import subprocess
import sys

import pytest

from procos_testkit.fake_ollama import FakeOllama
from procos_worker.settings import Settings

pytestmark = pytest.mark.integration


def test_sigterm_ends_the_library_worker_with_status_0(settings: Settings) -> None:
    with FakeOllama() as fake:
        proc = subprocess.Popen(
            [sys.executable, "-m", "procos_bench.library_worker", "--url", settings.camunda.base_url,
             "--topic", "procos-bench-nothing-here", "--ollama", fake.base_url,
             "--db", settings.database.url.get_secret_value()],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        try:
            assert proc.stdout is not None
            assert proc.stdout.readline().startswith("ready"), "the library worker did not start"
            proc.send_signal(signal.SIGTERM)  # while its long poll waits in the engine
            assert proc.wait(timeout=5) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
