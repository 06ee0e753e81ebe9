"""TaskHandler with ``procos.outputSchema``, on the in-memory store and the scripted LLM: the schema sent
as ``format``, typed variables, the repair loop and its rows, ``AI_OUTPUT_INVALID``, and a task fetched
again (stored attempts reused, never completed from an answer the schema refuses)."""

from __future__ import annotations

import json
import threading
from typing import Any

import pytest
import structlog

from procos_testkit.memory_llm import ScriptedLlm
from procos_testkit.memory_store import InMemoryModels, InMemoryStore
from procos_worker.ai.registry import ModelRegistry
from procos_worker.ai.taskconfig import TaskConfigs
from procos_worker.errors import LlmBusy, OutputInvalid, PermanentError, VariableTooLong
from procos_worker.gate import ServiceGate
from procos_worker.handler import TaskHandler
from procos_worker.models import BpmnError, LlmResult, Task, TypedValue, Variable
from procos_worker.outcomes import outcome_for
from procos_worker.settings import BackoffSettings, Settings, TaskSettings

LOG = structlog.get_logger("test")
SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"category": {"type": "string", "enum": ["billing", "outage"]},
                   "urgent": {"type": "boolean"},
                   "priority": {"type": "integer", "minimum": 1, "maximum": 5},
                   "summary": {"type": "string"}},
    "required": ["category", "urgent", "priority", "summary"],
}
VALID = json.dumps({"category": "billing", "urgent": False, "priority": 2, "summary": "Charged twice"})
WRONG = json.dumps({"category": "weather", "urgent": False, "priority": 2, "summary": "?"})


def settings(schema: dict[str, Any] | None = None, repairs: int = 2) -> Settings:
    return Settings(backoff=BackoffSettings(initial_s=0.001, max_s=0.002),
                    task=TaskSettings(output_repair_attempts=repairs, topic_defaults={
                        "triage": {"procos.outputSchema": schema or SCHEMA, "procos.resultPrefix": "triage"}}))


def task() -> Task:
    return Task(id="t-1", topic="triage", worker_id="w", process_instance_id="pi-1", activity_id="triage",
                variables={"query": Variable(value="I was charged twice.")})


def handler(store: InMemoryStore, llm: ScriptedLlm, config: Settings | None = None) -> TaskHandler:
    config = config or settings()
    configs = TaskConfigs(config, ModelRegistry(config.registry, InMemoryModels().load))
    return TaskHandler(config, store, llm, configs,
                       store_gate=ServiceGate("postgresql", config.backoff, store.ping, draw=lambda: 0.5),
                       llm_gate=ServiceGate("ollama", config.backoff, llm.ping, draw=lambda: 0.5))


def run(store: InMemoryStore, llm: ScriptedLlm, config: Settings | None = None) -> Any:
    return handler(store, llm, config).handle(task(), threading.Event(), LOG)


def test_a_valid_answer_completes_with_typed_variables_and_the_schema_went_as_format() -> None:
    store, llm = InMemoryStore(), ScriptedLlm(VALID)
    outcome = run(store, llm)
    output, text = store.outputs["t-1"]
    assert text == VALID and outcome.context_id == output.id
    assert {k: v for k, v in outcome.variables.items() if isinstance(v, TypedValue)} == {
        "triage_category": TypedValue("billing", "String", outcome.variables["triage_category"].source),
        "triage_urgent": TypedValue(False, "Boolean", outcome.variables["triage_urgent"].source),
        "triage_priority": TypedValue(2, "Long", outcome.variables["triage_priority"].source),
        "triage_summary": TypedValue("Charged twice", "String", outcome.variables["triage_summary"].source),
    }
    assert outcome.variables["triage_context_id"] == str(output.id)
    assert [c.args["format"] for c in llm.calls_to("chat")] == [SCHEMA]
    row = store.get(output.id)
    assert row is not None and row.content_data["structured"] == json.loads(VALID)
    assert row.content_data["attempt"] == 1 and "repair_input_id" not in row.content_data
    assert store.inputs["t-1"].extra == {"output_schema": SCHEMA, "attempt": 1}
    assert not store.attempts


def test_an_invalid_answer_is_stored_and_asked_again_with_what_was_wrong() -> None:
    store, llm = InMemoryStore(), ScriptedLlm(VALID)
    llm.answer_next("not json at all")
    outcome = run(store, llm)
    invalid = store.attempts[("t-1", "invalid_output_1")]
    repair = store.attempts[("t-1", "repair_input_2")]
    assert invalid.content_text == "not json at all" and "is not JSON" in invalid.content_data["errors"][0]
    assert repair.content_data["repair_of"] == str(invalid.id) and repair.content_data["attempt"] == 2
    second = llm.calls_to("chat")[1].args["messages"]
    assert second[-2] == {"role": "assistant", "content": "not json at all"}
    assert "does not match the required JSON schema" in second[-1]["content"]
    output = store.get(outcome.context_id)
    assert output is not None and output.context_type == "output"
    # The valid answer answers the task's question; the repair request it answered is named.
    assert output.content_data["input_context_id"] == str(store.inputs["t-1"].id)
    assert output.content_data["repair_input_id"] == str(repair.id)
    assert outcome.variables["triage_category"].value == "billing"


def test_still_invalid_after_the_repairs_is_ai_output_invalid_naming_every_stored_answer() -> None:
    store, llm = InMemoryStore(), ScriptedLlm(WRONG)
    with pytest.raises(OutputInvalid) as info:
        run(store, llm, settings(repairs=2))
    assert len(llm.calls_to("chat")) == 3 and "t-1" not in store.outputs
    rows = [store.attempts[("t-1", f"invalid_output_{n}")].id for n in (1, 2, 3)]
    message = str(info.value)
    assert message.startswith("activity 'triage', property procos.outputSchema: 3 answer(s)")
    assert all(str(row) in message for row in rows) and "'weather' is not one of" in message
    outcome = outcome_for(info.value, task(), settings())
    assert isinstance(outcome, BpmnError) and outcome.code == "AI_OUTPUT_INVALID"


def test_no_repairs_configured_gives_up_after_one_answer() -> None:
    store, llm = InMemoryStore(), ScriptedLlm(WRONG)
    with pytest.raises(OutputInvalid, match="1 answer"):
        run(store, llm, settings(repairs=0))
    assert len(llm.calls_to("chat")) == 1


def test_a_task_fetched_again_completes_from_its_stored_valid_answer_without_asking() -> None:
    store, llm = InMemoryStore(), ScriptedLlm(VALID)
    first = run(store, llm)
    again = run(store, llm)
    assert again == first and len(llm.calls_to("chat")) == 1


class BusyAtSecondChat(ScriptedLlm):
    """The second chat fails as an overloaded Ollama would (the run ends; the task is fetched again)."""

    def chat(self, messages: list[dict[str, str]], **kwargs: Any) -> LlmResult:
        if len(self.calls_to("chat")) == 1:
            self._called("chat", busy=True)
            raise LlmBusy("503")
        return super().chat(messages, **kwargs)


def test_a_task_fetched_again_reuses_a_stored_invalid_answer_and_goes_on_repairing() -> None:
    store, llm = InMemoryStore(), BusyAtSecondChat(VALID)
    llm.answer_next(WRONG)
    with pytest.raises(LlmBusy):
        run(store, llm)  # attempt 1 stored invalid, the repair's chat failed
    invalid = store.attempts[("t-1", "invalid_output_1")]
    outcome = run(store, llm)
    # Attempt 1 is the stored invalid answer (not asked again); only attempt 2 is asked.
    assert len(llm.calls_to("chat")) == 3
    assert [c.args["context_type"] for c in store.calls_to("answer_to")] == ["invalid_output_1", "invalid_output_2"] * 2
    assert store.attempts[("t-1", "invalid_output_1")] == invalid
    output = store.get(outcome.context_id)
    assert output is not None and output.content_data["attempt"] == 2
    assert output.content_data["repair_input_id"] == str(store.attempts[("t-1", "repair_input_2")].id)


def test_a_stored_invalid_answer_the_new_schema_accepts_is_asked_again_not_completed_from() -> None:
    store, llm = InMemoryStore(), ScriptedLlm(WRONG)
    with pytest.raises(OutputInvalid):
        run(store, llm, settings(repairs=0))
    # The schema now allows "weather": the stored invalid answer is not taken as valid; it is asked again.
    wider = json.loads(json.dumps(SCHEMA))
    wider["properties"]["category"]["enum"].append("weather")
    llm.answer = VALID
    outcome = run(store, llm, settings(wider, repairs=0))
    assert len(llm.calls_to("chat")) == 2 and outcome.variables["triage_category"].value == "billing"


def test_a_stored_valid_answer_the_changed_schema_refuses_is_an_incident() -> None:
    store, llm = InMemoryStore(), ScriptedLlm(VALID)
    run(store, llm)
    narrower = json.loads(json.dumps(SCHEMA))
    narrower["properties"]["category"]["enum"] = ["outage"]
    with pytest.raises(PermanentError, match="does not match the schema any more") as info:
        run(store, llm, settings(narrower))
    assert str(store.outputs["t-1"][0].id) in str(info.value) and len(llm.calls_to("chat")) == 1


def test_a_property_over_4000_characters_is_an_incident_naming_it_after_storing() -> None:
    long = json.dumps({"category": "billing", "urgent": True, "priority": 1, "summary": "x" * 4001})
    store, llm = InMemoryStore(), ScriptedLlm(long)
    with pytest.raises(VariableTooLong, match=r"variable 'triage_summary' \(answer property 'summary'"):
        run(store, llm)
    assert store.outputs["t-1"][1] == long, "the valid answer is kept"


def test_a_free_text_task_sends_no_format() -> None:
    store, llm = InMemoryStore(), ScriptedLlm("plain")
    plain = Settings(backoff=BackoffSettings(initial_s=0.001, max_s=0.002))
    outcome = run(store, llm, plain)
    assert llm.calls_to("chat")[0].args["format"] is None
    assert not any(isinstance(v, TypedValue) for v in outcome.variables.values())


def test_think_goes_with_the_format_on_every_attempt_and_into_every_input_row() -> None:
    config = Settings(backoff=BackoffSettings(initial_s=0.001, max_s=0.002),
                      task=TaskSettings(output_repair_attempts=1, topic_defaults={
                          "triage": {"procos.outputSchema": SCHEMA, "procos.resultPrefix": "triage",
                                     "procos.think": "low"}}))
    store, llm = InMemoryStore(), ScriptedLlm(VALID)
    llm.answer_next(WRONG)
    run(store, llm, config)
    assert [(c.args["format"], c.args["think"]) for c in llm.calls_to("chat")] == [(SCHEMA, "low")] * 2
    assert [(c.args["context_type"], c.args["think"]) for c in store.calls_to("save_input")] == [
        ("input", "low"), ("repair_input_2", "low")]
