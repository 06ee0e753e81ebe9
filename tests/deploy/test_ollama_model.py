"""Compose's Ollama is sized and configured like the tested local stack: parallel slots for the workers'
tasks in flight, the same context length, the model created with the same options. The last test runs
the compose ``ollama-pull`` command for real against a private ``ollama serve`` (the stack's Ollama 0.24.0
binary and model file, its own port and model store)."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from procos_worker.settings import WorkerSettings
from tests.deploy.deploykit import REPO

pytestmark = pytest.mark.deploy

MODELFILE = REPO / "deploy" / "ollama" / "smollm2.Modelfile"
STACK_PARAMS = REPO / "stack" / "ollama" / "smollm2.params.json"
STACK_HOME = Path(os.environ.get("PROCOS_STACK_HOME", Path.home() / ".cache" / "procos-stack"))
MODEL = "smollm2:135m"


def _modelfile_parameters(text: str) -> dict[str, Any]:
    params: dict[str, Any] = {}
    for line in text.splitlines():
        match = re.match(r"^PARAMETER\s+(\w+)\s+(.+)$", line.strip())
        if not match:
            continue
        name, raw = match.groups()
        value: Any = json.loads(raw) if raw.startswith('"') else int(raw) if raw.isdigit() else raw
        if name == "stop":
            params.setdefault("stop", []).append(value)
        else:
            params[name] = value
    return params


def test_the_model_is_served_with_the_local_stacks_options() -> None:
    text = MODELFILE.read_text(encoding="utf-8")
    assert re.search(rf"^FROM {re.escape(MODEL)}$", text, re.MULTILINE)
    stack = json.loads(STACK_PARAMS.read_text(encoding="utf-8"))
    # num_thread 1 suits the 2 shared cores of the test machines, not a server of its own.
    assert _modelfile_parameters(text) == {k: v for k, v in stack.items() if k != "num_thread"}


def test_ollama_is_sized_for_the_workers_tasks_in_flight(services: dict[str, dict[str, Any]],
                                                         env_example: dict[str, str]) -> None:
    env = services["ollama"]["environment"]
    assert int(env["OLLAMA_NUM_PARALLEL"]) >= WorkerSettings().max_tasks_in_flight
    assert int(env["OLLAMA_NUM_PARALLEL"]) == int(env_example["MODEL_NUM_PARALLEL"])
    num_ctx = json.loads(STACK_PARAMS.read_text(encoding="utf-8"))["num_ctx"]
    assert int(env["OLLAMA_CONTEXT_LENGTH"]) == num_ctx == _modelfile_parameters(MODELFILE.read_text())["num_ctx"]
    pull = services["ollama-pull"]
    assert ("./deploy/ollama", "/procos/ollama") in [tuple(v.split(":")[:2]) for v in pull["volumes"]]
    assert "ollama create" in pull["command"][0] and "/procos/ollama/smollm2.Modelfile" in pull["command"][0]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture()
def private_ollama() -> Iterator[tuple[str, dict[str, str]]]:
    binary = STACK_HOME / "ollama" / "bin" / "ollama"
    gguf = STACK_HOME / "ollama" / "gguf" / "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert binary.exists() and gguf.exists(), "the stack's Ollama binary and model file: run scripts/stack up ollama"
    store = Path(tempfile.mkdtemp(prefix="procos-ollama-"))
    env = {**os.environ, "OLLAMA_HOST": f"127.0.0.1:{_free_port()}", "OLLAMA_MODELS": str(store),
           "PATH": f"{binary.parent}:{os.environ['PATH']}"}
    server = subprocess.Popen([str(binary), "serve"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://{env['OLLAMA_HOST']}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                requests.get(f"{base}/api/version", timeout=2).raise_for_status()
                break
            except requests.RequestException:
                assert time.monotonic() < deadline, "private ollama serve did not start"
                time.sleep(0.2)
        # What a registry pull leaves: the model with its own defaults (here: the GGUF alone).
        (store / "base.Modelfile").write_text(f"FROM {gguf}\n", encoding="utf-8")
        subprocess.run(["ollama", "create", MODEL, "-f", str(store / "base.Modelfile")], env=env, check=True,
                       capture_output=True, timeout=120)
        yield base, env
    finally:
        server.terminate()
        server.wait(15)
        shutil.rmtree(store, ignore_errors=True)


def test_the_pull_command_creates_the_model_with_those_options(
    private_ollama: tuple[str, dict[str, str]], compose_raw: dict[str, Any],
) -> None:
    base, env = private_ollama
    command = compose_raw["services"]["ollama-pull"]["command"][0]
    script = command.replace("$$", "$").replace("/procos/ollama", str(MODELFILE.parent))
    shown = requests.post(f"{base}/api/show", json={"model": MODEL}, timeout=30).json()
    assert "num_ctx" not in shown.get("parameters", "")
    for _ in range(2):  # the second run (a restart of the stack) changes nothing and still succeeds
        done = subprocess.run(["sh", "-c", script], env={**env, "PROCOS_MODEL": MODEL}, capture_output=True,
                              text=True, timeout=120, check=False)
        assert done.returncode == 0, done.stdout + done.stderr
        parameters = requests.post(f"{base}/api/show", json={"model": MODEL}, timeout=30).json()["parameters"]
        assert re.search(r"num_ctx\s+4096", parameters), parameters
        assert '"<|im_end|>"' in parameters
    answer = requests.post(f"{base}/api/chat", timeout=120, json={
        "model": MODEL, "messages": [{"role": "user", "content": "Say hi"}], "stream": False,
        "options": {"num_predict": 4}}).json()
    assert answer["done"] is True and answer["message"]["content"]
