"""Issue 9, item 9: the lowest version pyproject.toml allows of a runtime dependency has the API the
worker calls. tenacity 9.0/9.1 lack ``wait_exponential_jitter(multiplier=...)``: with them installed every
Ollama call raised TypeError, an incident for every task. requests and urllib3: ``engine.session`` uses
requests' adapter and urllib3's pool directly.

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

_TENACITY = """
import sys
import tenacity
from procos_worker.ai.llm import LlmClient
from procos_worker.settings import OllamaSettings
client = LlmClient(OllamaSettings(base_url=sys.argv[1], attempts=3))
result = client.chat([{"role": "user", "content": "floor check [[fake:fail_first_n=1]]"}])
print("tenacity", tenacity.__version__ if hasattr(tenacity, "__version__") else "?", "answer", len(result.content))
"""

# engine.session: the library's calls on the requests session's own urllib3 pool, and an answer over a limit
# left unread (sent to the fake Ollama's /api/chat: any JSON endpoint shows the session's side).
_SESSION = """
import sys
import requests, urllib3
from procos_worker.engine.session import AnswerTooLarge, EngineSession
session = EngineSession(2, None)
body = {"model": "fake:latest", "messages": [{"role": "user", "content": "floor check"}], "stream": False}
answer = session.post_json(sys.argv[1] + "/api/chat", body, timeout=10)
assert answer.ok and answer.json()["done"], answer.status_code
try:
    session.post_json(sys.argv[1] + "/api/chat", body, timeout=10, max_bytes=10)
    raise SystemExit("an answer over max_bytes was read")
except AnswerTooLarge:
    pass
print("requests", requests.__version__, "urllib3", urllib3.__version__, "answer", len(answer.content))
"""

# Runtime dependencies whose API the worker uses beyond what every release offers: the probe that calls
# it, and the chat calls the probe makes at the fake.
CHECKED = {"tenacity": (_TENACITY, 2), "requests": (_SESSION, 2), "urllib3": (_SESSION, 2)}


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
    probe_code, chat_calls = CHECKED[name]
    floor = _floor(name)
    target = tmp_path / "floor"
    installed = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(target), f"{name}=={floor}"],
        capture_output=True, text=True, timeout=300, check=False)
    assert installed.returncode == 0, installed.stderr[-2000:]
    # The floor first on the path, then the checkout (the worker itself), then the venv (its other deps).
    env = {"PYTHONPATH": f"{target}:{REPO}", "PATH": "/usr/bin:/bin"}
    probe = subprocess.run([sys.executable, "-c", probe_code, fake.base_url], capture_output=True, text=True,
                           timeout=120, check=False, cwd=REPO, env=env)
    assert probe.returncode == 0, f"{name}=={floor}: {probe.stderr[-3000:]}"
    assert "answer" in probe.stdout
    assert fake.chat_calls == chat_calls, probe.stdout
