"""Hostile inputs and hostile answers, each with the outcome it must have.

Camunda String variables live in varchar(4000) columns and PostgreSQL text can't hold NUL, so big
or odd inputs travel as Json or Bytes variables (as a real process would send them). The fake
Ollama is used only for answers a real model can't give on demand (503, NUL, lone surrogate); the
unknown-model and invalid-options cases ask the real Ollama.
"""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import psycopg
import pytest

from procos_testkit.engine import EngineRest, example_bpmn, json_variable, wait_until
from procos_testkit.fake_ollama import FakeOllama
from procos_worker.outcomes import MAX_ERROR_MESSAGE_CHARS
from procos_worker.store.context import ContextStore
from tests.faults.faultkit import REAL_OLLAMA, completed, ended_at

pytestmark = pytest.mark.faults

REAL_SMALL = {"num_predict": 8, "seed": 7, "temperature": 0}
SQL = "'); DROP TABLE procos_ai_context; --"
EMOJI_RTL = (  # emoji (ZWJ sequence, flag), RLM/LRM marks, Arabic, Hebrew, a combining accent
    "Quelle est \U0001f9ea\U0001f469\U0001f3fd\u200d\U0001f52c la r\u00e9ponse? \u200f"
    "\u0645\u0631\u062d\u0628\u0627 \u0628\u0627\u0644\u0639\u0627\u0644\u0645\u200e "
    "\u05e9\u05dc\u05d5\u05dd \u05e2\u05d5\u05dc\u05dd \U0001f1ee\U0001f1f1 e\u0301"
)


def _bytes_variable(data: bytes) -> dict[str, Any]:
    return {"value": base64.b64encode(data).decode(), "type": "Bytes"}


@dataclass
class Case:
    variables: Callable[[], dict[str, Any]]
    expect: str  # rejected | completed | incident | retry
    message: str = ""  # part of the BPMN error / incident message
    ollama: str = "fake"  # fake | real
    settings: dict[str, dict[str, Any]] = field(default_factory=dict)
    query: Any = None  # the query as the input row must hold it
    answer_has: str | None = None  # a character the stored answer must contain
    context: Any = None  # the context as the input row must hold it
    upload_query_bytes: int = 0  # replace 'query' by a Bytes variable this big (multipart: no JSON limit)
    fake_context: int = 0  # the fake model's context (tokens), for a prompt of megabytes that must fit


_TEN_MB_CONTEXT = {"rows": [{"id": i, "text": f"row {i} " + "x" * 1000, "ok": i % 2 == 0} for i in range(10_000)]}


CASES: dict[str, Case] = {
    "missing-query": Case(lambda: {"other": "x"}, "rejected", "'query' is missing"),
    "query-is-a-long": Case(lambda: {"query": 42}, "rejected", "must be text"),
    "query-is-json-number": Case(lambda: {"query": json_variable(42)}, "rejected", "must be text"),
    "empty-query": Case(lambda: {"query": ""}, "rejected", "empty"),
    "whitespace-query": Case(lambda: {"query": " \t\n \u00a0 "}, "rejected", "empty"),
    # Camunda's REST JSON reader refuses strings over 20,000,000 chars, so the 50 MB prompt is uploaded
    # as a Bytes variable through the multipart /variables/query/data endpoint.
    "50-MB-prompt": Case(lambda: {"query": "placeholder"}, "rejected", "TASK_MAX_INPUT_CHARS",
                         upload_query_bytes=50_000_000),
    "bytes-not-utf8": Case(lambda: {"query": _bytes_variable(b"\xff\xfe\x00bad")}, "rejected", "not UTF-8"),
    "bytes-utf8": Case(lambda: {"query": _bytes_variable("grüß dich".encode())}, "completed", query="grüß dich"),
    "nul-in-query": Case(lambda: {"query": json_variable("a\x00b\x00")}, "completed", query="a\x00b\x00"),
    "lone-surrogate-in-query": Case(lambda: {"query": {"value": '"x\\ud800y"', "type": "Json"}}, "completed",
                                    query="x\ud800y"),
    "nul-in-answer": Case(lambda: {"query": "say [[fake:nul]]"}, "completed", answer_has="\x00"),
    "surrogate-in-answer": Case(lambda: {"query": "say [[fake:surrogate]]"}, "completed", answer_has="\ud800"),
    # A prompt of 10 MB fits only a model with a context that large (the window refuses it otherwise):
    # the fake says it has one, and the topic's tasks ask for it (over the registry's num_ctx).
    "10-MB-json-context": Case(lambda: {"query": "summarise", "context": json_variable(_TEN_MB_CONTEXT)},
                               "completed", query="summarise", context=_TEN_MB_CONTEXT, fake_context=16_000_000),
    "sql-looking-query": Case(lambda: {"query": SQL, "system_prompt": SQL}, "completed", query=SQL),
    "emoji-and-rtl": Case(lambda: {"query": EMOJI_RTL}, "completed", query=EMOJI_RTL),
    "3000-variables": Case(lambda: {"query": "hello", **{f"v{i:04d}": f"value {i}" for i in range(3000)}},
                           "completed", query="hello"),
    "unknown-model": Case(lambda: {"query": "hello"}, "incident", "(this task's model comes from OLLAMA_MODEL)",
                          ollama="real",
                          settings={"ollama": {"model": "nope:1b"}}),
    # OLLAMA_OPTIONS of the wrong type stop the worker at start; set past that check (model_copy), the case shows
    # what an option Ollama itself refuses gives (a newer server typing an option differently).
    "invalid-ollama-options": Case(lambda: {"query": "hello"}, "incident", "OLLAMA_OPTIONS", ollama="real",
                                   settings={"ollama": {"options": {"num_predict": "abc"}}}),
    "ollama-503-on-every-try": Case(lambda: {"query": "hello [[fake:status=503]]"}, "retry", "busy"),
    # A rate-limiting or timing-out proxy in front of Ollama: transient, not an incident (issue 9, item 9).
    "proxy-429-on-every-try": Case(lambda: {"query": "hello [[fake:status=429]]"}, "retry", "HTTP 429"),
    "proxy-408-on-every-try": Case(lambda: {"query": "hello [[fake:status=408]]"}, "retry", "HTTP 408"),
}


def _bpmn_with_error_variables(topic: str, key: str) -> str:
    """The example process, its error boundary event keeping the BPMN error's code and message."""
    return example_bpmn(topic, key).replace(
        '<bpmn:errorEventDefinition errorRef="ai-input-invalid" />',
        '<bpmn:errorEventDefinition errorRef="ai-input-invalid" camunda:errorCodeVariable="ai_error_code" '
        'camunda:errorMessageVariable="ai_error_message" />',
    )


@pytest.fixture()
def process(engine_rest: EngineRest) -> tuple[str, str]:
    suffix = uuid.uuid4().hex[:10]
    topic, key = f"ai-hostile-{suffix}", f"ai-hostile-{suffix}"
    xml = _bpmn_with_error_variables(topic, key)
    assert "ai_error_message" in xml
    engine_rest.deploy(xml, key)
    return topic, key


@pytest.fixture()
def fake_or_none() -> Iterator[FakeOllama]:
    with FakeOllama() as fake:
        yield fake


@pytest.mark.parametrize("name", list(CASES))
def test_hostile_input(
    name: str, process: tuple[str, str], engine_rest: EngineRest, run_worker: Callable[..., Any],
    fake_or_none: FakeOllama, store: ContextStore, db: psycopg.Connection[Any],
) -> None:
    case = CASES[name]
    topic, key = process
    if case.ollama == "real":
        base_url = REAL_OLLAMA
        options = {"options": REAL_SMALL}
    else:
        base_url, options = fake_or_none.base_url, {}
        if case.fake_context:
            fake_or_none.context_length = case.fake_context
    ollama = {"base_url": base_url, **options, **case.settings.get("ollama", {})}
    pi = engine_rest.start(key, case.variables())
    if case.upload_query_bytes:
        uploaded = engine_rest.session.post(
            f"{engine_rest.base_url}/process-instance/{pi}/variables/query/data",
            files={"data": ("query.txt", b"q" * case.upload_query_bytes, "application/octet-stream")},
            data={"valueType": "Bytes"}, timeout=120)
        assert uploaded.status_code == 204, uploaded.text
    sections = {name: fields for name, fields in case.settings.items() if name != "ollama"}
    if case.fake_context:
        sections["task"] = {"topic_defaults": {topic: {"procos.options": json.dumps({"num_ctx": case.fake_context})}}}
    running = run_worker(topic, ollama=ollama, worker={"lock_duration_ms": 20_000}, **sections)

    if case.expect == "rejected":
        engine_rest.wait_for(lambda: ended_at(engine_rest, pi, "rejected"), timeout_s=120, what="end event rejected")
        variables = engine_rest.variables(pi)
        assert variables["ai_error_code"]["value"] == "AI_INPUT_INVALID"
        assert case.message in variables["ai_error_message"]["value"]
        assert "ai_context_id" not in variables
        assert _row_count(db, pi) == 0, "nothing stored for a rejected input"
    elif case.expect == "completed":
        engine_rest.wait_for(lambda: completed(engine_rest, pi), timeout_s=120, what="completion")
        _check_stored(case, engine_rest, store, pi)
    elif case.expect == "incident":
        incidents = engine_rest.wait_for(lambda: engine_rest.incidents(pi), timeout_s=60, what="an incident")
        assert len(incidents) == 1 and incidents[0]["incidentType"] == "failedExternalTask"
        message = incidents[0]["incidentMessage"]
        assert case.message in message and len(message) <= MAX_ERROR_MESSAGE_CHARS
        task_id = incidents[0]["configuration"]
        details = engine_rest.session.get(f"{engine_rest.base_url}/external-task/{task_id}/errorDetails", timeout=10)
        assert details.status_code == 200 and "Ollama at" in details.text and "HTTP" in details.text
        assert engine_rest.get(f"/external-task/{task_id}")["retries"] == 0
    else:  # retry
        def failed_once() -> dict[str, Any] | None:
            tasks = engine_rest.external_tasks(processInstanceId=pi)
            return tasks[0] if tasks and tasks[0]["retries"] is not None else None

        task = engine_rest.wait_for(failed_once, timeout_s=60, what="a reported failure")
        assert task["retries"] == running.worker.settings.worker.retries - 1
        assert case.message in task["errorMessage"]
        assert task["lockExpirationTime"] is not None, "retryTimeout: not fetchable before it runs out"
        assert not engine_rest.incidents(pi)
        assert fake_or_none.chat_calls == running.worker.settings.ollama.attempts
    # Whatever the input, the worker is still serving and the table is intact.
    assert running.alive
    assert _table_exists(db)


def _row_count(db: psycopg.Connection[Any], pi: str) -> int:
    with db.cursor() as cur:
        cur.execute("SELECT count(*) FROM procos_ai_context WHERE process_instance_id = %s", (pi,))
        row = cur.fetchone()
    assert row is not None
    return int(row[0])


def _table_exists(db: psycopg.Connection[Any]) -> bool:
    with db.cursor() as cur:
        cur.execute("SELECT to_regclass('procos_ai_context') IS NOT NULL, count(*) FROM procos_ai_context")
        row = cur.fetchone()
    return row is not None and bool(row[0]) and int(row[1]) > 0


def _check_stored(case: Case, engine_rest: EngineRest, store: ContextStore, pi: str) -> None:
    variables = engine_rest.variables(pi)
    context_id = variables["ai_context_id"]["value"]
    output = store.get(context_id)
    source = store.get_input_for(context_id)
    assert output is not None and source is not None
    assert output.content_text is not None and len(output.content_text) == variables["ai_response_length"]["value"]
    assert output.content_data["content"] == output.content_text
    if case.query is not None:
        assert source.content_data["query"] == case.query  # identical, code point for code point
        assert case.query in (source.content_text or "")
    if case.context is not None:
        assert source.content_data["context"] == case.context
    if case.answer_has is not None:
        # The fake's echo answer with the character in its middle: read back identical.
        echo = "This is a fake answer to: say"
        assert output.content_text == echo[: len(echo) // 2] + case.answer_has + echo[len(echo) // 2 :]
    wait_until(lambda: not engine_rest.incidents(pi), 1, "no incident")
