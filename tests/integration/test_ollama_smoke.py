"""Smoke tests against the real Ollama started by `stack/ollama.sh up` (no fakes).

They fail, naming Ollama, when the server is not reachable.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from dataclasses import dataclass

import ollama
import pytest

from procos_worker.settings import Settings

pytestmark = pytest.mark.integration


@dataclass(frozen=True)
class OllamaTarget:
    base_url: str
    model: str


@pytest.fixture(scope="module")
def target(settings: Settings) -> OllamaTarget:
    t = OllamaTarget(settings.ollama.base_url.rstrip("/"), settings.ollama.model)
    try:
        with urllib.request.urlopen(f"{t.base_url}/api/version", timeout=5) as resp:
            json.loads(resp.read())
    except (OSError, ValueError) as e:
        pytest.fail(
            f"Ollama is not reachable at {t.base_url} ({e}); start it with `stack/ollama.sh up`",
            pytrace=False,
        )
    return t


@pytest.fixture(scope="module")
def client(target: OllamaTarget) -> ollama.Client:
    # The client has no timeout by default; a hung server must not hang the suite.
    return ollama.Client(host=target.base_url, timeout=120)


def test_tags_lists_the_model(target: OllamaTarget) -> None:
    try:
        with urllib.request.urlopen(f"{target.base_url}/api/tags", timeout=10) as resp:
            tags = json.loads(resp.read())
    except urllib.error.URLError as e:
        pytest.fail(f"Ollama /api/tags failed: {e}")
    names = {m["name"] for m in tags["models"]}
    assert target.model in names, f"Ollama does not list {target.model!r}: {sorted(names)}"


def test_chat_returns_a_terminated_answer(client: ollama.Client, target: OllamaTarget) -> None:
    resp = client.chat(
        model=target.model,
        messages=[
            {"role": "system", "content": "You answer in one short sentence."},
            {"role": "user", "content": "What is the capital of France?"},
        ],
        options={"temperature": 0, "seed": 42, "num_predict": 128},
    )
    content = resp.message.content or ""
    assert content.strip(), "Ollama returned an empty answer"
    assert resp.message.role == "assistant"
    assert (resp.eval_count or 0) > 0
    assert resp.done is True
    # "stop" proves the ChatML template and stop tokens work: the model ended its turn itself.
    assert resp.done_reason == "stop", f"answer was not terminated: {content!r}"
    assert "<|im_end|>" not in content and "<|im_start|>" not in content
    assert "paris" in content.lower(), content


def test_num_predict_is_honoured(client: ollama.Client, target: OllamaTarget) -> None:
    resp = client.chat(
        model=target.model,
        messages=[{"role": "user", "content": "Write a long story about a dragon."}],
        options={"num_predict": 8, "seed": 1},
    )
    assert 0 < (resp.eval_count or 0) <= 8
    assert resp.done_reason == "length"


def test_streaming_chat_ends_with_stats(client: ollama.Client, target: OllamaTarget) -> None:
    chunks = list(
        client.chat(
            model=target.model,
            messages=[{"role": "user", "content": "Say hello."}],
            options={"num_predict": 16, "seed": 1},
            stream=True,
        )
    )
    assert len(chunks) > 1
    assert all(not c.done for c in chunks[:-1])
    last = chunks[-1]
    assert last.done is True
    assert last.done_reason in ("stop", "length")
    assert (last.eval_count or 0) > 0 and (last.eval_duration or 0) > 0
    assert "".join(c.message.content or "" for c in chunks).strip()


def test_unknown_model_is_a_404(client: ollama.Client) -> None:
    with pytest.raises(ollama.ResponseError) as exc:
        client.chat(model="no-such-model-procos:latest", messages=[{"role": "user", "content": "hi"}])
    assert exc.value.status_code == 404
