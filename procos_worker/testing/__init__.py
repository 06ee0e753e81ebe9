"""Test doubles for procos-worker's neighbours: a fake Ollama and a counting proxy for the real one.

They live in the package (not under ``tests/``) because the benchmark runs them too.
"""

from procos_worker.testing.fake_ollama import BUSY_MESSAGE, DEFAULT_MODELS, Behaviour, FakeOllama
from procos_worker.testing.ollama_proxy import OllamaProxy, ProxyMode

__all__ = ["BUSY_MESSAGE", "DEFAULT_MODELS", "Behaviour", "FakeOllama", "OllamaProxy", "ProxyMode"]
