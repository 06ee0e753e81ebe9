"""A small Camunda REST helper for tests and benchmarks: deploy, start, inspect.

Not used by the worker itself (the worker's engine calls are in ``procos_worker.engine.client``).
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any
from xml.sax.saxutils import quoteattr

import requests

__all__ = ["EXAMPLE_BPMN", "TWO_STEPS_BPMN", "EngineRest", "ai_steps_bpmn", "example_bpmn", "json_variable",
           "one_task_bpmn", "own_copy", "wait_until"]

EXAMPLE_BPMN = Path(__file__).resolve().parents[1] / "bpmn" / "ai-query.bpmn"
TWO_STEPS_BPMN = Path(__file__).resolve().parents[1] / "bpmn" / "ai-two-steps.bpmn"


def example_bpmn(topic: str, process_key: str) -> str:
    """The example process with its own topic and key, so that tests and runs don't see each other's tasks."""
    xml = EXAMPLE_BPMN.read_text(encoding="utf-8")
    return xml.replace('camunda:topic="ai-query"', f'camunda:topic="{topic}"').replace(
        'id="ai-query"', f'id="{process_key}"'
    )


def own_copy(path: Path, topic: str, process_key: str) -> str:
    """A BPMN file of bpmn/ with its AI tasks on ``topic`` and its process id ``process_key``."""
    xml = path.read_text(encoding="utf-8")
    process_id = xml.split('<bpmn:process id="', 1)[1].split('"', 1)[0]
    return xml.replace('camunda:topic="ai-query"', f'camunda:topic="{topic}"').replace(
        f'<bpmn:process id="{process_id}"', f'<bpmn:process id="{process_key}"')


def ai_steps_bpmn(process_key: str, topic: str, steps: list[tuple[str, dict[str, str]]]) -> str:
    """A process of AI tasks in a row, each ``(activity id, procos.* properties)``, then the user task
    ``review-answer``; AI_INPUT_INVALID from any step ends at ``rejected`` with ``ai_error_message`` set."""
    tasks, flows = [], []
    previous = "start"
    for activity, properties in steps:
        props = "".join(f"<camunda:property name={quoteattr(k)} value={quoteattr(v)} />"
                        for k, v in properties.items())
        tasks.append(
            f'<bpmn:serviceTask id="{activity}" camunda:type="external" camunda:topic="{topic}">'
            f'<bpmn:extensionElements><camunda:properties>{props}</camunda:properties></bpmn:extensionElements>'
            f'</bpmn:serviceTask>'
            f'<bpmn:boundaryEvent id="{activity}-invalid" attachedToRef="{activity}">'
            f'<bpmn:errorEventDefinition errorRef="ai-input-invalid" camunda:errorMessageVariable="ai_error_message" />'
            f'</bpmn:boundaryEvent>')
        flows.append(f'<bpmn:sequenceFlow id="to-{activity}" sourceRef="{previous}" targetRef="{activity}" />'
                     f'<bpmn:sequenceFlow id="{activity}-rejected" sourceRef="{activity}-invalid" '
                     'targetRef="rejected" />')
        previous = activity
    flows.append(f'<bpmn:sequenceFlow id="to-review" sourceRef="{previous}" targetRef="review-answer" />'
                 '<bpmn:sequenceFlow id="to-end" sourceRef="review-answer" targetRef="answered" />')
    return (
        '<?xml version="1.0" encoding="UTF-8"?>'
        '<bpmn:definitions xmlns:bpmn="http://www.omg.org/spec/BPMN/20100524/MODEL" '
        'xmlns:camunda="http://camunda.org/schema/1.0/bpmn" id="defs" targetNamespace="http://procos.example/bpmn">'
        '<bpmn:error id="ai-input-invalid" errorCode="AI_INPUT_INVALID" />'
        f'<bpmn:process id="{process_key}" isExecutable="true" camunda:historyTimeToLive="P1D">'
        '<bpmn:startEvent id="start" />' + "".join(tasks) +
        '<bpmn:userTask id="review-answer" /><bpmn:endEvent id="answered" /><bpmn:endEvent id="rejected" />'
        + "".join(flows) + "</bpmn:process></bpmn:definitions>"
    )


def one_task_bpmn(process_key: str, topic: str, *, version_tag: str | None = None,
                  priority: str | None = None) -> str:
    """start -> one external task on ``topic`` -> end; ``priority`` is a camunda:taskPriority (e.g. "${prio}")."""
    tag = f' camunda:versionTag="{version_tag}"' if version_tag else ""
    prio = f' camunda:taskPriority="{priority}"' if priority else ""
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<bpmn:definitions xmlns:bpmn="http://www.omg.org/spec/BPMN/20100524/MODEL"
                  xmlns:camunda="http://camunda.org/schema/1.0/bpmn" id="d-{process_key}"
                  targetNamespace="http://procos.example/bpmn">
  <bpmn:process id="{process_key}" isExecutable="true" camunda:historyTimeToLive="P1D"{tag}>
    <bpmn:startEvent id="start"><bpmn:outgoing>f1</bpmn:outgoing></bpmn:startEvent>
    <bpmn:serviceTask id="ask-ai" camunda:type="external" camunda:topic="{topic}"{prio}>
      <bpmn:incoming>f1</bpmn:incoming><bpmn:outgoing>f2</bpmn:outgoing>
    </bpmn:serviceTask>
    <bpmn:endEvent id="answered"><bpmn:incoming>f2</bpmn:incoming></bpmn:endEvent>
    <bpmn:sequenceFlow id="f1" sourceRef="start" targetRef="ask-ai" />
    <bpmn:sequenceFlow id="f2" sourceRef="ask-ai" targetRef="answered" />
  </bpmn:process>
</bpmn:definitions>
"""


class EngineRest:
    """Plain REST calls against one engine."""

    def __init__(self, base_url: str, auth: tuple[str, str] | None = None, timeout_s: float = 30.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.session = requests.Session()
        self.session.auth = auth
        self.timeout_s = timeout_s

    def get(self, path: str, **params: Any) -> Any:
        response = self.session.get(f"{self.base_url}{path}", params=params, timeout=self.timeout_s)
        response.raise_for_status()
        return response.json() if response.content else None

    def post(self, path: str, body: Any = None) -> requests.Response:
        return self.session.post(f"{self.base_url}{path}", json=body, timeout=self.timeout_s)

    def deploy(self, xml: str, name: str, tenant_id: str | None = None) -> dict[str, Any]:
        data = {"deployment-name": name, "deploy-changed-only": "true"}
        if tenant_id is not None:
            data["tenant-id"] = tenant_id
        response = self.session.post(
            f"{self.base_url}/deployment/create",
            data=data,
            files={f"{name}.bpmn": (f"{name}.bpmn", xml.encode("utf-8"), "application/xml")},
            timeout=self.timeout_s,
        )
        response.raise_for_status()
        result: dict[str, Any] = response.json()
        return result

    def deploy_example(self, topic: str | None = None) -> tuple[str, str]:
        """Deploy the example process under a unique topic and key; return (topic, process key)."""
        suffix = uuid.uuid4().hex[:10]
        topic = topic or f"ai-query-{suffix}"
        key = f"ai-query-{suffix}"
        self.deploy(example_bpmn(topic, key), key)
        return topic, key

    def start(self, process_key: str, variables: dict[str, Any] | None = None, business_key: str | None = None,
              tenant_id: str | None = None) -> str:
        body: dict[str, Any] = {"variables": {k: _typed(v) for k, v in (variables or {}).items()}}
        if business_key:
            body["businessKey"] = business_key
        path = f"/process-definition/key/{process_key}" + (f"/tenant-id/{tenant_id}" if tenant_id else "")
        response = self.post(f"{path}/start", body)
        response.raise_for_status()
        return str(response.json()["id"])

    def external_tasks(self, **params: Any) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self.get("/external-task", **params)
        return result

    def activity_ids(self, process_instance_id: str) -> list[str]:
        """Activities the instance has passed through (history), in start order."""
        rows = self.get(
            "/history/activity-instance", processInstanceId=process_instance_id, sortBy="startTime", sortOrder="asc"
        )
        return [str(row["activityId"]) for row in rows]

    def variables(self, process_instance_id: str) -> dict[str, Any]:
        rows = self.get("/history/variable-instance", processInstanceId=process_instance_id, deserializeValues="false")
        return {str(row["name"]): row for row in rows}

    def incidents(self, process_instance_id: str) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self.get("/incident", processInstanceId=process_instance_id)
        return result

    def wait_for(self, predicate: Callable[[], Any], timeout_s: float = 60.0, interval_s: float = 0.2,
                 what: str = "condition") -> Any:
        return wait_until(predicate, timeout_s, what, interval_s)

    def passed_task(self, process_instance_id: str, activity_id: str = "review-answer") -> bool:
        return activity_id in self.activity_ids(process_instance_id)

    def delete_instance(self, process_instance_id: str) -> None:
        response = self.session.delete(
            f"{self.base_url}/process-instance/{process_instance_id}",
            params={"skipCustomListeners": "true"},
            timeout=self.timeout_s,
        )
        response.raise_for_status()


def wait_until(predicate: Callable[[], Any], timeout_s: float, what: str, interval_s: float = 0.2) -> Any:
    """Poll ``predicate()`` until truthy; fail naming ``what`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:g}s waiting for {what}")
        time.sleep(interval_s)


def json_variable(value: Any) -> dict[str, Any]:
    """A Camunda Json variable: stored as a byte array, so it may be longer than 4000 characters
    (a String variable may not)."""
    return {"value": json.dumps(value), "type": "Json"}


def _typed(value: Any) -> dict[str, Any]:
    if isinstance(value, dict) and "value" in value and "type" in value:
        return value
    if isinstance(value, bool):
        return {"value": value, "type": "Boolean"}
    if isinstance(value, int):
        return {"value": value, "type": "Long"}
    if isinstance(value, str):
        return {"value": value, "type": "String"}
    return {"value": value}
