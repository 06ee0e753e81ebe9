"""Fetch order and filters on the real Camunda 7.24 engine: every WORKER_TOPIC_FETCH filter, priority
order, creation-time order (both directions), per-topic lock durations, and the heartbeat honouring them.

The engine client is built exactly as the worker builds it (``fetch.subscriptions`` / ``fetch_order``
from ``WorkerSettings``); a fetch locks what it returns, so every fetch here is followed by an unlock.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Any

import pytest

from procos_testkit.engine import EngineRest, one_task_bpmn, wait_until
from procos_testkit.fake_ollama import FakeOllama
from procos_worker.engine.client import EngineClient
from procos_worker.engine.fetch import fetch_order, subscriptions
from procos_worker.models import Task
from procos_worker.settings import Settings, TopicFetch, WorkerSettings

pytestmark = pytest.mark.integration


class World:
    """One topic served by process definitions A (no tenant, and tenants t1, t2), B and C (version tag v2)."""

    def __init__(self, engine: EngineRest) -> None:
        suffix = uuid.uuid4().hex[:8]
        self.engine = engine
        self.topic = f"fleet-filters-{suffix}"
        self.a, self.b, self.c = (f"fleet-{x}-{suffix}" for x in "abc")
        prio = "${prio}"
        engine.deploy(one_task_bpmn(self.a, self.topic, priority=prio), self.a)
        engine.deploy(one_task_bpmn(self.a, self.topic, priority=prio), f"{self.a}-t1", tenant_id="t1")
        engine.deploy(one_task_bpmn(self.a, self.topic, priority=prio), f"{self.a}-t2", tenant_id="t2")
        engine.deploy(one_task_bpmn(self.b, self.topic, priority=prio), self.b)
        engine.deploy(one_task_bpmn(self.c, self.topic, priority=prio, version_tag="v2"), self.c)
        self.instances = [
            engine.start(self.a, {"region": "eu", "prio": 10}, business_key="a-1"),
            engine.start(self.a, {"region": "us", "prio": 50}, business_key="a-2"),
            engine.start(self.b, {"region": "eu", "prio": 30, "team": "red"}, business_key="b-1"),
            engine.start(self.c, {"region": "us", "prio": 20}, business_key="c-1"),
            engine.start(self.a, {"region": "eu", "prio": 40}, business_key="t1-1", tenant_id="t1"),
            engine.start(self.a, {"region": "eu", "prio": 0, "size": {"value": 3, "type": "Integer"}},
                         business_key="t2-1", tenant_id="t2"),
        ]

    def close(self) -> None:
        for pi in self.instances:
            self.engine.delete_instance(pi)


@pytest.fixture(scope="module")
def world(engine_rest: EngineRest) -> Iterator[World]:
    created = World(engine_rest)
    yield created
    created.close()


def _fetch(settings: Settings, topic: str, max_tasks: int = 100, **worker: Any) -> list[Task]:
    """One fetch as the worker makes it, with WORKER_* fields ``worker``; everything fetched is unlocked."""
    w = WorkerSettings(id=f"fleet-{uuid.uuid4().hex[:8]}", topics=[topic], async_response_timeout_ms=0, **worker)
    client = EngineClient(settings.camunda, w.id, async_response_timeout_ms=0, order=fetch_order(w))
    try:
        tasks = client.fetch_and_lock(subscriptions(w, ["query"]), max_tasks=max_tasks)
        for task in tasks:
            client.unlock(task.id)
        return tasks
    finally:
        client.close()


def _one_by_one(settings: Settings, topic: str, count: int, **worker: Any) -> list[str]:
    """Business keys in the order single-task fetches return them (each stays locked until the end)."""
    w = WorkerSettings(id=f"fleet-{uuid.uuid4().hex[:8]}", topics=[topic], async_response_timeout_ms=0, **worker)
    client = EngineClient(settings.camunda, w.id, async_response_timeout_ms=0, order=fetch_order(w))
    got: list[Task] = []
    try:
        for _ in range(count):
            got += client.fetch_and_lock(subscriptions(w, ["query"]), max_tasks=1)
    finally:
        for task in got:
            client.unlock(task.id)
        client.close()
    return [str(t.business_key) for t in got]


@pytest.mark.parametrize(
    ("fetch", "expected"),
    [
        ({}, {"a-1", "a-2", "b-1", "c-1", "t1-1", "t2-1"}),
        ({"process_definition_key": "A"}, {"a-1", "a-2", "t1-1", "t2-1"}),
        ({"processDefinitionKeyIn": ["B", "C"]}, {"b-1", "c-1"}),  # Camunda's own names work too
        ({"tenant_id_in": ["t1"]}, {"t1-1"}),
        ({"tenant_id_in": ["t1", "t2"]}, {"t1-1", "t2-1"}),
        ({"without_tenant_id": True}, {"a-1", "a-2", "b-1", "c-1"}),
        ({"business_key": "a-2"}, {"a-2"}),
        ({"process_variables": {"region": "eu"}}, {"a-1", "b-1", "t1-1", "t2-1"}),
        # Camunda 7.24 ORs several variables: a task matches when ANY of them has its value.
        ({"process_variables": {"region": "us", "team": "red"}}, {"a-2", "c-1", "b-1"}),
        # A JSON number is an Integer to the engine: it matches Integer variables, never a Long one.
        ({"process_variables": {"size": 3}}, {"t2-1"}),
        ({"process_variables": {"prio": 30}}, set()),
        ({"process_definition_version_tag": "v2"}, {"c-1"}),
        ({"process_definition_key": "A", "without_tenant_id": True, "process_variables": {"region": "us"}}, {"a-2"}),
    ],
    ids=["none", "key", "key-in", "tenant", "tenants", "without-tenant", "business-key", "variable",
         "variables-any", "integer-variable", "long-never-matches", "version-tag", "combined"],
)
def test_each_filter_returns_only_its_tasks(settings: Settings, world: World, fetch: dict[str, Any],
                                            expected: set[str]) -> None:
    names = {"A": world.a, "B": world.b, "C": world.c}
    resolved = {k: (names.get(v, v) if isinstance(v, str) else [names.get(x, x) for x in v] if isinstance(v, list)
                    else v) for k, v in fetch.items()}
    tasks = _fetch(settings, world.topic, topic_fetch={world.topic: resolved})
    assert {t.business_key for t in tasks} == expected
    assert all(t.topic == world.topic for t in tasks)


def test_priority_order(settings: Settings, world: World) -> None:
    order = _one_by_one(settings, world.topic, 6, use_priority=True)
    assert order == ["a-2", "t1-1", "b-1", "c-1", "a-1", "t2-1"]  # prio 50, 40, 30, 20, 10, 0


def test_create_time_order_both_ways_and_under_priority(settings: Settings, engine_rest: EngineRest) -> None:
    topic = f"fleet-order-{uuid.uuid4().hex[:8]}"
    key = topic
    engine_rest.deploy(one_task_bpmn(key, topic, priority="${prio}"), key)
    instances = []
    for name, prio in (("first", 5), ("second", 9), ("third", 5), ("fourth", 5)):
        instances.append(engine_rest.start(key, {"prio": prio}, business_key=name))
        time.sleep(0.02)  # createTime has millisecond resolution
    try:
        plain = {"use_priority": False}
        assert _one_by_one(settings, topic, 4, create_time_order="asc", **plain) == [
            "first", "second", "third", "fourth"]
        assert _one_by_one(settings, topic, 4, create_time_order="desc", **plain) == [
            "fourth", "third", "second", "first"]
        # Priority first, then creation time among equal priorities.
        assert _one_by_one(settings, topic, 4, use_priority=True, create_time_order="asc") == [
            "second", "first", "third", "fourth"]
        assert _one_by_one(settings, topic, 4, use_priority=True, create_time_order="desc") == [
            "second", "fourth", "third", "first"]
    finally:
        for pi in instances:
            engine_rest.delete_instance(pi)


def _lock_expiry_s(engine: EngineRest, task_id: str) -> float | None:
    """Seconds until the engine's lockExpirationTime of the task (None when unlocked or gone)."""
    response = engine.session.get(f"{engine.base_url}/external-task/{task_id}", timeout=10)
    if response.status_code == 404:
        return None
    expiry = response.json().get("lockExpirationTime")
    if expiry is None:
        return None
    return datetime.strptime(expiry, "%Y-%m-%dT%H:%M:%S.%f%z").timestamp() - time.time()


def test_per_topic_lock_duration_and_extra_variables(settings: Settings, engine_rest: EngineRest) -> None:
    short, long_ = (f"fleet-lock-{x}-{uuid.uuid4().hex[:6]}" for x in ("short", "long"))
    for topic in (short, long_):
        engine_rest.deploy(one_task_bpmn(topic, topic), topic)
    instances = [engine_rest.start(short, {"query": "q", "note": "extra", "other": "not asked"}),
                 engine_rest.start(long_, {"query": "q", "note": "extra"})]
    w = WorkerSettings(id=f"fleet-{uuid.uuid4().hex[:8]}", topics=[short, long_], lock_duration_ms=60_000,
                       topic_fetch={short: {"lock_duration_ms": 5_000, "variables": ["note"]}})
    client = EngineClient(settings.camunda, w.id, async_response_timeout_ms=0, order=fetch_order(w))
    try:
        tasks = {t.topic: t for t in client.fetch_and_lock(subscriptions(w, ["query"]), max_tasks=10)}
        assert set(tasks) == {short, long_}
        short_left = _lock_expiry_s(engine_rest, tasks[short].id)
        long_left = _lock_expiry_s(engine_rest, tasks[long_].id)
        assert short_left is not None and 1 < short_left <= 5.5, short_left
        assert long_left is not None and 50 < long_left <= 60.5, long_left
        assert set(tasks[short].variables) == {"query", "note"}  # the inputs, and the topic's extra variable
        assert set(tasks[long_].variables) == {"query"}
        for task in tasks.values():
            client.unlock(task.id)
    finally:
        client.close()
        for pi in instances:
            engine_rest.delete_instance(pi)


def test_heartbeat_extends_each_task_by_its_topics_lock(
    engine_rest: EngineRest, run_worker: Callable[..., Any],
) -> None:
    """A 3 s lock on one topic, 60 s on the other: the slow task on the short topic is extended by 3 s at a
    time (never by 60 s) and completes; the other keeps its 60 s lock."""
    short, long_ = (f"fleet-hb-{x}-{uuid.uuid4().hex[:6]}" for x in ("short", "long"))
    for topic in (short, long_):
        engine_rest.deploy(one_task_bpmn(topic, topic), topic)
    with FakeOllama() as fake:
        slow = "slow [[fake:delay_ms=9000]]"
        pi_short = engine_rest.start(short, {"query": slow})
        pi_long = engine_rest.start(long_, {"query": slow})
        running = run_worker(short, worker={"topics": [short, long_], "lock_duration_ms": 60_000,
                                            "topic_fetch": {short: TopicFetch(lock_duration_ms=3_000)}},
                             ollama={"base_url": fake.base_url})
        task_short = wait_until(lambda: engine_rest.external_tasks(processInstanceId=pi_short, locked="true"),
                                30, "the short-lock task locked")[0]["id"]
        task_long = wait_until(lambda: engine_rest.external_tasks(processInstanceId=pi_long, locked="true"),
                               30, "the long-lock task locked")[0]["id"]
        seen_short: list[float] = []
        seen_long: list[float] = []
        while engine_rest.external_tasks(processInstanceId=pi_short):
            for task_id, seen in ((task_short, seen_short), (task_long, seen_long)):
                left = _lock_expiry_s(engine_rest, task_id)
                if left is not None:
                    seen.append(left)
            time.sleep(0.3)
        wait_until(lambda: not engine_rest.external_tasks(processInstanceId=pi_long), 30, "the long task done")
    assert running.worker.counters.completed == 2 and running.worker.counters.abandoned == 0
    assert len(seen_short) >= 10, seen_short  # ~9 s of a 3 s lock: it was extended several times
    assert max(seen_short) <= 3.5, seen_short  # extended by 3 s, never by the worker-wide 60 s
    assert min(seen_long) > 40, seen_long  # the 60 s lock needed no extension within 9 s
