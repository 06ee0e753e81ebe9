"""Test doubles and harness for procos-worker: in-memory doubles of its neighbours, a fake Ollama on
the wire, proxies that count, hold or refuse, the worker run in a thread or as a subprocess, scratch
databases, a private Camunda engine and the npm packages some tests need.

Not part of the runtime (not in the wheel or the image): the tests and the benchmarks import it from
a checkout. Names are loaded on first use so that ``python -m procos_testkit.fake_ollama`` does not
import the module twice.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from procos_testkit.clock import FakeClock
    from procos_testkit.fake_ollama import BUSY_MESSAGE, DEFAULT_MODELS, Behaviour, FakeOllama
    from procos_testkit.holding_proxy import HoldingProxy
    from procos_testkit.in_process import Doubles, RunningWorker, worker_on_doubles
    from procos_testkit.memory_engine import InMemoryEngine
    from procos_testkit.memory_llm import ScriptedLlm
    from procos_testkit.memory_store import InMemoryLeases, InMemoryModels, InMemoryStore
    from procos_testkit.npm import npm_package
    from procos_testkit.ollama_proxy import OllamaProxy, ProxyMode
    from procos_testkit.private_engine import PrivateEngine
    from procos_testkit.tcp_proxy import TcpProxy
    from procos_testkit.worker_process import WorkerProcess

__all__ = [
    "BUSY_MESSAGE",
    "DEFAULT_MODELS",
    "Behaviour",
    "Doubles",
    "FakeClock",
    "FakeOllama",
    "HoldingProxy",
    "InMemoryEngine",
    "InMemoryLeases",
    "InMemoryModels",
    "InMemoryStore",
    "OllamaProxy",
    "PrivateEngine",
    "ProxyMode",
    "RunningWorker",
    "ScriptedLlm",
    "TcpProxy",
    "WorkerProcess",
    "npm_package",
    "worker_on_doubles",
]

_HOME = {
    "BUSY_MESSAGE": "fake_ollama",
    "DEFAULT_MODELS": "fake_ollama",
    "Behaviour": "fake_ollama",
    "Doubles": "in_process",
    "FakeClock": "clock",
    "FakeOllama": "fake_ollama",
    "HoldingProxy": "holding_proxy",
    "InMemoryEngine": "memory_engine",
    "InMemoryLeases": "memory_store",
    "InMemoryModels": "memory_store",
    "InMemoryStore": "memory_store",
    "OllamaProxy": "ollama_proxy",
    "npm_package": "npm",
    "PrivateEngine": "private_engine",
    "ProxyMode": "ollama_proxy",
    "RunningWorker": "in_process",
    "ScriptedLlm": "memory_llm",
    "TcpProxy": "tcp_proxy",
    "WorkerProcess": "worker_process",
    "worker_on_doubles": "in_process",
}


def __getattr__(name: str) -> Any:
    if name not in _HOME:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_HOME[name]}"), name)
