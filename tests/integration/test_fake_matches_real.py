"""The fake answers with the same shapes as the real Ollama, and the proxy passes the real one through.

Needs the real Ollama (OLLAMA_BASE_URL, the local stack's by default) with its model; fails, naming it,
when it is not there.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import ollama
import pytest

from procos_testkit import FakeOllama, OllamaProxy

MODEL = "smollm2:135m"
MESSAGES = [{"role": "user", "content": "Say hi"}]
CHAT: dict[str, Any] = {"model": MODEL, "messages": MESSAGES, "options": {"num_predict": 8}}

pytestmark = pytest.mark.integration




def shapes(base_url: str) -> dict[str, Any]:
    """Status, content type, framing and key order of what the worker sees; no values that vary."""
    out: dict[str, Any] = {}
    single = httpx.post(f"{base_url}/api/chat", json={**CHAT, "stream": False}, timeout=120)
    out["single"] = (single.status_code, single.headers["content-type"], list(single.json()))
    out["single.message"] = list(single.json()["message"])
    stream = httpx.post(f"{base_url}/api/chat", json={**CHAT, "stream": True}, timeout=120)
    lines = [json.loads(line) for line in stream.content.splitlines()]
    out["stream"] = (stream.status_code, stream.headers["content-type"], stream.headers.get("transfer-encoding"))
    out["stream.chunks"] = sorted({tuple(line) for line in lines[:-1]})
    out["stream.final"] = (list(lines[-1]), lines[-1]["message"])
    for name, body in {
        "unknown model": {**CHAT, "model": "nope"},
        "no model": {"messages": []},
        "bad json": b"xx",
        "empty body": b"",
    }.items():
        kwargs: dict[str, Any] = {"content": body} if isinstance(body, bytes) else {"json": body}
        error = httpx.post(f"{base_url}/api/chat", timeout=60, **kwargs)
        out[name] = (error.status_code, error.headers["content-type"], error.text)
    out["root"] = httpx.get(base_url).text
    out["version"] = httpx.get(f"{base_url}/api/version").text
    out["show"] = list(httpx.post(f"{base_url}/api/show", json={"model": MODEL}).json())
    tags = httpx.get(f"{base_url}/api/tags").json()["models"][0]
    out["tags"] = (list(tags), list(tags["details"]))
    return out


def test_fake_has_the_real_shapes(real_ollama: str, fake: FakeOllama) -> None:
    assert shapes(fake.base_url) == shapes(real_ollama)


def test_proxy_passes_the_real_ollama_through_and_counts(real_ollama: str) -> None:
    with OllamaProxy(real_ollama) as proxy:
        client = ollama.Client(host=proxy.base_url, timeout=120)
        single = client.chat(model=MODEL, messages=MESSAGES, options={"num_predict": 8}, stream=False)
        parts = list(client.chat(model=MODEL, messages=MESSAGES, options={"num_predict": 8}, stream=True))
        proxy.pause("503")
        with pytest.raises(ollama.ResponseError) as err:
            client.chat(model=MODEL, messages=MESSAGES)
        assert single.done and single.eval_count
        assert parts[-1].done and parts[-1].eval_count
        assert err.value.status_code == 503
        assert (proxy.count("/api/chat"), proxy.received("/api/chat")) == (2, 3)
