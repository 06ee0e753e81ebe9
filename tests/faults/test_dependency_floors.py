"""Issue 9, item 9: the lowest version pyproject.toml allows of a runtime dependency has the API the
worker calls. tenacity 9.0/9.1 lack ``wait_exponential_jitter(multiplier=...)``: with them installed every
Ollama call raised TypeError, an incident for every task.

The floor is installed from PyPI (``pip install --no-deps --target``) and the worker's own retry path runs
against it in a subprocess, talking to the fake Ollama (one 503, then an answer: the retry is exercised).
"""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from procos_testkit.fake_ollama import FakeOllama
from tests.faults.faultkit import REPO

pytestmark = pytest.mark.faults

# Runtime dependencies whose API the worker uses beyond what every release offers.
CHECKED = ("tenacity",)

_PROBE = """
import sys
import tenacity
from procos_worker.ai.llm import LlmClient
from procos_worker.settings import OllamaSettings
client = LlmClient(OllamaSettings(base_url=sys.argv[1], attempts=3))
result = client.chat([{"role": "user", "content": "floor check [[fake:fail_first_n=1]]"}])
print("tenacity", tenacity.__version__ if hasattr(tenacity, "__version__") else "?", "answer", len(result.content))
"""


def _floor(name: str) -> str:
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    for spec in deps:
        match = re.match(rf"^{re.escape(name)}(?:\[[^\]]*\])?\s*(.*)$", spec)
        if match:
            lower = re.search(r">=\s*([0-9][^,\s]*)", match.group(1))
            assert lower, f"{name} has no lower bound in pyproject.toml: {spec!r}"
            return lower.group(1)
    raise AssertionError(f"{name} is not a runtime dependency")


@pytest.mark.parametrize("name", CHECKED)
def test_lowest_allowed_version_has_the_api_used(name: str, tmp_path: Path, fake: FakeOllama) -> None:
    floor = _floor(name)
    target = tmp_path / "floor"
    installed = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(target), f"{name}=={floor}"],
        capture_output=True, text=True, timeout=300, check=False)
    assert installed.returncode == 0, installed.stderr[-2000:]
    # The floor first on the path, then the checkout (the worker itself), then the venv (its other deps).
    probe = subprocess.run([sys.executable, "-c", _PROBE, fake.base_url], capture_output=True, text=True, timeout=120,
                           check=False, cwd=REPO, env={"PYTHONPATH": f"{target}:{REPO}", "PATH": "/usr/bin:/bin"})
    assert probe.returncode == 0, f"{name}=={floor}: {probe.stderr[-3000:]}"
    assert "answer" in probe.stdout
    assert fake.chat_calls == 2, "one 503, then the retry answered"
