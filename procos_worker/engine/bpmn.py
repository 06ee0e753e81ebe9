"""Which BPMN error codes a process model catches where (outcome -> **catch check** -> report).

Camunda 7 ends an execution silently when a BPMN error has no catching event: the instance is completed
with no end event reached and no incident. So before throwing one, the worker asks whether the code is
caught at the task: by an error boundary event on the activity or on an enclosing subprocess, or by an
error event subprocess of an enclosing scope. An error event definition without ``errorRef``, or whose
error has no ``errorCode``, catches every code (Camunda's rule). When the definition doesn't catch it and
the instance was started by a call activity, the error goes on to the calling process, which is checked
the same way at its call activity.

The XML comes from ``GET /process-definition/{id}/xml`` and is parsed once per definition (a deployed
definition never changes); it is parsed with defusedxml (no entity expansion).
"""

from __future__ import annotations

import threading
import xml.etree.ElementTree as ET  # the Element type only; parsing goes through defusedxml
from dataclasses import dataclass

from defusedxml.ElementTree import fromstring

from procos_worker.engine.api import EngineApi

__all__ = ["BpmnCatalog", "ProcessModel"]

_BPMN = "{http://www.omg.org/spec/BPMN/20100524/MODEL}"
# Scopes an error propagates through on its way up (the process itself ends the chain).
_SCOPES = {f"{_BPMN}subProcess", f"{_BPMN}transaction", f"{_BPMN}adHocSubProcess"}
_CALL_DEPTH = 10


@dataclass(frozen=True)
class ProcessModel:
    """One process definition's BPMN, with what the catch check needs."""

    root: ET.Element
    parents: dict[ET.Element, ET.Element]
    by_id: dict[str, ET.Element]
    error_codes: dict[str, str | None]  # error id -> errorCode (None: catches every code)

    @classmethod
    def parse(cls, xml: str) -> ProcessModel:
        """``ValueError`` when the XML does not parse (or asks for entity expansion)."""
        try:
            root = fromstring(xml.encode("utf-8"))
        except ET.ParseError as exc:
            raise ValueError(f"the process definition's BPMN XML does not parse: {exc}") from exc
        parents = {child: parent for parent in root.iter() for child in parent}
        by_id = {el.attrib["id"]: el for el in root.iter() if "id" in el.attrib}
        errors = {el.attrib["id"]: el.attrib.get("errorCode") for el in root.iter(f"{_BPMN}error") if "id" in el.attrib}
        return cls(root=root, parents=parents, by_id=by_id, error_codes=errors)

    def catches(self, activity_id: str, code: str) -> bool:
        """True when an error ``code`` thrown at ``activity_id`` is caught within this definition."""
        activity = self.by_id.get(activity_id)
        if activity is None:
            return False
        if self._boundary_catches(activity_id, code):
            return True
        ancestors: list[ET.Element] = []
        node = self.parents.get(activity)
        while node is not None:
            ancestors.append(node)
            if node.tag == f"{_BPMN}process":
                break
            node = self.parents.get(node)
        for scope in ancestors:
            if scope.tag not in _SCOPES and scope.tag != f"{_BPMN}process":
                continue
            if self._event_subprocess_catches(scope, code, exclude=ancestors):
                return True
            if scope.tag in _SCOPES and not _is_event_subprocess(scope) and self._boundary_catches(
                    scope.attrib.get("id", ""), code):
                return True
        return False

    def _boundary_catches(self, attached_to: str, code: str) -> bool:
        for boundary in self.root.iter(f"{_BPMN}boundaryEvent"):
            if boundary.attrib.get("attachedToRef") == attached_to and self._definition_catches(boundary, code):
                return True
        return False

    def _event_subprocess_catches(self, scope: ET.Element, code: str, exclude: list[ET.Element]) -> bool:
        for child in scope:
            if child.tag == f"{_BPMN}subProcess" and _is_event_subprocess(child) and child not in exclude:
                for start in child.findall(f"{_BPMN}startEvent"):
                    if self._definition_catches(start, code):
                        return True
        return False

    def _definition_catches(self, event: ET.Element, code: str) -> bool:
        for definition in event.findall(f"{_BPMN}errorEventDefinition"):
            ref = definition.attrib.get("errorRef")
            if ref is None:
                return True
            # Camunda: an unknown errorRef is taken as the code itself; an error without errorCode catches all.
            caught = self.error_codes.get(ref, ref)
            if caught is None or caught == code:
                return True
        return False


def _is_event_subprocess(element: ET.Element) -> bool:
    return element.attrib.get("triggeredByEvent", "false").lower() == "true"


class BpmnCatalog:
    """Process models by definition id, fetched once each; the catch check across call activities."""

    def __init__(self, engine: EngineApi) -> None:
        self._engine = engine
        self._models: dict[str, ProcessModel] = {}
        self._lock = threading.Lock()

    def model(self, definition_id: str) -> ProcessModel:
        with self._lock:
            cached = self._models.get(definition_id)
        if cached is not None:
            return cached
        parsed = ProcessModel.parse(self._engine.process_definition_xml(definition_id))
        with self._lock:
            return self._models.setdefault(definition_id, parsed)

    def catches(self, definition_id: str, process_instance_id: str, activity_id: str, code: str) -> bool:
        """Whether ``code`` thrown at ``activity_id`` is caught, here or in a calling process."""
        for _ in range(_CALL_DEPTH):
            if self.model(definition_id).catches(activity_id, code):
                return True
            caller = self._engine.calling_activity(process_instance_id)
            if caller is None:
                return False
            process_instance_id, definition_id, activity_id = caller
        return False
