"""Per-task AI configuration on the real stack (Camunda, PostgreSQL, Ollama with smollm2:135m):
procos.* properties, prompt templates, result prefix and scope, the model registry."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
import requests
from psycopg.types.json import Jsonb

from procos_testkit.engine import TWO_STEPS_BPMN, EngineRest, ai_steps_bpmn, json_variable, own_copy
from procos_worker.settings import Settings
from procos_worker.store.context import ContextStore

pytestmark = pytest.mark.integration

FLAGS = ("context_id", "response_stored", "response_length", "model", "provider", "prompt_tokens",
         "completion_tokens", "total_tokens", "done_reason")
DETERMINISTIC = {"temperature": 0, "seed": 7}
TEST_VERSION = "procos-test"


@pytest.fixture(scope="module")
def alias_model(ollama_up: str, settings: Settings) -> Iterator[str]:
    """A second model name on the real Ollama: a copy of the served model (the same weights)."""
    name = f"procos-alias-{uuid.uuid4().hex[:8]}:135m"
    copied = requests.post(f"{ollama_up}/api/copy", json={"source": settings.ollama.model, "destination": name},
                           timeout=60)
    assert copied.status_code == 200, copied.text
    yield name
    requests.delete(f"{ollama_up}/api/delete", json={"model": name}, timeout=60)


@pytest.fixture()
def register(db: psycopg.Connection[Any]) -> Iterator[Callable[..., None]]:
    """Add rows to procos_ai_models for this test (removed afterwards)."""
    added: list[str] = []

    def add(name: str, *, active: bool = True, options: dict[str, Any] | None = None) -> None:
        db.execute("INSERT INTO procos_ai_models (model_name, provider, version, config_data, is_active) "
                   "VALUES (%s, 'ollama', %s, %s, %s)",
                   (name, TEST_VERSION, Jsonb({"description": "test", "options": options or {}}), active))
        added.append(name)

    yield add
    for name in added:
        db.execute("DELETE FROM procos_ai_models WHERE model_name = %s AND version = %s", (name, TEST_VERSION))


def _deploy(engine_rest: EngineRest, steps: list[tuple[str, dict[str, str]]]) -> tuple[str, str]:
    suffix = uuid.uuid4().hex[:10]
    topic = key = f"ai-steps-{suffix}"
    engine_rest.deploy(ai_steps_bpmn(key, topic, steps), key)
    return topic, key


def _rows(db: psycopg.Connection[Any], pi: str) -> list[Any]:
    return db.execute("SELECT context_type FROM procos_ai_context WHERE process_instance_id = %s", (pi,)).fetchall()


def test_two_ai_steps_with_their_own_prefix_model_options_and_template_keep_both_answers(
    engine_rest: EngineRest, run_worker: Callable[..., Any], store: ContextStore, alias_model: str,
    register: Callable[..., None], settings: Settings,
) -> None:
    register(alias_model, options={"num_predict": 6})  # the second model's default options: from its row
    draft_prompt = "Write one sentence about {{ subject }}."
    title_prompt = "A title for ticket {{ ticket.id }}: {{ subject }}"
    topic, key = _deploy(engine_rest, [
        ("draft", {"procos.prompt": draft_prompt, "procos.resultPrefix": "draft",
                   "procos.options": json.dumps({"num_predict": 24, **DETERMINISTIC})}),
        ("title", {"procos.model": alias_model, "procos.systemPrompt": "You write short titles.",
                   "procos.prompt": title_prompt, "procos.resultPrefix": "title",
                   "procos.options": json.dumps(DETERMINISTIC)}),
    ])
    pi = engine_rest.start(key, {"subject": "late invoices", "ticket": json_variable({"id": 42})})
    run_worker(topic, registry={"cache_s": 0})
    engine_rest.wait_for(lambda: engine_rest.passed_task(pi), timeout_s=600, what="both AI steps done")

    variables = engine_rest.variables(pi)
    for prefix in ("draft", "title"):
        assert {f"{prefix}_{flag}" for flag in FLAGS} <= set(variables), prefix
    assert not [name for name in variables if name.startswith("ai_")], "nothing under the default prefix"
    assert variables["draft_model"]["value"] == settings.ollama.model
    assert variables["title_model"]["value"] == alias_model

    draft = store.get(variables["draft_context_id"]["value"])
    title = store.get(variables["title_context_id"]["value"])
    assert draft is not None and title is not None and draft.id != title.id
    assert (draft.process_definition_key, draft.activity_id, draft.model_used) == (key, "draft", settings.ollama.model)
    assert (title.process_definition_key, title.activity_id, title.model_used) == (key, "title", alias_model)
    assert draft.token_usage is not None and 0 < draft.token_usage["completion_tokens"] <= 24
    assert title.token_usage is not None and 0 < title.token_usage["completion_tokens"] <= 6
    assert variables["title_completion_tokens"]["value"] == title.token_usage["completion_tokens"]

    draft_in, title_in = store.get_input_for(draft.id), store.get_input_for(title.id)
    assert draft_in is not None and title_in is not None
    assert draft_in.content_data["messages"] == [{"role": "user", "content": "Write one sentence about late invoices."}]
    assert draft_in.content_data["templates"] == {"procos.prompt": draft_prompt}
    assert draft_in.content_data["variables"] == {"subject": "late invoices"}
    assert draft_in.content_data["options"] == {"num_ctx": 4096, "num_predict": 24, **DETERMINISTIC}
    assert title_in.content_data["messages"] == [
        {"role": "system", "content": "You write short titles."},
        {"role": "user", "content": "A title for ticket 42: late invoices"},
    ]
    assert title_in.content_data["variables"] == {"ticket": {"id": 42}, "subject": "late invoices"}
    # The alias's row gives num_predict; the task's own options come on top.
    assert title_in.content_data["options"] == {"num_predict": 6, **DETERMINISTIC}
    assert title_in.model_used == alias_model

    assert [row.id for row in store.step_answers(key, "draft")] == [draft.id]
    assert [row.id for row in store.step_answers(key, "title", process_instance_id=pi)] == [title.id]
    assert [row.context_type for row in store.conversation(pi)] == ["input", "output", "input", "output"]


def test_every_layer_of_settings_in_its_order_on_the_real_stack(
    engine_rest: EngineRest, run_worker: Callable[..., Any], store: ContextStore, alias_model: str,
    register: Callable[..., None], settings: Settings,
) -> None:
    """The task over its topic's defaults over the model's row over OLLAMA_OPTIONS, key by key; the
    topic's procos.model over OLLAMA_MODEL."""
    register(alias_model, options={"num_predict": 3, "seed": 1})
    topic, key = _deploy(engine_rest, [
        ("from-topic", {"procos.prompt": "Say hi to {{ who }}.", "procos.resultPrefix": "topic",
                        "procos.options": json.dumps({"temperature": 0})}),
        ("own-model", {"procos.prompt": "Say bye to {{ who }}.", "procos.resultPrefix": "own",
                       "procos.model": settings.ollama.model}),
    ])
    pi = engine_rest.start(key, {"who": "Ada"})
    run_worker(topic, registry={"cache_s": 0},
               ollama={"options": {"num_predict": 8, "temperature": 0.5, "top_k": 5}},
               task={"topic_defaults": {topic: {"procos.model": alias_model, "procos.options": {"seed": 7}}}})
    engine_rest.wait_for(lambda: engine_rest.passed_task(pi), timeout_s=600, what="both AI steps done")

    variables = engine_rest.variables(pi)
    assert (variables["topic_model"]["value"], variables["own_model"]["value"]) == (alias_model, settings.ollama.model)
    asked = {prefix: store.get_input_for(variables[f"{prefix}_context_id"]["value"]) for prefix in ("topic", "own")}
    assert asked["topic"] is not None and asked["own"] is not None
    # OLLAMA_OPTIONS < the alias's row (num_predict, seed) < the topic (seed) < the task (temperature).
    assert asked["topic"].content_data["options"] == {"num_predict": 3, "temperature": 0, "top_k": 5, "seed": 7}
    # OLLAMA_OPTIONS < smollm2's row (num_ctx) < the topic (seed); the task names its own model.
    assert asked["own"].content_data["options"] == {"num_predict": 8, "temperature": 0.5, "top_k": 5,
                                                    "num_ctx": 4096, "seed": 7}
    assert variables["topic_completion_tokens"]["value"] <= 3


def test_parallel_multi_instance_step_keeps_each_of_five_answers(
    engine_rest: EngineRest, run_worker: Callable[..., Any], store: ContextStore, ollama_up: str,
) -> None:
    """bpmn/ai-two-steps.bpmn: five documents summarised in parallel with procos.resultScope=local, the
    output mapping collecting every summary_context_id; then one answer over all of them."""
    suffix = uuid.uuid4().hex[:10]
    topic = key = f"ai-two-steps-{suffix}"
    engine_rest.deploy(own_copy(TWO_STEPS_BPMN, topic, key), key)
    animals = ["cats", "dogs", "owls", "bees", "eels"]
    documents = [f"Document {i}: a short note about {animal} and where they live." for i, animal in enumerate(animals)]
    pi = engine_rest.start(key, {"documents": json_variable(documents), "question": "Which animals are named?"})
    running = run_worker(topic)
    engine_rest.wait_for(lambda: engine_rest.passed_task(pi), timeout_s=900, what="summaries and answer done")

    summaries = json.loads(engine_rest.variables(pi)["summaries"]["value"])
    assert len(summaries) == 5 and len(set(summaries)) == 5, summaries

    answers = store.step_answers(key, "summarise", process_instance_id=pi)
    assert sorted(str(row.id) for row in answers) == sorted(summaries)
    iterations = [a for a in engine_rest.get("/history/activity-instance", processInstanceId=pi)
                  if a["activityId"] == "summarise"]
    assert len({a["id"] for a in iterations}) == 5
    assert {row.activity_instance_id for row in answers} == {a["id"] for a in iterations}
    for iteration in iterations:
        answer = store.activity_instance_answer(iteration["id"])
        assert answer is not None and str(answer.id) in summaries

    # Each iteration's flags lived in its own scope: five values, five activity instances, none at the top.
    locals_ = engine_rest.get("/history/variable-instance", processInstanceId=pi, variableName="summary_context_id")
    assert sorted(v["value"] for v in locals_) == sorted(summaries)
    assert len({v["activityInstanceId"] for v in locals_}) == 5 and pi not in {v["activityInstanceId"] for v in locals_}
    runtime = engine_rest.get(f"/process-instance/{pi}/variables")
    assert "summary_context_id" not in runtime and runtime["answer_context_id"]["value"]

    # Each document was asked about once, in its own words; the answer step saw all of them.
    asked = [store.get_input_for(row.id) for row in answers]
    assert sorted(row.content_data["variables"]["document"] for row in asked if row) == sorted(documents)
    assert sorted(row.content_data["variables"]["loopCounter"] for row in asked if row) == [0, 1, 2, 3, 4]
    answer = store.get(runtime["answer_context_id"]["value"])
    assert answer is not None and answer.activity_id == "answer-question"
    answer_in = store.get_input_for(answer.id)
    assert answer_in is not None
    system, user = answer_in.content_data["messages"]
    assert system["role"] == "system" and all(doc in user["content"] for doc in documents)
    # Each task read the variables its template names itself (engine.variables): none went back.
    assert running.worker.counters.completed == 6 and running.worker.counters.released == 0


def test_placeholders_read_variables_as_an_input_mapping_would_and_only_those_are_fetched(
    engine_rest: EngineRest, run_worker: Callable[..., Any], store: ContextStore, settings: Settings,
) -> None:
    topic = key = f"ai-local-{uuid.uuid4().hex[:10]}"
    local = ('<camunda:inputOutput><camunda:inputParameter name="subject">the local value</camunda:inputParameter>'
             "</camunda:inputOutput>")
    xml = ai_steps_bpmn(key, topic, [("ask", {"procos.prompt": "Say {{ subject }}.",
                                              "procos.options": json.dumps({"num_predict": 4})})])
    engine_rest.deploy(xml.replace("<bpmn:extensionElements>", f"<bpmn:extensionElements>{local}", 1), key)
    many = {f"unrelated_{i:03d}": f"value {i}" for i in range(200)}
    pi = engine_rest.start(key, {"subject": "the process value", **many})
    running = run_worker(topic)
    engine_rest.wait_for(lambda: engine_rest.passed_task(pi), timeout_s=300, what="AI step done")

    answer = store.get(engine_rest.variables(pi)["ai_context_id"]["value"])
    assert answer is not None
    asked = store.get_input_for(answer.id)
    assert asked is not None
    assert asked.content_data["variables"] == {"subject": "the local value"}
    assert asked.content_data["messages"][-1]["content"] == "Say the local value."
    # The task read only its template's one name (the 200 others never left the engine), resolved local
    # before process as fetchAndLock would; nothing went back for a second fetch.
    assert running.worker.counters.released == 0 and running.worker.counters.completed == 1


def test_a_disabled_model_is_an_incident_with_the_registrys_message(
    engine_rest: EngineRest, run_worker: Callable[..., Any], register: Callable[..., None],
    db: psycopg.Connection[Any],
) -> None:
    name = f"procos-disabled-{uuid.uuid4().hex[:8]}:1b"
    register(name, active=False)
    topic, key = _deploy(engine_rest, [("ask", {"procos.model": name, "procos.prompt": "Hello {{ who }}"})])
    pi = engine_rest.start(key, {"who": "world"})
    run_worker(topic, registry={"cache_s": 0})
    [incident] = engine_rest.wait_for(lambda: engine_rest.incidents(pi), timeout_s=120, what="an incident")
    assert incident["incidentMessage"] == (f"activity 'ask': model {name} is disabled in procos_ai_models "
                                          "(this task's model comes from procos.model)")
    assert incident["activityId"] == "ask"
    assert _rows(db, pi) == [], "nothing stored, Ollama not asked"


def test_a_model_the_ollama_server_does_not_have_is_an_incident_naming_activity_and_model(
    engine_rest: EngineRest, run_worker: Callable[..., Any], db: psycopg.Connection[Any], settings: Settings,
) -> None:
    name = f"procos-absent-{uuid.uuid4().hex[:8]}:1b"
    topic, key = _deploy(engine_rest, [("ask", {"procos.model": name, "procos.prompt": "Hello {{ who }}"})])
    pi = engine_rest.start(key, {"who": "world"})
    run_worker(topic)
    [incident] = engine_rest.wait_for(lambda: engine_rest.incidents(pi), timeout_s=120, what="an incident")
    assert incident["activityId"] == "ask"
    assert incident["incidentMessage"] == (
        f"activity 'ask': model '{name}' is not on the Ollama server at {settings.ollama.base_url}: pull or "
        "create it, or fix procos.model / TASK_TOPIC_DEFAULTS / OLLAMA_MODEL (this task's model comes from "
        "procos.model)")
    # The question is stored before the model is asked; no answer.
    assert [kind for (kind,) in _rows(db, pi)] == ["input"]


def test_a_model_row_with_an_option_of_the_wrong_type_is_an_incident_before_ollama_is_asked(
    engine_rest: EngineRest, run_worker: Callable[..., Any], register: Callable[..., None], alias_model: str,
    db: psycopg.Connection[Any],
) -> None:
    register(alias_model, options={"num_ctx": "big"})
    topic, key = _deploy(engine_rest, [("ask", {"procos.prompt": "Hello {{ who }}"})])
    pi = engine_rest.start(key, {"who": "world"})
    run_worker(topic, ollama={"model": alias_model}, registry={"cache_s": 0})
    [incident] = engine_rest.wait_for(lambda: engine_rest.incidents(pi), timeout_s=120, what="an incident")
    assert incident["incidentMessage"] == (
        f"activity 'ask': model {alias_model}: config_data.options in procos_ai_models: has an option of the wrong "
        "type: num_ctx: Input should be a valid integer (this task's model comes from OLLAMA_MODEL)")
    assert _rows(db, pi) == [], "nothing stored, Ollama not asked"


def test_an_unregistered_model_is_refused_when_the_setting_says_so(
    engine_rest: EngineRest, run_worker: Callable[..., Any], alias_model: str, db: psycopg.Connection[Any],
) -> None:
    topic, key = _deploy(engine_rest, [("ask", {"procos.model": alias_model, "procos.prompt": "Hi {{ who }}"})])
    pi = engine_rest.start(key, {"who": "there"})
    run_worker(topic, registry={"allow_unregistered": False, "cache_s": 0})
    [incident] = engine_rest.wait_for(lambda: engine_rest.incidents(pi), timeout_s=120, what="an incident")
    assert incident["incidentMessage"] == (
        f"activity 'ask': model {alias_model} is not registered in procos_ai_models (this task's model comes "
        "from procos.model)")
    assert _rows(db, pi) == []


BAD_PROPERTIES = {
    "unknown-property": ({"procos.temprature": "0.2"}, "unknown property procos.temprature"),
    "options-not-json": ({"procos.options": "{temperature: 0.2}"}, "property procos.options: is not valid JSON"),
    "unknown-option": ({"procos.options": '{"temprature": 0.2}'},
                       "property procos.options: unknown Ollama option 'temprature' (did you mean 'temperature'?)"),
    "bad-scope-value": ({"procos.resultScope": "global"},
                        "property procos.resultScope: must be 'process' or 'local', got 'global'"),
    "template-syntax-error": ({"procos.prompt": "Summarise {{ document "},
                              "property procos.prompt: template syntax error on line 1"),
    "bad-memory": ({"procos.memory": "session"},
                   "property procos.memory: must be 'none', 'process' or 'variable:NAME', got 'session'"),
    "bad-overflow": ({"procos.onOverflow": "cut"},
                     "property procos.onOverflow: must be 'error' or 'truncate', got 'cut'"),
}


@pytest.mark.parametrize("kind", list(BAD_PROPERTIES))
def test_a_bad_property_is_an_incident_naming_the_activity_and_property(
    kind: str, engine_rest: EngineRest, run_worker: Callable[..., Any], db: psycopg.Connection[Any],
) -> None:
    properties, problem = BAD_PROPERTIES[kind]
    topic, key = _deploy(engine_rest, [("summarise-doc", properties)])
    pi = engine_rest.start(key, {"query": "q", "document": "d"})
    run_worker(topic)
    [incident] = engine_rest.wait_for(lambda: engine_rest.incidents(pi), timeout_s=120, what="an incident")
    assert incident["activityId"] == "summarise-doc"
    assert incident["incidentMessage"].startswith("activity 'summarise-doc'"), incident["incidentMessage"]
    assert problem in incident["incidentMessage"]
    assert _rows(db, pi) == []


def test_a_missing_memory_variable_is_the_bpmn_error_naming_it(
    engine_rest: EngineRest, run_worker: Callable[..., Any], db: psycopg.Connection[Any],
) -> None:
    topic, key = _deploy(engine_rest, [("answer", {"procos.prompt": "{{ question }}",
                                                   "procos.memory": "variable:customerId"})])
    pi = engine_rest.start(key, {"question": "Where is my parcel?"})
    run_worker(topic)
    # Only AI_INPUT_INVALID's boundary event leads to the end event "rejected".
    engine_rest.wait_for(lambda: "rejected" in engine_rest.activity_ids(pi), timeout_s=120, what="end event rejected")
    variables = engine_rest.variables(pi)
    assert variables["ai_error_message"]["value"].startswith(
        "variable 'customerId' is missing; procos.memory=variable:customerId continues the conversation")
    assert _rows(db, pi) == []


def test_a_missing_template_variable_is_the_bpmn_error_naming_it(
    engine_rest: EngineRest, run_worker: Callable[..., Any], db: psycopg.Connection[Any],
) -> None:
    topic, key = _deploy(engine_rest, [("summarise", {"procos.prompt": "Summarise {{ document }} for {{ reader }}"})])
    pi = engine_rest.start(key, {"document": "a text"})
    run_worker(topic)
    engine_rest.wait_for(lambda: "rejected" in engine_rest.activity_ids(pi), timeout_s=120, what="end event rejected")
    message = engine_rest.variables(pi)["ai_error_message"]["value"]
    assert message == ("activity 'summarise', property procos.prompt: variable 'reader' is missing; "
                       "set it in the process or fix the template")
    assert _rows(db, pi) == []
