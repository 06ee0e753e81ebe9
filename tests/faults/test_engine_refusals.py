"""Issue 9, item 1: an outcome the engine keeps refusing.

Camunda answers 500 with an engine exception when the transaction of ``complete`` or ``bpmnError`` fails
inside the engine: here an execution listener on the flow after the task that throws while the process
variable ``explode`` is true. That is not "engine unreachable" (connection refused, 502/503/504, which is
waited out): it is tried WORKER_REPORT_ATTEMPTS times, then the task gets an incident (failure, retries 0).
For a completion, the incident says the answer is stored and names its ai_context_id; once the cause is
fixed and the incident resolved (retries set), the task runs again and the stored answer is reused.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable
from typing import Any

import pytest

from procos_testkit.engine import EngineRest, example_bpmn
from procos_testkit.fake_ollama import FakeOllama
from procos_testkit.worker_process import WorkerProcess
from tests.faults.faultkit import task_of

pytestmark = pytest.mark.faults

# Throws (method not found) while 'explode' is true; a no-op once it is false.
LISTENER = ('<bpmn:extensionElements><camunda:executionListener event="take" '
            'expression="${explode ? execution.noSuchMethod() : null}" /></bpmn:extensionElements>')


def _process(engine: EngineRest, flow: str) -> tuple[str, str]:
    suffix = uuid.uuid4().hex[:10]
    topic, key = f"ai-refused-{suffix}", f"ai-refused-{suffix}"
    xml = example_bpmn(topic, key)
    source, target = {"to-review": ("ask-ai", "review-answer"), "to-rejected": ("input-invalid", "rejected")}[flow]
    plain = f'<bpmn:sequenceFlow id="{flow}" sourceRef="{source}" targetRef="{target}" />'
    assert plain in xml
    xml = xml.replace(plain, f'<bpmn:sequenceFlow id="{flow}" sourceRef="{source}" targetRef="{target}">'
                             f"{LISTENER}</bpmn:sequenceFlow>")
    engine.deploy(xml, key)
    return topic, key


def _set(engine: EngineRest, pi: str, name: str, value: Any) -> None:
    response = engine.session.put(f"{engine.base_url}/process-instance/{pi}/variables/{name}",
                                  json={"value": value, "type": "Boolean"}, timeout=10)
    assert response.status_code == 204, response.text


def _resolve(engine: EngineRest, task_id: str) -> None:
    response = engine.session.put(f"{engine.base_url}/external-task/{task_id}/retries", json={"retries": 1},
                                  timeout=10)
    assert response.status_code == 204, response.text


def test_refused_completion_becomes_an_incident_and_the_stored_answer_is_reused(
    engine_rest: EngineRest, fake: FakeOllama, spawn: Callable[..., WorkerProcess],
) -> None:
    topic, key = _process(engine_rest, "to-review")
    pi = engine_rest.start(key, {"query": "answer me once", "explode": True})
    task_id = str(task_of(engine_rest, pi)["externalTaskId"])
    worker = spawn(topic, OLLAMA_BASE_URL=fake.base_url, WORKER_REPORT_ATTEMPTS="3")

    incidents = engine_rest.wait_for(lambda: engine_rest.incidents(pi), timeout_s=60, what="an incident")
    message = incidents[0]["incidentMessage"]
    stored = worker.wait_for("task.stored", task_id=task_id)["ai_context_id"]
    assert "stored" in message and stored in message, message
    assert "ProcessEngineException" in message
    assert len(worker.find("task.report_refused", task_id=task_id)) == 3, "bounded: WORKER_REPORT_ATTEMPTS"
    assert engine_rest.get(f"/external-task/{task_id}")["retries"] == 0

    _set(engine_rest, pi, "explode", False)  # the cause fixed
    _resolve(engine_rest, task_id)  # the incident resolved: the task runs again
    engine_rest.wait_for(lambda: engine_rest.passed_task(pi), timeout_s=60, what="completion after the fix")
    assert engine_rest.variables(pi)["ai_context_id"]["value"] == stored
    assert worker.find("task.redelivered", task_id=task_id), "the stored answer was reused"
    assert fake.chat_calls == 1


def test_refused_bpmn_error_becomes_an_incident_naming_the_code(
    engine_rest: EngineRest, fake: FakeOllama, spawn: Callable[..., WorkerProcess],
) -> None:
    topic, key = _process(engine_rest, "to-rejected")
    pi = engine_rest.start(key, {"not_the_query": "x", "explode": True})
    task_id = str(task_of(engine_rest, pi)["externalTaskId"])
    worker = spawn(topic, OLLAMA_BASE_URL=fake.base_url, WORKER_REPORT_ATTEMPTS="2")

    incidents = engine_rest.wait_for(lambda: engine_rest.incidents(pi), timeout_s=60, what="an incident")
    message = incidents[0]["incidentMessage"]
    assert "AI_INPUT_INVALID" in message and re.search(r"refused .*2 times", message), message
    _set(engine_rest, pi, "explode", False)
    _resolve(engine_rest, task_id)
    engine_rest.wait_for(lambda: engine_rest.passed_task(pi, "rejected"), timeout_s=60, what="the error path")
    worker.wait_for("task.bpmn_error", timeout_s=10, task_id=task_id)  # logged just after the engine has it
