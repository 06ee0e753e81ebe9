"""TaskHandler on its own, with the in-memory store and the scripted LLM: the pipeline's order, the
redelivery shortcut, and the errors it lets through (the worker turns them into outcomes)."""

from __future__ import annotations

import threading

import pytest
import structlog

from procos_testkit.memory_llm import ScriptedLlm
from procos_testkit.memory_store import InMemoryModels, InMemoryStore
from procos_worker.ai.registry import ModelRegistry
from procos_worker.ai.taskconfig import TaskConfigs
from procos_worker.errors import InputError, LlmBusy, ModelNotFound, StoreUnavailable, VariableTooLong
from procos_worker.flags import build_flags
from procos_worker.gate import ServiceGate
from procos_worker.handler import TaskHandler
from procos_worker.models import Complete, Task, Variable
from procos_worker.settings import BackoffSettings, Settings

SETTINGS = Settings(backoff=BackoffSettings(initial_s=0.001, max_s=0.002))
LOG = structlog.get_logger("test")


def task(query: str | None = "What is BPMN?", **variables: str) -> Task:
    given = {"query": query, **variables} if query is not None else dict(variables)
    return Task(id="t-1", topic="ai-query", worker_id="w", process_instance_id="pi-1",
                variables={k: Variable(value=v) for k, v in given.items()})


def handler(store: InMemoryStore, llm: ScriptedLlm, models: InMemoryModels | None = None) -> TaskHandler:
    configs = TaskConfigs(SETTINGS, ModelRegistry(SETTINGS.registry, (models or InMemoryModels()).load))
    return TaskHandler(SETTINGS, store, llm, configs,
                       store_gate=ServiceGate("postgresql", SETTINGS.backoff, store.ping, draw=lambda: 0.5),
                       llm_gate=ServiceGate("ollama", SETTINGS.backoff, llm.ping, draw=lambda: 0.5))


def test_inputs_then_input_row_then_llm_then_output_row_then_complete() -> None:
    store, llm = InMemoryStore(), ScriptedLlm("BPMN is a notation.")
    outcome = handler(store, llm).handle(task(context="for a newcomer", system_prompt="Be brief."),
                                         threading.Event(), LOG)
    output, text = store.outputs["t-1"]
    assert outcome == Complete(variables=build_flags(output), context_id=output.id)
    assert text == "BPMN is a notation."
    assert [c.name for c in store.calls] == ["save_input", "save_output"]
    sent = llm.calls_to("chat")[0].args["messages"]
    assert sent == [{"role": "system", "content": "Be brief."},
                    {"role": "user", "content": "Context:\nfor a newcomer\n\nQuestion:\nWhat is BPMN?"}]
    assert store.inputs["t-1"].prompt == sent[-1]["content"]


def test_a_redelivered_task_is_completed_from_its_stored_answer_without_asking_again() -> None:
    store, llm = InMemoryStore(), ScriptedLlm()
    first = handler(store, llm).handle(task(), threading.Event(), LOG)
    again = handler(store, llm).handle(task(), threading.Event(), LOG)
    assert again == first
    assert len(llm.calls_to("chat")) == 1


def test_bad_input_stores_nothing() -> None:
    store, llm = InMemoryStore(), ScriptedLlm()
    with pytest.raises(InputError, match="'query' is missing"):
        handler(store, llm).handle(task(None), threading.Event(), LOG)
    assert not store.calls and not llm.calls


def test_an_llm_error_leaves_the_input_row() -> None:
    store, llm = InMemoryStore(), ScriptedLlm()
    llm.fail("chat", LlmBusy("503"))
    with pytest.raises(LlmBusy):
        handler(store, llm).handle(task(), threading.Event(), LOG)
    assert "t-1" in store.inputs and "t-1" not in store.outputs


def test_a_model_the_server_lacks_names_the_layer_that_set_it() -> None:
    store, llm = InMemoryStore(), ScriptedLlm()
    llm.fail("chat", ModelNotFound("model 'smollm2:135m' is not on the Ollama server", details="HTTP 404"))
    with pytest.raises(ModelNotFound) as info:
        handler(store, llm).handle(task(), threading.Event(), LOG)
    assert info.value.message == ("model 'smollm2:135m' is not on the Ollama server "
                                  "(this task's model comes from OLLAMA_MODEL)")
    assert "t-1" in store.inputs and "t-1" not in store.outputs


def test_an_outage_is_waited_out_inside_the_pipeline() -> None:
    store, llm = InMemoryStore(), ScriptedLlm()
    store.fail("save_output", StoreUnavailable("refused"), StoreUnavailable("refused"))
    outcome = handler(store, llm).handle(task(), threading.Event(), LOG)
    assert outcome.context_id == store.outputs["t-1"][0].id
    assert len(store.calls_to("save_output")) == 3 and len(llm.calls_to("chat")) == 1


def test_an_outage_ends_the_pipeline_when_the_run_is_cancelled() -> None:
    store, llm = InMemoryStore(), ScriptedLlm()
    store.down = True
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(StoreUnavailable):
        handler(store, llm).handle(task(), cancel, LOG)
    assert not llm.calls


def test_a_flag_that_would_not_fit_camunda_is_an_error_after_storing() -> None:
    store, llm = InMemoryStore(), ScriptedLlm()
    llm.answered_model = "m" * 4001  # whatever the server says it ran ends up in ai_model
    with pytest.raises(VariableTooLong, match="ai_model"):
        handler(store, llm).handle(task(), threading.Event(), LOG)
    assert "t-1" in store.outputs, "the answer is kept"
