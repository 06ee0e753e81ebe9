"""The counting proxy, in front of a fake Ollama upstream."""

from __future__ import annotations

import hashlib
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import ollama
import pytest

from procos_testkit import BUSY_MESSAGE, FakeOllama, OllamaProxy
from procos_testkit.fake_ollama import generated_answer_chunks

MODEL = "smollm2:135m"



@pytest.fixture
def proxy(fake: FakeOllama) -> Iterator[OllamaProxy]:
    with OllamaProxy(fake.base_url) as server:
        yield server


def user(content: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": content}]


def test_forwards_unchanged_and_counts_per_path(fake: FakeOllama, proxy: OllamaProxy) -> None:
    for path in ("/", "/api/version", "/api/tags"):
        direct, proxied = httpx.get(fake.base_url + path), httpx.get(proxy.base_url + path)
        assert (proxied.status_code, proxied.content) == (direct.status_code, direct.content)
        assert proxied.headers["content-type"] == direct.headers["content-type"]
    client = ollama.Client(host=proxy.base_url)
    assert client.chat(model=MODEL, messages=user("hi"), stream=False).message.content == (
        "This is a fake answer to: hi"
    )
    streamed = list(client.chat(model=MODEL, messages=user("streamed " * 20), stream=True))
    assert len(streamed) > 2 and streamed[-1].done
    with pytest.raises(ollama.ResponseError) as err:
        client.chat(model="nope", messages=user("x"))
    assert (err.value.status_code, err.value.error) == (404, "model 'nope' not found")
    assert proxy.count("/api/chat") == fake.chat_calls == 3
    assert proxy.count("/api/tags") == 1 and proxy.count("/api/show") == 0


def test_streams_chunks_as_they_come(fake: FakeOllama, proxy: OllamaProxy) -> None:
    fake.set_behaviour(chunk_delay_ms=150, chunk_chars=10)
    client = ollama.Client(host=proxy.base_url)
    start = time.monotonic()
    first = next(iter(client.chat(model=MODEL, messages=user("slow"), stream=True)))
    assert first.message.content and time.monotonic() - start < 0.14  # not buffered to the end


def test_big_answer_passes_intact(proxy: OllamaProxy) -> None:
    size = 8 * 1024 * 1024
    answer = ollama.Client(host=proxy.base_url).chat(
        model=MODEL, messages=user(f"[[fake:answer_bytes={size}]]"), stream=False
    )
    digest = hashlib.sha256()
    for chunk in generated_answer_chunks(size):
        digest.update(chunk)
    assert hashlib.sha256((answer.message.content or "").encode()).hexdigest() == digest.hexdigest()


def test_pause_503_answers_busy_without_asking_upstream(fake: FakeOllama, proxy: OllamaProxy) -> None:
    client = ollama.Client(host=proxy.base_url)
    proxy.pause("503")
    with pytest.raises(ollama.ResponseError) as err:
        client.chat(model=MODEL, messages=user("x"))
    assert (err.value.status_code, err.value.error) == (503, BUSY_MESSAGE)
    proxy.resume()
    assert client.chat(model=MODEL, messages=user("x")).done
    assert (proxy.received("/api/chat"), proxy.count("/api/chat"), fake.chat_calls) == (2, 1, 1)


def test_pause_refuse_refuses_connections_then_resumes_on_the_same_port(proxy: OllamaProxy) -> None:
    client = ollama.Client(host=proxy.base_url)
    assert client.chat(model=MODEL, messages=user("before")).done  # leaves a kept-alive connection
    port = proxy.port
    proxy.pause("refuse")
    with pytest.raises(ConnectionError):
        client.chat(model=MODEL, messages=user("while down"))
    with pytest.raises(httpx.ConnectError):
        httpx.get(proxy.base_url)
    proxy.resume()
    assert proxy.port == port
    assert client.chat(model=MODEL, messages=user("after")).done
    assert proxy.count("/api/chat") == 2


def test_refuse_cuts_a_response_in_flight(fake: FakeOllama, proxy: OllamaProxy) -> None:
    fake.set_behaviour(chunk_delay_ms=100, chunk_chars=5)
    parts = iter(ollama.Client(host=proxy.base_url).chat(model=MODEL, messages=user("long answer"), stream=True))
    next(parts)
    proxy.pause("refuse")
    with pytest.raises(httpx.RemoteProtocolError):
        list(parts)


def test_upstream_down_is_502() -> None:
    with FakeOllama() as gone:
        url = gone.base_url
    with OllamaProxy(url) as proxy:
        response = httpx.get(f"{proxy.base_url}/api/version")
    assert response.status_code == 502 and response.json()["error"].startswith("proxy: upstream")


def test_upstream_dropping_mid_answer_is_passed_on(proxy: OllamaProxy) -> None:
    client = ollama.Client(host=proxy.base_url)
    with pytest.raises(httpx.RemoteProtocolError):
        list(client.chat(model=MODEL, messages=user("x [[fake:drop,chunk_chars=5]]"), stream=True))
    assert client.chat(model=MODEL, messages=user("after")).done


def test_concurrent_clients_are_all_counted(fake: FakeOllama, proxy: OllamaProxy) -> None:
    def run(_: int) -> None:
        client = ollama.Client(host=proxy.base_url)
        for _ in range(50):
            client.chat(model=MODEL, messages=user("p"), stream=False)

    start = time.monotonic()
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(run, range(4)))
    print(f"proxy + fake: {200 / (time.monotonic() - start):.0f} chat requests/s with 4 clients")
    assert proxy.count("/api/chat") == fake.chat_calls == 200


def test_control_endpoints(fake: FakeOllama, proxy: OllamaProxy) -> None:
    assert httpx.post(f"{proxy.base_url}/_proxy/mode", json={"mode": "503"}).json() == {"mode": "503"}
    assert httpx.get(f"{proxy.base_url}/api/version").status_code == 503
    assert httpx.post(f"{proxy.base_url}/_proxy/mode", json={"mode": "refuse"}).status_code == 400
    httpx.post(f"{proxy.base_url}/_proxy/mode", json={"mode": "pass"})
    assert httpx.get(f"{proxy.base_url}/api/version").status_code == 200
    counts = httpx.get(f"{proxy.base_url}/_proxy/counts").json()
    assert counts == {"forwarded": {"/api/version": 1}, "received": {"/api/version": 2}, "mode": "pass"}
    httpx.post(f"{proxy.base_url}/_proxy/reset")
    assert proxy.counts() == {"forwarded": {}, "received": {}}


@pytest.mark.timeout(60)
def test_runs_as_a_process_with_signals(fake: FakeOllama) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "procos_testkit.ollama_proxy", "--port", "0", "--upstream", fake.base_url],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        base_url = proc.stdout.readline().split()[-1]
        assert httpx.get(f"{base_url}/api/version").json() == {"version": "0.24.0"}
        proc.send_signal(signal.SIGUSR1)
        _wait_for(lambda: _state(base_url) == "refused")
        proc.send_signal(signal.SIGUSR2)
        _wait_for(lambda: _state(base_url) == "ok")
        assert httpx.get(f"{base_url}/_proxy/counts").json()["forwarded"]["/api/version"] >= 2
    finally:
        proc.terminate()
        assert proc.wait(timeout=10) == 0


def _state(base_url: str) -> str:
    """ "ok", "refused", or "other" (a reset while the listener closes)."""
    try:
        httpx.get(f"{base_url}/api/version").raise_for_status()
    except httpx.ConnectError:
        return "refused"
    except httpx.HTTPError:
        return "other"
    return "ok"


def _wait_for(condition: object, timeout_s: float = 5.0) -> None:
    assert callable(condition)
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)
