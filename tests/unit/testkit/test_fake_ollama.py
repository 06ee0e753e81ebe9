"""The fake Ollama, as the real ``ollama`` client and raw HTTP see it."""

from __future__ import annotations

import hashlib
import http.client
import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import ollama
import pytest

from procos_testkit import BUSY_MESSAGE, Behaviour, FakeOllama
from procos_testkit.fake_ollama import generated_answer_chunks
from procos_testkit.httpkit import go_json

MODEL = "smollm2:135m"
FINAL_KEYS = [
    "model",
    "created_at",
    "message",
    "done",
    "done_reason",
    "total_duration",
    "load_duration",
    "prompt_eval_count",
    "prompt_eval_duration",
    "eval_count",
    "eval_duration",
]



def user(content: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": content}]


def ask(client: ollama.Client, content: str, stream: bool, model: str = MODEL) -> list[ollama.ChatResponse]:
    """All response objects of one chat, whether streamed or not."""
    if stream:
        return list(client.chat(model=model, messages=user(content), stream=True))
    return [client.chat(model=model, messages=user(content), stream=False)]


def chat_raw(fake: FakeOllama, content: str, stream: bool, **extra: object) -> httpx.Response:
    body = {"model": MODEL, "messages": user(content), "stream": stream, **extra}
    return httpx.post(f"{fake.base_url}/api/chat", json=body, timeout=30)


def test_root_version_tags_show(fake: FakeOllama) -> None:
    root = httpx.get(fake.base_url)
    assert (root.status_code, root.text) == (200, "Ollama is running")
    assert root.headers["content-type"] == "text/plain; charset=utf-8"
    assert httpx.get(f"{fake.base_url}/api/version").content == b'{"version":"0.24.0"}'
    client = ollama.Client(host=fake.base_url)
    assert MODEL in [m.model for m in client.list().models]
    details = client.show(MODEL).details
    assert details is not None and details.family == "llama"
    with pytest.raises(ollama.ResponseError) as err:
        client.show("nope")
    assert (err.value.status_code, err.value.error) == (404, "model 'nope' not found")
    assert fake.counts() == {"/": 1, "/api/version": 1, "/api/tags": 1, "/api/show": 2}


def test_chat_non_stream_is_one_object_in_ollama_field_order(fake: FakeOllama) -> None:
    raw = chat_raw(fake, "hello", stream=False)
    assert raw.headers["content-type"] == "application/json; charset=utf-8"
    assert list(json.loads(raw.content)) == FINAL_KEYS
    answer = ollama.Client(host=fake.base_url).chat(model=MODEL, messages=user("hello"), stream=False)
    assert answer.message.content == "This is a fake answer to: hello"
    assert answer.done and answer.done_reason == "stop"
    assert answer.eval_count and answer.prompt_eval_count and answer.total_duration
    assert fake.chat_calls == 2


def test_chat_stream_is_ndjson_ending_with_the_metrics(fake: FakeOllama) -> None:
    raw = chat_raw(fake, "word " * 100, stream=True)
    assert raw.headers["content-type"] == "application/x-ndjson"
    lines = [json.loads(line) for line in raw.content.splitlines()]
    assert all(list(line) == ["model", "created_at", "message", "done"] for line in lines[:-1])
    assert list(lines[-1]) == FINAL_KEYS
    assert lines[-1]["message"] == {"role": "assistant", "content": ""}
    parts = list(ollama.Client(host=fake.base_url).chat(model=MODEL, messages=user("word " * 100), stream=True))
    assert len(parts) > 2
    expected = "This is a fake answer to: " + ("word " * 100).strip()[:80]
    assert "".join(p.message.content or "" for p in parts) == expected
    assert parts[-1].done and parts[-1].done_reason == "stop" and parts[-1].eval_count


def test_strings_are_escaped_as_go_does() -> None:
    assert go_json("a<b>&c\u2028\u2029\n\t\b\f\x01é\x7f") == (
        '"a\\u003cb\\u003e\\u0026c\\u2028\\u2029\\n\\t\\b\\f\\u0001é\x7f"'.encode()
    )
    assert go_json("\x00") == b'"\\u0000"'
    assert go_json("x\ud800y") == b'"x\\ud800y"'


def test_fixed_answer_round_trips_through_the_client(fake: FakeOllama) -> None:
    text = 'quotes " back\\slash <tag> & \u2028 émoji 😀 \n'
    fake.set_behaviour(answer=text)
    client = ollama.Client(host=fake.base_url)
    assert client.chat(model=MODEL, messages=user("x"), stream=False).message.content == text
    streamed = client.chat(model=MODEL, messages=user("x"), stream=True)
    assert "".join(p.message.content or "" for p in streamed) == text


@pytest.mark.parametrize("stream", [False, True])
def test_unknown_model_is_404(fake: FakeOllama, stream: bool) -> None:
    with pytest.raises(ollama.ResponseError) as err:
        ask(ollama.Client(host=fake.base_url), "x", stream, model="nope")
    assert (err.value.status_code, err.value.error) == (404, "model 'nope' not found")


@pytest.mark.parametrize("stream", [False, True])
def test_busy_is_503_with_ollamas_text(fake: FakeOllama, stream: bool) -> None:
    fake.set_behaviour(status=503)
    with pytest.raises(ollama.ResponseError) as err:
        ask(ollama.Client(host=fake.base_url), "x", stream)
    assert (err.value.status_code, err.value.error) == (503, BUSY_MESSAGE)
    assert BUSY_MESSAGE == "server busy, please try again.  maximum pending requests exceeded"


def test_status_500_and_404_by_marker(fake: FakeOllama) -> None:
    client = ollama.Client(host=fake.base_url)
    for status in (500, 404):
        with pytest.raises(ollama.ResponseError) as err:
            client.chat(model=MODEL, messages=user(f"x [[fake:status={status}]]"), stream=False)
        assert err.value.status_code == status
    assert client.chat(model=MODEL, messages=user("no marker"), stream=False).done


def test_fail_first_n_then_succeed_counted_per_prompt(fake: FakeOllama) -> None:
    client = ollama.Client(host=fake.base_url)
    statuses = []
    for _ in range(3):
        try:
            client.chat(model=MODEL, messages=user("task 1 [[fake:fail_first_n=2]]"), stream=False)
            statuses.append(200)
        except ollama.ResponseError as exc:
            statuses.append(exc.status_code)
    assert statuses == [503, 503, 200]
    with pytest.raises(ollama.ResponseError):  # another prompt has its own count
        client.chat(model=MODEL, messages=user("task 2 [[fake:fail_first_n=1]]"), stream=False)
    assert fake.chat_calls == 4


def test_bad_requests_are_400(fake: FakeOllama) -> None:
    url = f"{fake.base_url}/api/chat"
    bad = httpx.post(url, content=b"xx")
    assert (bad.status_code, bad.json()) == (400, {"error": "invalid character 'x' looking for beginning of value"})
    assert httpx.post(url, content=b"").json() == {"error": "missing request body"}
    assert httpx.post(url, json={"messages": []}).json() == {"error": "model is required"}
    unknown = httpx.post(url, json={"model": MODEL, "messages": user("[[fake:dleay_ms=1]]")})
    assert unknown.status_code == 400 and "dleay_ms" in unknown.json()["error"]


@pytest.mark.parametrize("stream", [False, True])
def test_nul_and_surrogate_reach_the_client_as_json_escapes(fake: FakeOllama, stream: bool) -> None:
    client = ollama.Client(host=fake.base_url)
    for flag, char, escape in (("nul", "\x00", b"\\u0000"), ("surrogate", "\ud800", b"\\ud800")):
        prompt = f"x [[fake:{flag}]]"
        assert escape in chat_raw(fake, prompt, stream).content
        content = "".join(p.message.content or "" for p in ask(client, prompt, stream))
        assert char in content and content.replace(char, "") == "This is a fake answer to: x"


def test_delay_and_chunk_delay(fake: FakeOllama) -> None:
    client = ollama.Client(host=fake.base_url)
    start = time.monotonic()
    client.chat(model=MODEL, messages=user("[[fake:delay_ms=200]]"), stream=False)
    assert time.monotonic() - start >= 0.2
    start = time.monotonic()
    parts = list(client.chat(model=MODEL, messages=user("[[fake:chunk_delay_ms=50,chunk_chars=10]]"), stream=True))
    assert len(parts) >= 3 and time.monotonic() - start >= 0.1


def test_hang_until_the_client_gives_up_then_stop_is_quick(fake: FakeOllama) -> None:
    client = ollama.Client(host=fake.base_url, timeout=0.5)
    with pytest.raises(httpx.ReadTimeout):
        client.chat(model=MODEL, messages=user("[[fake:hang]]"), stream=False)
    start = time.monotonic()
    fake.stop()
    assert time.monotonic() - start < 2


@pytest.mark.parametrize("stream", [False, True])
def test_drop_cuts_the_response_half_way(fake: FakeOllama, stream: bool) -> None:
    client = ollama.Client(host=fake.base_url)
    with pytest.raises(httpx.RemoteProtocolError):
        ask(client, "a [[fake:drop,chunk_chars=5]]", stream)
    assert client.chat(model=MODEL, messages=user("after"), stream=False).done  # server still fine


def test_no_messages_loads_the_model(fake: FakeOllama) -> None:
    loaded = httpx.post(f"{fake.base_url}/api/chat", json={"model": MODEL, "messages": []}).json()
    assert loaded["done_reason"] == "load" and loaded["message"] == {"role": "assistant", "content": ""}


def test_format_json_gets_a_json_answer_and_done_reason_is_settable(fake: FakeOllama) -> None:
    answer = ollama.Client(host=fake.base_url).chat(
        model=MODEL, messages=user("q [[fake:done_reason=length]]"), format="json", stream=False
    )
    assert json.loads(answer.message.content or "") == {"answer": "q"}
    assert answer.done_reason == "length"


def test_max_in_flight_answers_busy() -> None:
    with FakeOllama(max_in_flight=1) as fake:
        client = ollama.Client(host=fake.base_url)
        slow = threading.Thread(target=client.chat, kwargs={"model": MODEL, "messages": user("[[fake:delay_ms=500]]")})
        slow.start()
        time.sleep(0.2)
        with pytest.raises(ollama.ResponseError) as err:
            client.chat(model=MODEL, messages=user("second"), stream=False)
        slow.join()
    assert err.value.status_code == 503


def test_keep_alive_serves_many_requests_on_one_connection(fake: FakeOllama) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", fake.port)
    for stream in (False, True, False):
        conn.request("POST", "/api/chat", body=json.dumps({"model": MODEL, "messages": user("k"), "stream": stream}))
        response = conn.getresponse()
        assert response.status == 200 and response.read()
    conn.close()
    assert fake.chat_calls == 3


def test_control_endpoints(fake: FakeOllama) -> None:
    assert httpx.post(f"{fake.base_url}/_fake/behaviour", json={"answer": "set"}).json()["answer"] == "set"
    assert ollama.Client(host=fake.base_url).chat(model=MODEL, messages=user("x")).message.content == "set"
    assert httpx.get(f"{fake.base_url}/_fake/counts").json() == {"/api/chat": 1}
    assert httpx.post(f"{fake.base_url}/_fake/behaviour", json={"nope": 1}).status_code == 400
    httpx.post(f"{fake.base_url}/_fake/reset")
    assert fake.chat_calls == 0


def test_behaviour_validates() -> None:
    with pytest.raises(ValueError):
        Behaviour(status=418)
    with pytest.raises(ValueError):
        Behaviour().with_marker("[[fake:delay_ms=soon]]")
    assert Behaviour().with_marker("a [[fake:nul, delay_ms=5]] b") == Behaviour(nul=True, delay_ms=5)


def test_concurrent_clients_are_counted_and_fast(fake: FakeOllama) -> None:
    clients, per_client = 4, 250

    def run(_: int) -> None:
        client = ollama.Client(host=fake.base_url)
        for _ in range(per_client):
            client.chat(model=MODEL, messages=user("benchmark prompt"), stream=False)

    start = time.monotonic()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(run, range(clients)))
    rate = clients * per_client / (time.monotonic() - start)
    print(f"fake ollama: {rate:.0f} chat requests/s with {clients} concurrent clients (same process)")
    assert fake.chat_calls == clients * per_client
    assert rate > 200


def _sha256(chunks: Iterator[bytes]) -> str:
    digest = hashlib.sha256()
    for chunk in chunks:
        digest.update(chunk)
    return digest.hexdigest()


def _status_kib(pid: int, field: str) -> int:
    """A memory figure from /proc/<pid>/status (VmRSS now, VmHWM peak), in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise AssertionError(f"no {field}")


@pytest.mark.timeout(180)
def test_64_mib_answer_arrives_intact_while_the_fake_stays_small() -> None:
    size = 64 * 1024 * 1024
    proc = subprocess.Popen(
        [sys.executable, "-m", "procos_testkit.fake_ollama", "--port", "0"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        base_url = proc.stdout.readline().split()[-1]
        # Measured after start-up: what the package imports is not the fake's doing.
        start_kib = _status_kib(proc.pid, "VmRSS")
        client = ollama.Client(host=base_url, timeout=120)
        expected = _sha256(generated_answer_chunks(size))
        prompt = user(f"big [[fake:answer_bytes={size}]]")
        single = client.chat(model=MODEL, messages=prompt, stream=False).message.content or ""
        assert len(single) == size
        assert hashlib.sha256(single.encode()).hexdigest() == expected
        del single
        streamed = hashlib.sha256()
        count = 0
        for part in client.chat(model=MODEL, messages=prompt, stream=True):
            data = (part.message.content or "").encode()
            streamed.update(data)
            count += len(data)
        assert (count, streamed.hexdigest()) == (size, expected)
        growth_kib = _status_kib(proc.pid, "VmHWM") - start_kib
        print(f"fake ollama: RSS {start_kib / 1024:.1f} MiB at start, peak +{growth_kib / 1024:.1f} MiB")
        assert growth_kib < 8 * 1024
    finally:
        proc.terminate()
        assert proc.wait(timeout=10) == 0
