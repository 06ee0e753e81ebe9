"""Test doubles for procos-worker's neighbours: a fake Ollama and a counting proxy for the real one.

They live in the package (not under ``tests/``) because the benchmark runs them too. Names are
loaded on first use so that ``python -m procos_testkit.fake_ollama`` does not import the
module twice.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from procos_testkit.fake_ollama import BUSY_MESSAGE, DEFAULT_MODELS, Behaviour, FakeOllama
    from procos_testkit.npm import npm_package
    from procos_testkit.ollama_proxy import OllamaProxy, ProxyMode

__all__ = ["BUSY_MESSAGE", "DEFAULT_MODELS", "Behaviour", "FakeOllama", "OllamaProxy", "ProxyMode", "npm_package"]

_HOME = {
    "BUSY_MESSAGE": "fake_ollama",
    "DEFAULT_MODELS": "fake_ollama",
    "Behaviour": "fake_ollama",
    "FakeOllama": "fake_ollama",
    "OllamaProxy": "ollama_proxy",
    "npm_package": "npm",
    "ProxyMode": "ollama_proxy",
}


def __getattr__(name: str) -> Any:
    if name not in _HOME:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_HOME[name]}"), name)
