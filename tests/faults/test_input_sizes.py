"""Issue 9, item 5: poison input can't kill replicas one after another.

Sizes are checked before anything is decoded: the worker reads its input variables' metadata first (the
engine's serialized values; for a Bytes variable only its length) and refuses an input over
TASK_MAX_INPUT_CHARS with the BPMN error AI_INPUT_INVALID without downloading it. fetchAndLock carries a
Bytes variable inline as base64: before issue 9 a 300 MB one became a 400 MB answer held several times
over, and every worker that fetched the task again went down the same way. Now a fetch answer with
values is read only up to WORKER_FETCH_VALUES_MAX_BYTES per task: a larger one is dropped, its tasks
handed back and fetched again without values (sizes first).

And the tasks in flight share one budget (TASK_MAX_INPUT_CHARS_IN_FLIGHT): large inputs wait for each
other instead of all being held at once.

The 300 MB variable goes to an engine of the test's own (H2, its own heap): the shared engine's 512 MB
heap is not for that.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path

import pytest

from procos_bench.procs import RssSampler, read_status_kib
from procos_testkit.engine import EngineRest, example_bpmn
from procos_testkit.fake_ollama import FakeOllama
from procos_testkit.private_engine import PrivateEngine
from procos_testkit.worker_process import WorkerProcess
from tests.faults.faultkit import ended_at

pytestmark = pytest.mark.faults

POISON_BYTES = 300_000_000
RSS_RATIO_LIMIT = 4.0


@pytest.fixture()
def private_engine(tmp_path: Path) -> Iterator[EngineRest]:
    with PrivateEngine(heap="2g", log_path=tmp_path / "private-engine.log") as engine:
        yield EngineRest(engine.rest_url, timeout_s=300)


def _upload_bytes(engine: EngineRest, pi: str, name: str, data: bytes) -> None:
    uploaded = engine.session.post(f"{engine.base_url}/process-instance/{pi}/variables/{name}/data",
                                   files={"data": (f"{name}.bin", data, "application/octet-stream")},
                                   data={"valueType": "Bytes"}, timeout=600)
    assert uploaded.status_code == 204, uploaded.text


def _deploy(engine: EngineRest) -> tuple[str, str]:
    """The example process; its error boundary event keeps the BPMN error's code and message."""
    suffix = uuid.uuid4().hex[:10]
    topic, key = f"ai-sizes-{suffix}", f"ai-sizes-{suffix}"
    engine.deploy(example_bpmn(topic, key).replace(
        '<bpmn:errorEventDefinition errorRef="ai-input-invalid" />',
        '<bpmn:errorEventDefinition errorRef="ai-input-invalid" camunda:errorCodeVariable="ai_error_code" '
        'camunda:errorMessageVariable="ai_error_message" />'), key)
    return topic, key


def test_300_mb_bytes_variable_is_refused_from_its_length(
    private_engine: EngineRest, fake: FakeOllama, spawn: Callable[..., WorkerProcess],
) -> None:
    topic, key = _deploy(private_engine)
    pi = private_engine.start(key, {"query": "placeholder"})
    _upload_bytes(private_engine, pi, "query", b"p" * POISON_BYTES)

    worker = spawn(topic, CAMUNDA_BASE_URL=private_engine.base_url, OLLAMA_BASE_URL=fake.base_url,
                   WORKER_LOCK_DURATION_MS="60000", CAMUNDA_HTTP_TIMEOUT_S="300")
    worker.wait_for("worker.started")
    time.sleep(1.0)
    idle_kib = read_status_kib(worker.pid, "VmRSS")
    sampler = RssSampler(worker.pid).start()
    private_engine.wait_for(lambda: ended_at(private_engine, pi, "rejected"), timeout_s=300,
                            what="the BPMN error path (end event 'rejected')")
    peak_kib = sampler.stop()

    variables = private_engine.variables(pi)
    assert variables["ai_error_code"]["value"] == "AI_INPUT_INVALID"
    assert "TASK_MAX_INPUT_CHARS" in variables["ai_error_message"]["value"]
    assert fake.chat_calls == 0
    assert worker.find("engine.fetch_answer_too_large"), "the fetch with values was dropped unread"
    ratio = peak_kib / idle_kib
    assert ratio < RSS_RATIO_LIMIT, f"peak RSS {peak_kib / 1024:.0f} MiB = {ratio:.2f} x idle {idle_kib / 1024:.0f} MiB"
    assert worker.alive


def _stamp(event: dict[str, object]) -> float:
    return datetime.fromisoformat(str(event["timestamp"]).replace("Z", "+00:00")).timestamp()


def test_large_inputs_in_flight_share_one_budget(
    engine_rest: EngineRest, fake: FakeOllama, spawn: Callable[..., WorkerProcess],
) -> None:
    """Two 12 MB inputs, a 20 M budget for all tasks in flight, 4 slots: one after the other."""
    topic, key = _deploy(engine_rest)
    pis = []
    for i in range(2):
        pi = engine_rest.start(key, {"query": "placeholder"})
        _upload_bytes(engine_rest, pi, "query", f"[[fake:delay_ms=3000]] {i} ".encode() + b"q" * 12_000_000)
        pis.append(pi)
    fake.context_length = 16_000_000  # 12 MB prompts must fit the model's context (else AI_PROMPT_TOO_LONG)
    worker = spawn(topic, OLLAMA_BASE_URL=fake.base_url, WORKER_MAX_TASKS_IN_FLIGHT="4",
                   TASK_MAX_INPUT_CHARS_IN_FLIGHT="20000000", WORKER_LOCK_DURATION_MS="30000",
                   TASK_TOPIC_DEFAULTS=json.dumps({topic: {"procos.options": '{"num_ctx": 16000000}'}}))
    worker.wait_for("task.completed", count=2, timeout_s=120)
    spans = []
    for event in worker.find("task.completed"):
        task_id = event["task_id"]
        began = worker.find("task.input_stored", task_id=task_id)[0]
        spans.append((_stamp(began), _stamp(event)))
    spans.sort()
    tail = worker.text()[-6000:]
    assert spans[0][1] <= spans[1][0], f"the second input was held while the first was: {spans}\n{tail}"
    assert worker.find("task.waiting_for_memory")
