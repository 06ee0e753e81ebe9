"""Structured answers on the real stack (issue 12): ``procos.outputSchema`` sent to the real smollm2:135m
as ``format``, every answer checked and stored whole, its properties made typed process variables that
steer the triage example's gateway. The fake Ollama answers what a real one won't on demand: text that
is not JSON (the repair attempts and AI_OUTPUT_INVALID), an answer over 4000 characters."""

from __future__ import annotations

import json
import threading
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
import structlog

from procos_testkit.engine import EngineRest, ai_steps_bpmn, own_copy
from procos_testkit.fake_ollama import Behaviour, FakeOllama
from procos_worker.ai.llm import LlmClient
from procos_worker.ai.registry import ModelRegistry
from procos_worker.ai.taskconfig import TaskConfigs
from procos_worker.errors import OutputInvalid, PermanentError, TaskError
from procos_worker.gate import ServiceGate
from procos_worker.handler import TaskHandler
from procos_worker.models import Task, TypedValue, Variable
from procos_worker.settings import Settings, default_worker_id
from procos_worker.store.context import ContextStore
from procos_worker.store.registry import ModelTable
from procos_worker.worker import Worker

pytestmark = pytest.mark.integration

TRIAGE_BPMN = Path(__file__).resolve().parents[2] / "bpmn" / "ai-ticket-triage.bpmn"
AUTH_ENGINE_URL = "http://127.0.0.1:8081/engine-rest"  # scripts/stack's camunda-auth (H2, demo/demo)
TICKETS = [
    "Our whole team cannot log in since 9am, the site answers 502 Bad Gateway.",
    "I was charged twice for my March invoice, please refund one payment.",
    "How do I change the email address on my account?",
    "Feature idea: a dark mode for the dashboard would be nice.",
    "The payment page crashes and we are losing orders right now!",
    "Can you send me a copy of last year's invoices for our accountant?",
    "The mobile app shows a blank screen after the latest update.",
    "Please delete my account and all my data.",
    "Our API calls time out since this morning, production is down.",
    "The VAT number on my invoice is wrong.",
    "I forgot my password and the reset email never arrives.",
    "Is there a discount for non-profit organisations?",
    "Reports have loaded very slowly for a week, but they do load.",
    "Your card terminal declines every customer card in our shop, we cannot sell anything.",
    "Add my colleague anna@example.com as an admin of our team.",
    "Thank you for the quick help yesterday!",
    "The export to CSV puts all columns into one.",
    "Our subscription renewed at the old price instead of the new plan.",
    "Two-factor codes are rejected, none of our staff can sign in.",
    "Where can I find the documentation for webhooks?",
]
DECLARED_TYPES = {"triage_category": "String", "triage_urgent": "Boolean", "triage_priority": "Long",
                  "triage_summary": "String"}
ROUTES = {"billing": "handle-billing", "outage": "handle-outage"}
HANDLED = {"handle-urgent", "handle-billing", "handle-outage", "handle-general", "triage-by-hand"}
NOT_JSON = "Sorry, I can only answer in prose: this looks like an outage."


def _branch(answer: dict[str, Any]) -> str:
    """Where the example's gateway must send a ticket with this (stored) answer."""
    return "handle-urgent" if answer["urgent"] else ROUTES.get(answer["category"], "handle-general")


def _schema_of(path: Path) -> dict[str, Any]:
    ns = {"camunda": "http://camunda.org/schema/1.0/bpmn"}
    for prop in ET.parse(path).getroot().iterfind(".//camunda:property", ns):
        if prop.get("name") == "procos.outputSchema":
            schema: dict[str, Any] = json.loads(prop.get("value") or "")
            return schema
    raise AssertionError("no procos.outputSchema")


def _runtime_variables(engine_rest: EngineRest, pi: str) -> dict[str, Any]:
    """GET /process-instance/{id}/variables: what the running instance holds, with each value's type."""
    variables: dict[str, Any] = engine_rest.get(f"/process-instance/{pi}/variables", deserializeValues="false")
    return variables


def _rows(db: psycopg.Connection[Any], pi: str) -> list[tuple[str, Any, Any, str | None]]:
    return db.execute("SELECT id::text, context_type, content_data, content_text FROM procos_ai_context "
                      "WHERE process_instance_id = %s ORDER BY created_at, id", (pi,)).fetchall()


# -- the triage example with the real model --------------------------------------------------------------

@dataclass
class TriageRun:
    key: str
    instances: list[str]
    variables: dict[str, dict[str, Any]]
    activities: dict[str, list[str]]
    rows: dict[str, list[tuple[str, Any, Any, str | None]]]


@pytest.fixture(scope="module")
def triage_run(engine_rest: EngineRest, settings: Settings, store: ContextStore, ollama_up: str,
               tmp_path_factory: pytest.TempPathFactory) -> Iterator[TriageRun]:
    """The example deployed under its own topic and key, 20 tickets triaged by the real model."""
    suffix = uuid.uuid4().hex[:10]
    topic = key = f"ai-triage-{suffix}"
    engine_rest.deploy(own_copy(TRIAGE_BPMN, topic, key), key)
    instances = [engine_rest.start(key, {"ticket": ticket}) for ticket in TICKETS]
    worker_settings = settings.model_copy(update={"worker": settings.worker.model_copy(update={
        "id": default_worker_id(), "topics": [topic], "async_response_timeout_ms": 5_000,
        "health_file": tmp_path_factory.mktemp("triage") / "health.json"})})
    worker = Worker(worker_settings)
    thread = threading.Thread(target=worker.run, kwargs={"install_signal_handlers": False}, daemon=True)
    thread.start()
    try:
        engine_rest.wait_for(lambda: all(HANDLED & set(engine_rest.activity_ids(pi)) for pi in instances),
                             timeout_s=1200, interval_s=1.0, what="20 tickets triaged")
    finally:
        worker.stop()
        thread.join(60)
    with psycopg.connect(settings.database.url.get_secret_value(), autocommit=True) as db:
        rows = {pi: _rows(db, pi) for pi in instances}
    yield TriageRun(key=key, instances=instances,
                    variables={pi: _runtime_variables(engine_rest, pi) for pi in instances},
                    activities={pi: engine_rest.activity_ids(pi) for pi in instances}, rows=rows)
    for pi in instances:
        engine_rest.delete_instance(pi)


def test_twenty_triage_answers_of_the_real_model_are_valid_and_every_variable_typed_as_declared(
    triage_run: TriageRun, store: ContextStore, settings: Settings,
) -> None:
    schema = _schema_of(TRIAGE_BPMN)
    answers = sum(1 for rows in triage_run.rows.values() for _, kind, _, _ in rows if "output" in kind)
    first_valid = sum(1 for rows in triage_run.rows.values() for _, kind, _, _ in rows if kind == "output")
    repaired = [pi for pi, rows in triage_run.rows.items() if any(kind.startswith("invalid") for _, kind, _, _ in rows)]
    print(f"\nvalidity: {first_valid - len(repaired)}/{len(TICKETS)} instances valid at the first answer, "
          f"{len(repaired)} repaired; {first_valid}/{answers} answers of the model valid")
    for pi in triage_run.instances:
        error = triage_run.variables[pi].get("triage_error_message")
        assert "triage-by-hand" not in triage_run.activities[pi], (pi, error)
        variables = triage_run.variables[pi]
        typed = {name: row["type"] for name, row in variables.items() if name in DECLARED_TYPES}
        assert typed == DECLARED_TYPES, pi
        output = store.get(variables["triage_context_id"]["value"])
        assert output is not None and output.context_type == "output" and output.process_instance_id == pi
        # Stored whole: the raw text, and the parsed object the variables came from.
        assert output.content_text is not None and json.loads(output.content_text) == output.content_data["structured"]
        answer = output.content_data["structured"]
        assert {name: variables[f"triage_{name}"]["value"] for name in answer} == answer
        assert answer["category"] in {"billing", "outage", "account", "other"} and 1 <= answer["priority"] <= 5
        assert len(answer["summary"]) <= 200
        assert variables["triage_response_length"]["value"] == len(output.content_text)
        question = store.get_input_for(output.id)
        assert question is not None and question.content_data["output_schema"] == schema
        assert question.content_data["messages"][-1]["content"].startswith("Ticket:\n")
    # The 20 answers are the model's own (temperature 0, but different tickets): not one canned reply.
    assert len({triage_run.variables[pi]["triage_summary"]["value"] for pi in triage_run.instances}) > 10
    assert not repaired, f"instances repaired: {repaired}"


def test_the_gateway_takes_the_branch_the_stored_json_says(triage_run: TriageRun, store: ContextStore) -> None:
    taken: dict[str, int] = {}
    for pi in triage_run.instances:
        output = store.get(triage_run.variables[pi]["triage_context_id"]["value"])
        assert output is not None
        expected = _branch(output.content_data["structured"])
        assert expected in triage_run.activities[pi], (pi, output.content_data["structured"], triage_run.activities[pi])
        assert len(HANDLED & set(triage_run.activities[pi])) == 1
        taken[expected] = taken.get(expected, 0) + 1
    print(f"\nbranches taken: {taken}")
    assert len(taken) >= 2, f"the 20 tickets all went one way: {taken}"


def test_the_triage_example_deploys_on_both_local_engines(engine_rest: EngineRest) -> None:
    text = TRIAGE_BPMN.read_text(encoding="utf-8")
    # Camunda Run deploys bpmn/ as it is: a history time to live of its own, nothing that needs a script engine.
    assert 'camunda:historyTimeToLive="P30D"' in text
    assert "scriptTask" not in text and "camunda:script" not in text and "language=" not in text
    for rest in (engine_rest, EngineRest(AUTH_ENGINE_URL, auth=("demo", "demo"))):
        key = f"ai-triage-{uuid.uuid4().hex[:8]}"
        deployed = rest.deploy(own_copy(TRIAGE_BPMN, key, key), key)
        definitions = deployed["deployedProcessDefinitions"]
        assert [d["key"] for d in definitions.values()] == [key], rest.base_url
        rest.session.delete(f"{rest.base_url}/deployment/{deployed['id']}", params={"cascade": "true"}, timeout=30)


# -- repair attempts and AI_OUTPUT_INVALID (the fake answering text that is not JSON) -----------------------

def test_an_answer_that_is_never_json_ends_at_ai_output_invalid_with_every_attempt_stored(
    engine_rest: EngineRest, run_worker: Callable[..., Any], db: psycopg.Connection[Any],
) -> None:
    suffix = uuid.uuid4().hex[:10]
    topic = key = f"ai-triage-{suffix}"
    engine_rest.deploy(own_copy(TRIAGE_BPMN, topic, key), key)
    with FakeOllama(behaviour=Behaviour(answer=NOT_JSON)) as fake:
        pi = engine_rest.start(key, {"ticket": "The site is down."})
        run_worker(topic, ollama={"base_url": fake.base_url}, task={"output_repair_attempts": 2})
        engine_rest.wait_for(lambda: engine_rest.passed_task(pi, "triage-by-hand"), timeout_s=120,
                             what="the ticket at 'Triage by hand'")
        assert fake.chat_calls == 3

    rows = _rows(db, pi)
    assert [kind for _, kind, _, _ in rows] == ["input", "invalid_output_1", "repair_input_2", "invalid_output_2",
                                                "repair_input_3", "invalid_output_3"]
    ids = {kind: row_id for row_id, kind, _, _ in rows}
    data = {kind: content for _, kind, content, _ in rows}
    for n in (1, 2, 3):
        invalid = data[f"invalid_output_{n}"]
        assert invalid["attempt"] == n and invalid["content"] == NOT_JSON and invalid["structured"] is None
        assert invalid["errors"][0].startswith("the answer is not JSON: Expecting value")
        assert invalid["input_context_id"] == ids["input" if n == 1 else f"repair_input_{n}"]
    assert data["input"]["output_schema"] == _schema_of(TRIAGE_BPMN)
    repair = data["repair_input_2"]
    assert repair["repair_of"] == ids["invalid_output_1"] and repair["attempt"] == 2
    assert repair["messages"][:2] == data["input"]["messages"]
    assert repair["messages"][2] == {"role": "assistant", "content": NOT_JSON}
    assert repair["messages"][3]["content"].startswith("Your answer does not match the required JSON schema:\n"
                                                       "- the answer is not JSON")

    variables = _runtime_variables(engine_rest, pi)
    message = variables["triage_error_message"]["value"]
    assert message.startswith("activity 'triage', property procos.outputSchema: 3 answer(s) did not match the schema; "
                              f"stored as procos_ai_context rows {ids['invalid_output_1']}, "
                              f"{ids['invalid_output_2']}, {ids['invalid_output_3']}; last error: ")
    assert not [name for name in variables if name.startswith("triage_") and name != "triage_error_message"]
    engine_rest.delete_instance(pi)


def test_an_answer_repaired_at_the_second_attempt_completes_from_the_repair(
    engine_rest: EngineRest, run_worker: Callable[..., Any], db: psycopg.Connection[Any], store: ContextStore,
) -> None:
    schema = {"type": "object", "properties": {"answer": {"type": "string", "maxLength": 200}}, "required": ["answer"]}
    topic = key = f"ai-repair-{uuid.uuid4().hex[:10]}"
    engine_rest.deploy(ai_steps_bpmn(key, topic, [("reply", {"procos.outputSchema": json.dumps(schema),
                                                              "procos.resultPrefix": "reply"})]), key)
    # The marker makes the first answer prose; the repair request carries no marker, so the fake answers it
    # with its default for a format request, {"answer": ...}: valid.
    with FakeOllama() as fake:
        pi = engine_rest.start(key, {"query": "[[fake:answer=Hello there!]] Say hello."})
        run_worker(topic, ollama={"base_url": fake.base_url})
        engine_rest.wait_for(lambda: engine_rest.passed_task(pi), timeout_s=120, what="the repaired answer")
        assert fake.chat_calls == 2

    rows = _rows(db, pi)
    assert [kind for _, kind, _, _ in rows] == ["input", "invalid_output_1", "repair_input_2", "output"]
    variables = _runtime_variables(engine_rest, pi)
    output = store.get(variables["reply_context_id"]["value"])
    assert output is not None and output.content_data["attempt"] == 2
    assert variables["reply_answer"] == {"type": "String", "value": output.content_data["structured"]["answer"],
                                         "valueInfo": {}}
    # The answer's input row is the task's question; the repair request it answered is named beside it.
    question = store.get_input_for(output.id)
    assert question is not None and question.context_type == "input"
    assert output.content_data["input_context_id"] == str(question.id)
    repair = store.get(output.content_data["repair_input_id"])
    assert repair is not None and repair.context_type == "repair_input_2"
    assert repair.content_data["messages"][0] == question.content_data["messages"][0]
    assert repair.content_data["messages"][1] == {"role": "assistant", "content": "Hello there!"}
    engine_rest.delete_instance(pi)


def _handle(settings: Settings, store: ContextStore, fake: FakeOllama, task: Task, repairs: int) -> Any:
    """The handler run once on ``task`` (as the worker runs it), with the fake as Ollama: its outcome, or the
    task error it raised."""
    changed = settings.model_copy(update={
        "ollama": settings.ollama.model_copy(update={"base_url": fake.base_url}),
        "task": settings.task.model_copy(update={"output_repair_attempts": repairs})})
    llm = LlmClient(changed.ollama)
    configs = TaskConfigs(changed, ModelRegistry(changed.registry, ModelTable(store, "ollama").load))
    handler = TaskHandler(changed, store, llm, configs,
                          store_gate=ServiceGate("postgresql", changed.backoff, store.ping),
                          llm_gate=ServiceGate("ollama", changed.backoff, llm.ping))
    try:
        return handler.handle(task, threading.Event(), structlog.get_logger("test"))
    except TaskError as exc:
        return exc


def _task(schema: dict[str, Any], again: Task | None = None) -> Task:
    """A task with this schema; with ``again``: that task fetched again (same ids), the schema changed."""
    return Task(id=again.id if again else str(uuid.uuid4()), topic="ai-redelivery", worker_id="w",
                process_instance_id=again.process_instance_id if again else str(uuid.uuid4()), activity_id="triage",
                variables={"query": Variable("Is a fire urgent?")},
                extension_properties={"procos.outputSchema": json.dumps(schema), "procos.resultPrefix": "t"})


def _kinds(db: psycopg.Connection[Any], task: Task) -> list[str]:
    return [kind for (kind,) in db.execute("SELECT context_type FROM procos_ai_context WHERE task_id = %s "
                                           "ORDER BY created_at, id", (task.id,))]


URGENT = {"type": "object", "properties": {"urgent": {"type": "boolean"}}, "required": ["urgent"]}


def test_a_task_fetched_again_reuses_its_stored_attempts_and_never_completes_from_an_invalid_one(
    settings: Settings, store: ContextStore, db: psycopg.Connection[Any],
) -> None:
    """The handler run again on the same task (a crash, an expired lock, a resolved incident)."""
    task = _task(URGENT)
    with FakeOllama(behaviour=Behaviour(answer=NOT_JSON)) as fake:
        first = _handle(settings, store, fake, task, repairs=0)
        assert isinstance(first, OutputInvalid) and fake.chat_calls == 1
        assert _kinds(db, task) == ["input", "invalid_output_1"]
        # One repair allowed now: attempt 1's stored answer is reused, only attempt 2 is asked.
        second = _handle(settings, store, fake, task, repairs=1)
        assert isinstance(second, OutputInvalid) and fake.chat_calls == 2
        assert _kinds(db, task) == ["input", "invalid_output_1", "repair_input_2", "invalid_output_2"]
        fake.set_behaviour(answer='{"urgent": true}')
        # The model would answer well now, but both attempts are stored: they are not asked again and the
        # task is not completed from either of them.
        again = _handle(settings, store, fake, task, repairs=1)
        assert isinstance(again, OutputInvalid) and again.message == second.message and fake.chat_calls == 2
        done = _handle(settings, store, fake, task, repairs=2)
        assert fake.chat_calls == 3
        assert _kinds(db, task) == ["input", "invalid_output_1", "repair_input_2", "invalid_output_2",
                                    "repair_input_3", "output"]
        assert done.variables["t_urgent"] == TypedValue(True, "Boolean", done.variables["t_urgent"].source)
        output = store.get(done.context_id)
        assert output is not None and output.content_data["attempt"] == 3
        # Fetched once more: completed from the stored valid answer, the model not asked.
        assert _handle(settings, store, fake, task, repairs=2) == done and fake.chat_calls == 3


def test_a_schema_changed_between_deliveries_is_never_completed_from_an_answer_it_refuses(
    settings: Settings, store: ContextStore, db: psycopg.Connection[Any],
) -> None:
    """A topic's default schema (TASK_TOPIC_DEFAULTS) changed while a task was between two deliveries."""
    as_text = {"type": "object", "properties": {"urgent": {"type": "string"}}, "required": ["urgent"]}
    with FakeOllama(behaviour=Behaviour(answer='{"urgent": true}')) as fake:
        first = _task(URGENT)
        done = _handle(settings, store, fake, first, repairs=0)
        # The stored valid answer breaks the new schema: an incident naming it, not a completion.
        changed = _handle(settings, store, fake, _task(as_text, first), repairs=0)
    assert isinstance(changed, PermanentError) and not isinstance(changed, OutputInvalid)
    assert f"the stored answer {done.context_id} does not match the schema any more" in changed.message
    assert fake.chat_calls == 1

    # A stored invalid answer that the new schema accepts is not taken as valid: the model is asked again.
    with FakeOllama(behaviour=Behaviour(answer='{"urgent": "yes"}')) as fake:
        task = _task(URGENT)
        assert isinstance(_handle(settings, store, fake, task, repairs=0), OutputInvalid)
        fake.set_behaviour(answer='{"urgent": "very"}')
        done = _handle(settings, store, fake, _task(as_text, task), repairs=0)
        assert fake.chat_calls == 2 and done.variables["t_urgent"].value == "very"
        assert _kinds(db, task) == ["input", "invalid_output_1", "output"]


# -- what Camunda can't take, and modelling mistakes --------------------------------------------------------

def test_a_property_over_4000_characters_is_an_incident_naming_it_never_a_500(
    engine_rest: EngineRest, run_worker: Callable[..., Any], db: psycopg.Connection[Any],
) -> None:
    schema = {"type": "object", "properties": {"summary": {"type": "string"}}, "required": ["summary"]}
    topic = key = f"ai-long-{uuid.uuid4().hex[:10]}"
    engine_rest.deploy(ai_steps_bpmn(key, topic, [("summarise", {"procos.outputSchema": json.dumps(schema)})]), key)
    answer = json.dumps({"summary": "s" * 5000})
    with FakeOllama(behaviour=Behaviour(answer=answer)) as fake:
        pi = engine_rest.start(key, {"query": "Summarise everything."})
        run_worker(topic, ollama={"base_url": fake.base_url})
        incidents = engine_rest.wait_for(lambda: engine_rest.incidents(pi), timeout_s=120, what="an incident")
    message = incidents[0]["incidentMessage"]
    assert message.startswith("activity 'summarise': variable 'ai_summary' (answer property 'summary' of "
                              "procos.outputSchema; bound it (maxLength, maxItems) or leave it out with "
                              "procos.outputVariables) would be 5000 characters; Camunda stores at most 4000")
    # The answer is stored whole; the instance waits at the task (the completion was never sent).
    assert [(kind, text) for _, kind, _, text in _rows(db, pi)][1] == ("output", answer)
    assert [t["activityId"] for t in engine_rest.external_tasks(processInstanceId=pi)] == ["summarise"]
    assert "ai_summary" not in _runtime_variables(engine_rest, pi)
    engine_rest.delete_instance(pi)


@pytest.mark.parametrize(
    ("schema", "problem"),
    [
        ('{"type": "array", "items": {"type": "string"}}',
         'must describe a JSON object: "type": "object" at the top level, got "type": "array"'),
        ('{"type": "object", "properties": {"urgent": {"type": "bool"}}}',
         "is not a valid JSON Schema: at /properties/urgent/type"),
        ('{"type": "object", "properties": {"urgent": {"type": "boolean"}}', "is not valid JSON"),
    ],
)
def test_a_bad_schema_is_an_incident_naming_the_activity_and_property(
    engine_rest: EngineRest, run_worker: Callable[..., Any], db: psycopg.Connection[Any], schema: str, problem: str,
) -> None:
    topic = key = f"ai-bad-schema-{uuid.uuid4().hex[:10]}"
    engine_rest.deploy(ai_steps_bpmn(key, topic, [("classify", {"procos.outputSchema": schema})]), key)
    with FakeOllama() as fake:
        pi = engine_rest.start(key, {"query": "Classify this."})
        run_worker(topic, ollama={"base_url": fake.base_url})
        incidents = engine_rest.wait_for(lambda: engine_rest.incidents(pi), timeout_s=120, what="an incident")
        assert fake.chat_calls == 0
    assert incidents[0]["incidentMessage"].startswith(f"activity 'classify', property procos.outputSchema: {problem}")
    assert _rows(db, pi) == []
    engine_rest.delete_instance(pi)


def test_output_variables_limit_which_properties_become_variables_each_typed(
    engine_rest: EngineRest, run_worker: Callable[..., Any], store: ContextStore,
) -> None:
    schema = {"type": "object", "required": ["category", "urgent"], "properties": {
        "category": {"enum": ["billing", "outage"]}, "urgent": {"type": "boolean"}, "score": {"type": "number"},
        "count": {"type": "integer"}, "note": {"type": ["string", "null"]}, "tags": {"type": "array"}}}
    answer = {"category": "billing", "urgent": False, "score": 3, "count": 2.0, "note": None, "tags": ["a", "b"]}
    topic = key = f"ai-vars-{uuid.uuid4().hex[:10]}"
    engine_rest.deploy(ai_steps_bpmn(key, topic, [("classify", {
        "procos.outputSchema": json.dumps(schema), "procos.outputVariables": "urgent, score, count, note, tags",
        "procos.resultPrefix": "c"})]), key)
    with FakeOllama(behaviour=Behaviour(answer=json.dumps(answer))) as fake:
        pi = engine_rest.start(key, {"query": "Classify this."})
        run_worker(topic, ollama={"base_url": fake.base_url})
        engine_rest.wait_for(lambda: engine_rest.passed_task(pi), timeout_s=120, what="the answer")
    variables = _runtime_variables(engine_rest, pi)
    answered = {name: (row["type"], row["value"]) for name, row in variables.items()
                if name.startswith("c_") and name.removeprefix("c_") in answer}
    assert answered == {"c_urgent": ("Boolean", False), "c_score": ("Double", 3.0), "c_count": ("Long", 2),
                        "c_note": ("Null", None), "c_tags": ("Json", '["a", "b"]')}
    assert "c_category" not in variables  # not named in procos.outputVariables
    output = store.get(variables["c_context_id"]["value"])
    assert output is not None and output.content_data["structured"] == answer  # the whole answer is stored
    engine_rest.delete_instance(pi)
