"""Where a BPMN error code is caught in a process model (engine/bpmn.py), without an engine."""

from __future__ import annotations

import pytest

from procos_worker.engine.bpmn import ProcessModel

_XML = """<?xml version="1.0" encoding="UTF-8"?>
<bpmn:definitions xmlns:bpmn="http://www.omg.org/spec/BPMN/20100524/MODEL" id="d" targetNamespace="t">
  <bpmn:error id="e-invalid" errorCode="AI_INPUT_INVALID" />
  <bpmn:error id="e-any" />
  <bpmn:process id="p" isExecutable="true">
    <bpmn:serviceTask id="top-task" />
    <bpmn:boundaryEvent id="b1" attachedToRef="top-task"><bpmn:errorEventDefinition errorRef="e-invalid" />
    </bpmn:boundaryEvent>
    <bpmn:serviceTask id="bare-task" />
    <bpmn:subProcess id="outer">
      <bpmn:subProcess id="inner">
        <bpmn:serviceTask id="deep-task" />
      </bpmn:subProcess>
      <bpmn:subProcess id="handler" triggeredByEvent="true">
        <bpmn:startEvent id="s"><bpmn:errorEventDefinition errorRef="OTHER_BY_REF" /></bpmn:startEvent>
        <bpmn:serviceTask id="task-in-handler" />
      </bpmn:subProcess>
    </bpmn:subProcess>
    <bpmn:boundaryEvent id="b2" attachedToRef="outer"><bpmn:errorEventDefinition errorRef="e-any" />
    </bpmn:boundaryEvent>
  </bpmn:process>
</bpmn:definitions>"""


@pytest.mark.parametrize(
    ("activity", "code", "caught"),
    [
        ("top-task", "AI_INPUT_INVALID", True),  # boundary on the task, by errorRef -> errorCode
        ("top-task", "AI_PROMPT_TOO_LONG", False),
        ("bare-task", "AI_INPUT_INVALID", False),  # nothing anywhere: the process has no event subprocess
        ("deep-task", "ANY_CODE", True),  # the outer subprocess's boundary: an error without errorCode
        ("deep-task", "OTHER_BY_REF", True),  # an unknown errorRef is the code itself (Camunda's rule)
        ("task-in-handler", "OTHER_BY_REF", True),  # not its own event subprocess, but the outer boundary
        ("no-such-activity", "AI_INPUT_INVALID", False),
    ],
)
def test_catch_rules(activity: str, code: str, caught: bool) -> None:
    assert ProcessModel.parse(_XML).catches(activity, code) is caught


def test_entity_expansion_is_refused() -> None:
    bomb = '<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a "aaaa">]><x>&a;</x>'
    with pytest.raises(ValueError):
        ProcessModel.parse(bomb)
