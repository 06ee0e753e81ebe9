"""The Camunda Modeler 7 element template (camunda-modeler/procos-ai-task.json): valid against the
official element-templates JSON Schema (npm @camunda/element-templates-json-schema, fetched into the
stack cache), in step with the properties the worker knows, and used by the example BPMN."""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from procos_testkit.npm import npm_package
from procos_worker.ai.structured import structured_output
from procos_worker.ai.taskconfig import KNOWN_PROPERTIES, parse_properties

pytestmark = pytest.mark.modeler

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = ROOT / "camunda-modeler" / "procos-ai-task.json"
SCHEMA_PACKAGE = ("@camunda/element-templates-json-schema", "0.22.1")
NS = {"bpmn": "http://www.omg.org/spec/BPMN/20100524/MODEL", "camunda": "http://camunda.org/schema/1.0/bpmn"}


@pytest.fixture(scope="module")
def schema() -> dict[str, Any]:
    package = npm_package(*SCHEMA_PACKAGE)
    loaded: dict[str, Any] = json.loads((package / "resources" / "schema.json").read_text(encoding="utf-8"))
    return loaded


@pytest.fixture(scope="module")
def template() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(TEMPLATE.read_text(encoding="utf-8"))
    return loaded


def _errors(schema: dict[str, Any], document: Any) -> list[str]:
    validator = jsonschema.validators.validator_for(schema)(schema)
    return [f"{'/'.join(str(p) for p in error.absolute_path)}: {error.message}"
            for error in validator.iter_errors(document)]


def test_the_template_validates_against_the_official_schema(schema: dict[str, Any], template: dict[str, Any]) -> None:
    assert template["$schema"].endswith(f"@{SCHEMA_PACKAGE[1]}/resources/schema.json")
    assert _errors(schema, template) == []


def test_the_schema_check_is_not_a_no_op(schema: dict[str, Any], template: dict[str, Any]) -> None:
    # A multi-line Text field can't bind a camunda:property in Camunda 7 templates: the schema says so.
    broken = json.loads(json.dumps(template))
    broken["properties"][2]["type"] = "Text"
    assert _errors(schema, broken) != []
    del broken["appliesTo"]
    assert _errors(schema, broken) != []


def test_the_template_makes_an_external_task_and_offers_every_property_the_worker_knows(
    template: dict[str, Any],
) -> None:
    bindings = {p["binding"]["name"]: p for p in template["properties"]}
    assert bindings["camunda:type"]["value"] == "external" and bindings["camunda:type"]["type"] == "Hidden"
    assert bindings["camunda:topic"]["value"] == "ai-query"
    offered = {name for name, p in bindings.items() if p["binding"]["type"] == "camunda:property"}
    assert offered == KNOWN_PROPERTIES
    scope = bindings["procos.resultScope"]
    assert {choice["value"] for choice in scope["choices"]} == {"process", "local"}
    # The defaults it writes are values the worker accepts.
    defaults = {name: str(p["value"]) for name, p in bindings.items() if name in offered and "value" in p}
    assert parse_properties(defaults, "element template") == {"procos.resultPrefix": "ai",
                                                              "procos.resultScope": "process"}


def test_the_example_bpmn_uses_the_template_with_properties_the_worker_accepts(template: dict[str, Any]) -> None:
    tree = ET.parse(ROOT / "bpmn" / "ai-two-steps.bpmn")
    tasks = tree.getroot().findall(".//bpmn:serviceTask", NS)
    assert len(tasks) == 2
    for task in tasks:
        assert task.get(f"{{{NS['camunda']}}}modelerTemplate") == template["id"]
        assert task.get(f"{{{NS['camunda']}}}modelerTemplateVersion") == str(template["version"])
        properties = {p.get("name"): p.get("value") for p in task.findall(".//camunda:property", NS)}
        assert {"procos.prompt", "procos.resultPrefix", "procos.resultScope"} <= set(properties)
        parse_properties(properties, f"activity '{task.get('id')}'")  # raises on anything the worker refuses


def test_the_triage_example_uses_the_template_with_a_schema_the_worker_accepts(template: dict[str, Any]) -> None:
    tree = ET.parse(ROOT / "bpmn" / "ai-ticket-triage.bpmn")
    (task,) = tree.getroot().findall(".//bpmn:serviceTask", NS)
    assert task.get(f"{{{NS['camunda']}}}modelerTemplate") == template["id"]
    assert task.get(f"{{{NS['camunda']}}}modelerTemplateVersion") == str(template["version"])
    properties = {p.get("name"): p.get("value") for p in task.findall(".//camunda:property", NS)}
    parsed = parse_properties(properties, "activity 'triage'")
    output = structured_output(parsed["procos.outputSchema"], parsed["procos.outputVariables"])
    assert output.variables == ("category", "urgent", "priority", "summary")
    assert output.types["summary"] == frozenset({"string"})
    assert output.schema["properties"]["summary"]["maxLength"] <= 4000
    # The template's own checks accept what the example holds.
    patterns = {p["binding"]["name"]: p["constraints"]["pattern"]["value"] for p in template["properties"]
                if "pattern" in p.get("constraints", {})}
    for name in ("procos.outputSchema", "procos.outputVariables", "procos.options"):
        assert re.fullmatch(patterns[name], properties[name] or ""), name
    assert not re.fullmatch(patterns["procos.outputVariables"], "category; urgent")
