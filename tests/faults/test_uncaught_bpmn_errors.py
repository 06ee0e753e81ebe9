"""Issue 9, item 8: a BPMN error nobody catches.

Camunda 7 ends an execution silently when a BPMN error has no catching event: the instance is COMPLETED,
no end event reached, no incident. Before throwing a BPMN error the worker reads the process definition's
BPMN XML (cached per definition) and checks that the code is caught: by a boundary event on the task or on
an enclosing subprocess, or by an error event subprocess (a catch-all error event counts). If nothing
catches it, the task gets an incident naming the code and the reason instead.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable

import pytest

from procos_testkit.engine import EngineRest
from procos_testkit.fake_ollama import FakeOllama
from procos_testkit.worker_process import WorkerProcess

pytestmark = pytest.mark.faults

_HEAD = """<?xml version="1.0" encoding="UTF-8"?>
<bpmn:definitions xmlns:bpmn="http://www.omg.org/spec/BPMN/20100524/MODEL"
                  xmlns:camunda="http://camunda.org/schema/1.0/bpmn" id="d-{key}" targetNamespace="http://procos.test">
  <bpmn:error id="invalid" errorCode="AI_INPUT_INVALID" />
  <bpmn:error id="other" errorCode="SOMETHING_ELSE" />
  <bpmn:process id="{key}" isExecutable="true" camunda:historyTimeToLive="P1D">
"""
_TAIL = """
    <bpmn:userTask id="review-answer"><bpmn:incoming>to-review</bpmn:incoming></bpmn:userTask>
    <bpmn:endEvent id="rejected"><bpmn:incoming>to-rejected</bpmn:incoming></bpmn:endEvent>
    <bpmn:sequenceFlow id="to-rejected" sourceRef="catcher" targetRef="rejected" />
  </bpmn:process>
</bpmn:definitions>
"""
_TASK = """<bpmn:serviceTask id="ask-ai" camunda:type="external" camunda:topic="{topic}">
      <bpmn:incoming>{into}</bpmn:incoming><bpmn:outgoing>{out}</bpmn:outgoing></bpmn:serviceTask>"""

CASES: dict[str, tuple[str, bool]] = {
    "caught-on-the-task": ("""
    <bpmn:startEvent id="start"><bpmn:outgoing>to-ask</bpmn:outgoing></bpmn:startEvent>
    {task}
    <bpmn:boundaryEvent id="catcher" attachedToRef="ask-ai"><bpmn:outgoing>to-rejected</bpmn:outgoing>
      <bpmn:errorEventDefinition errorRef="invalid" /></bpmn:boundaryEvent>
    <bpmn:sequenceFlow id="to-ask" sourceRef="start" targetRef="ask-ai" />
    <bpmn:sequenceFlow id="to-review" sourceRef="ask-ai" targetRef="review-answer" />""", True),
    "caught-by-an-enclosing-subprocess": ("""
    <bpmn:startEvent id="start"><bpmn:outgoing>to-sub</bpmn:outgoing></bpmn:startEvent>
    <bpmn:subProcess id="sub"><bpmn:incoming>to-sub</bpmn:incoming><bpmn:outgoing>to-review</bpmn:outgoing>
      <bpmn:subProcess id="inner"><bpmn:incoming>to-inner</bpmn:incoming><bpmn:outgoing>to-sub-end</bpmn:outgoing>
        <bpmn:startEvent id="inner-start"><bpmn:outgoing>to-ask</bpmn:outgoing></bpmn:startEvent>
        {task}
        <bpmn:endEvent id="inner-end"><bpmn:incoming>to-inner-end</bpmn:incoming></bpmn:endEvent>
        <bpmn:sequenceFlow id="to-ask" sourceRef="inner-start" targetRef="ask-ai" />
        <bpmn:sequenceFlow id="to-inner-end" sourceRef="ask-ai" targetRef="inner-end" />
      </bpmn:subProcess>
      <bpmn:startEvent id="sub-start"><bpmn:outgoing>to-inner</bpmn:outgoing></bpmn:startEvent>
      <bpmn:endEvent id="sub-end"><bpmn:incoming>to-sub-end</bpmn:incoming></bpmn:endEvent>
      <bpmn:sequenceFlow id="to-inner" sourceRef="sub-start" targetRef="inner" />
      <bpmn:sequenceFlow id="to-sub-end" sourceRef="inner" targetRef="sub-end" />
    </bpmn:subProcess>
    <bpmn:boundaryEvent id="catcher" attachedToRef="sub"><bpmn:outgoing>to-rejected</bpmn:outgoing>
      <bpmn:errorEventDefinition errorRef="invalid" /></bpmn:boundaryEvent>
    <bpmn:sequenceFlow id="to-sub" sourceRef="start" targetRef="sub" />
    <bpmn:sequenceFlow id="to-review" sourceRef="sub" targetRef="review-answer" />""", True),
    "caught-by-a-catch-all-boundary": ("""
    <bpmn:startEvent id="start"><bpmn:outgoing>to-ask</bpmn:outgoing></bpmn:startEvent>
    {task}
    <bpmn:boundaryEvent id="catcher" attachedToRef="ask-ai"><bpmn:outgoing>to-rejected</bpmn:outgoing>
      <bpmn:errorEventDefinition /></bpmn:boundaryEvent>
    <bpmn:sequenceFlow id="to-ask" sourceRef="start" targetRef="ask-ai" />
    <bpmn:sequenceFlow id="to-review" sourceRef="ask-ai" targetRef="review-answer" />""", True),
    "caught-by-a-catch-all-event-subprocess": ("""
    <bpmn:startEvent id="start"><bpmn:outgoing>to-ask</bpmn:outgoing></bpmn:startEvent>
    {task}
    <bpmn:subProcess id="on-error" triggeredByEvent="true">
      <bpmn:startEvent id="catcher-start"><bpmn:outgoing>to-catcher</bpmn:outgoing>
        <bpmn:errorEventDefinition /></bpmn:startEvent>
      <bpmn:intermediateThrowEvent id="catcher"><bpmn:incoming>to-catcher</bpmn:incoming>
        <bpmn:outgoing>to-rejected</bpmn:outgoing></bpmn:intermediateThrowEvent>
      <bpmn:sequenceFlow id="to-catcher" sourceRef="catcher-start" targetRef="catcher" />
      <bpmn:endEvent id="rejected-inside"><bpmn:incoming>to-rejected</bpmn:incoming></bpmn:endEvent>
      <bpmn:sequenceFlow id="to-rejected" sourceRef="catcher" targetRef="rejected-inside" />
    </bpmn:subProcess>
    <bpmn:sequenceFlow id="to-ask" sourceRef="start" targetRef="ask-ai" />
    <bpmn:sequenceFlow id="to-review" sourceRef="ask-ai" targetRef="review-answer" />""", True),
    "not-caught": ("""
    <bpmn:startEvent id="start"><bpmn:outgoing>to-ask</bpmn:outgoing></bpmn:startEvent>
    {task}
    <bpmn:boundaryEvent id="catcher" attachedToRef="ask-ai"><bpmn:outgoing>to-rejected</bpmn:outgoing>
      <bpmn:errorEventDefinition errorRef="other" /></bpmn:boundaryEvent>
    <bpmn:sequenceFlow id="to-ask" sourceRef="start" targetRef="ask-ai" />
    <bpmn:sequenceFlow id="to-review" sourceRef="ask-ai" targetRef="review-answer" />""", False),
}


def _bpmn(case: str, topic: str, key: str) -> str:
    body, _caught = CASES[case]
    into, out = ("to-ask", "to-inner-end") if "subprocess" in case and "event" not in case else ("to-ask", "to-review")
    task = _TASK.format(topic=topic, into=into, out=out)
    xml = _HEAD.format(key=key) + body.format(task=task) + _TAIL
    if case == "caught-by-a-catch-all-event-subprocess":
        # The event subprocess has its own end; the top-level 'rejected' end event and flow are not needed.
        xml = xml.replace('<bpmn:endEvent id="rejected"><bpmn:incoming>to-rejected</bpmn:incoming></bpmn:endEvent>\n'
                          '    <bpmn:sequenceFlow id="to-rejected" sourceRef="catcher" targetRef="rejected" />\n', "")
    return xml


@pytest.mark.parametrize("case", list(CASES))
def test_bpmn_error_is_thrown_only_where_it_is_caught(
    case: str, engine_rest: EngineRest, fake: FakeOllama, spawn: Callable[..., WorkerProcess],
) -> None:
    suffix = uuid.uuid4().hex[:10]
    topic, key = f"ai-catch-{suffix}", f"ai-catch-{suffix}"
    engine_rest.deploy(_bpmn(case, topic, key), key)
    pi = engine_rest.start(key, {"not_the_query": "x"})  # 'query' missing: AI_INPUT_INVALID
    worker = spawn(topic, OLLAMA_BASE_URL=fake.base_url)
    _body, caught = CASES[case]
    if caught:
        engine_rest.wait_for(lambda: engine_rest.passed_task(pi, "catcher"), timeout_s=60, what="the catching event")
        assert worker.wait_for("task.bpmn_error", code="AI_INPUT_INVALID")
        assert not engine_rest.incidents(pi)
        return
    incidents = engine_rest.wait_for(lambda: engine_rest.incidents(pi), timeout_s=60, what="an incident")
    message = incidents[0]["incidentMessage"]
    assert "AI_INPUT_INVALID" in message and "not caught" in message and "'query' is missing" in message, message
    instance = engine_rest.session.get(f"{engine_rest.base_url}/process-instance/{pi}", timeout=10)
    assert instance.status_code == 200, "the instance is still there, waiting at the task (not silently ended)"
    assert "ask-ai" in engine_rest.activity_ids(pi) and not engine_rest.passed_task(pi, "catcher")
    assert not worker.find("task.bpmn_error")


def test_error_caught_by_the_calling_process(
    engine_rest: EngineRest, fake: FakeOllama, spawn: Callable[..., WorkerProcess],
) -> None:
    """Not caught in its own definition, but the instance was started by a call activity whose boundary
    event catches it: Camunda passes the error up, so the worker throws it."""
    suffix = uuid.uuid4().hex[:10]
    topic, child, parent = f"ai-catch-{suffix}", f"ai-child-{suffix}", f"ai-parent-{suffix}"
    task = _TASK.format(topic=topic, into="to-ask", out="to-done")
    child_xml = _HEAD.format(key=child) + f"""
    <bpmn:startEvent id="start"><bpmn:outgoing>to-ask</bpmn:outgoing></bpmn:startEvent>
    {task}
    <bpmn:endEvent id="done"><bpmn:incoming>to-done</bpmn:incoming></bpmn:endEvent>
    <bpmn:sequenceFlow id="to-ask" sourceRef="start" targetRef="ask-ai" />
    <bpmn:sequenceFlow id="to-done" sourceRef="ask-ai" targetRef="done" />
  </bpmn:process>
</bpmn:definitions>
"""
    parent_xml = _HEAD.format(key=parent) + f"""
    <bpmn:startEvent id="start"><bpmn:outgoing>to-call</bpmn:outgoing></bpmn:startEvent>
    <bpmn:callActivity id="call" calledElement="{child}">
      <bpmn:extensionElements><camunda:in variables="all" /></bpmn:extensionElements>
      <bpmn:incoming>to-call</bpmn:incoming><bpmn:outgoing>to-review</bpmn:outgoing></bpmn:callActivity>
    <bpmn:boundaryEvent id="catcher" attachedToRef="call"><bpmn:outgoing>to-rejected</bpmn:outgoing>
      <bpmn:errorEventDefinition errorRef="invalid" /></bpmn:boundaryEvent>
    <bpmn:sequenceFlow id="to-call" sourceRef="start" targetRef="call" />
    <bpmn:sequenceFlow id="to-review" sourceRef="call" targetRef="review-answer" />""" + _TAIL
    engine_rest.deploy(child_xml, child)
    engine_rest.deploy(parent_xml, parent)
    pi = engine_rest.start(parent, {"not_the_query": "x"})
    worker = spawn(topic, OLLAMA_BASE_URL=fake.base_url)
    engine_rest.wait_for(lambda: engine_rest.passed_task(pi, "catcher"), timeout_s=60, what="the parent's boundary")
    assert worker.wait_for("task.bpmn_error", code="AI_INPUT_INVALID")
    assert not engine_rest.incidents(pi)
