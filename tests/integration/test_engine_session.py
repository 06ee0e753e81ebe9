"""One keep-alive session for every engine call: counted as TCP connections at a proxy in front of the
real engine (procos_testkit's counting proxy accepts each connection once, however many requests it
carries)."""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from procos_testkit.engine import EngineRest, one_task_bpmn, wait_until
from procos_testkit.fake_ollama import FakeOllama
from procos_testkit.ollama_proxy import OllamaProxy
from procos_worker.engine.client import EngineClient
from procos_worker.engine.fetch import Subscription
from procos_worker.engine.variables import VariableLoader
from procos_worker.settings import Settings

pytestmark = pytest.mark.integration


@pytest.fixture()
def engine_proxy(settings: Settings) -> Iterator[OllamaProxy]:
    root = settings.camunda.base_url.removesuffix("/engine-rest")
    with OllamaProxy(root, upstream_timeout_s=60) as proxy:
        yield proxy


def test_every_kind_of_call_shares_one_connection(settings: Settings, engine_rest: EngineRest,
                                                  engine_proxy: OllamaProxy) -> None:
    topic, key = engine_rest.deploy_example()
    instances = [engine_rest.start(key, {"query": f"q{i}"}) for i in range(4)]
    client = EngineClient(settings.camunda.model_copy(update={"base_url": f"{engine_proxy.base_url}/engine-rest"}),
                          "fleet-session", async_response_timeout_ms=0)
    try:
        tasks = client.fetch_and_lock([Subscription(topic, 30_000, ("query",))], max_tasks=4)  # the library
        assert len(tasks) == 4
        for task in tasks:
            client.extend_lock(task.id, 30_000)  # ours
        first, second, third, fourth = tasks
        client.complete(first.id, {"ai_response_stored": True})  # the library
        client.handle_failure(second.id, message="m", details="d", retries=1, retry_timeout_ms=60_000)  # library
        client.handle_bpmn_error(third.id, code="AI_INPUT_INVALID", message="m")  # the library
        client.unlock(fourth.id)  # ours
        assert client.locked_task_ids() == [second.id]  # ours (a failure holds the task until its retryTimeout)
        assert client.engine_name() == "default"  # ours
    finally:
        client.close()
        for pi in instances:
            if engine_rest.external_tasks(processInstanceId=pi):
                engine_rest.delete_instance(pi)
    counts = engine_proxy.counts()["forwarded"]
    assert sum(counts.values()) == 11, counts  # fetch, 4 extendLock, complete, failure, bpmnError, unlock, 2 GETs
    assert engine_proxy.accepted == 1, f"{engine_proxy.accepted} TCP connections for 11 calls"


def test_a_busy_worker_keeps_its_connections(settings: Settings, engine_rest: EngineRest,
                                             engine_proxy: OllamaProxy, run_worker: Callable[..., Any]) -> None:
    """20 tasks, 4 in flight (instant fake LLM): the pool holds at most 4 + 3 connections, far fewer than calls."""
    topic = key = f"fleet-pool-{engine_proxy.port}"
    engine_rest.deploy(one_task_bpmn(key, topic), key)
    instances = [engine_rest.start(key, {"query": f"q{i}"}) for i in range(20)]
    with FakeOllama() as fake:
        running = run_worker(topic, camunda={"base_url": f"{engine_proxy.base_url}/engine-rest"},
                             ollama={"base_url": fake.base_url}, worker={"max_tasks_in_flight": 4})
        wait_until(lambda: all(not engine_rest.external_tasks(processInstanceId=pi) for pi in instances), 120,
                   "all 20 tasks completed")
        running.stop()
    calls = sum(engine_proxy.counts()["forwarded"].values())
    assert running.worker.counters.completed == 20
    assert calls >= 25, calls  # a fetch or more per batch, a complete per task, the shutdown sweep
    assert engine_proxy.accepted <= 4 + 3, f"{engine_proxy.accepted} TCP connections for {calls} calls"


def test_a_fetch_with_values_brings_small_ones_and_stops_reading_a_large_answer(
        settings: Settings, engine_rest: EngineRest) -> None:
    """What the real engine sends (a Bytes value as base64, a File without content), and an answer over
    the limit: not read, its task locked by this worker id until it is unlocked."""
    topic, key = engine_rest.deploy_example()
    small = engine_rest.start(key, {"query": "q", "context": {"value": "YWJj", "type": "Bytes"},
                                    "doc": {"value": "ZmlsZQ==", "type": "File",
                                            "valueInfo": {"filename": "a.txt", "mimeType": "text/plain"}}})
    client = EngineClient(settings.camunda, f"values-{uuid.uuid4().hex[:8]}", async_response_timeout_ms=0)
    large = ""
    try:
        names = ("context", "doc", "query")
        (task,) = client.fetch_and_lock([Subscription(topic, 30_000, names)], max_tasks=1,
                                        max_answer_bytes=1_048_576) or []
        assert task.fetched_variables == frozenset(names)
        assert (task.variables["context"].type, task.variables["context"].value) == ("Bytes", "YWJj")
        assert (task.variables["doc"].type, task.variables["doc"].value) == ("File", None)
        sized = VariableLoader(client, settings.task).measure(task, list(names))
        assert sized.task.variables["context"].value == b"abc", "decoded from base64"
        assert sized.task.variables["doc"].instance_id, "a File is read from its instance"
        assert VariableLoader(client, settings.task).load(sized).variables["doc"].value == b"file"
        bare = dataclasses.replace(task, variables={}, fetched_variables=frozenset())
        only = VariableLoader(client, settings.task).measure(bare, ["query"])
        assert set(only.task.variables) == {"query"}, "only the names asked for (7.24 ignores variableNameIn)"
        client.complete(task.id, {})

        large = engine_rest.start(key, {"query": "q", "context": "y" * 3_000})
        assert client.fetch_and_lock([Subscription(topic, 30_000, names)], max_tasks=1,
                                     max_answer_bytes=2_000) is None
        (locked,) = client.locked_task_ids()
        client.unlock(locked)
        (again,) = client.fetch_and_lock([Subscription(topic, 30_000, ())], max_tasks=1) or []
        assert again.id == locked and not again.variables
        client.complete(again.id, {})
    finally:
        client.close()
        for pi in (small, large):
            if pi and engine_rest.external_tasks(processInstanceId=pi):
                engine_rest.delete_instance(pi)
