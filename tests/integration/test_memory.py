"""Conversation memory and the honest context window on the real stack (Camunda, PostgreSQL, Ollama with
smollm2:135m): earlier turns feed the next, a conversation longer than the context keeps its newest turns,
and no prompt is ever cut silently (AI_PROMPT_TOO_LONG, or procos.onOverflow=truncate with the flag)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Any

import psycopg
import pytest

from procos_testkit.engine import FOLLOW_UP_BPMN, EngineRest, ai_steps_bpmn, json_variable, own_copy
from procos_testkit.ollama_proxy import OllamaProxy
from procos_worker.models import LlmResult, StoredContext, Task, TaskInputs
from procos_worker.settings import Settings
from procos_worker.store.context import ContextStore

pytestmark = pytest.mark.integration

FAST = {"temperature": 0, "seed": 7, "num_predict": 24}
SENTENCE = "The harbour master counted the boats that came in before the storm and wrote each name down. "


@pytest.fixture()
def proxy(ollama_up: str) -> Iterator[OllamaProxy]:
    """The real Ollama behind a proxy that keeps every request and Ollama's status."""
    with OllamaProxy(ollama_up) as started:
        yield started


def _deploy(engine_rest: EngineRest, steps: list[tuple[str, dict[str, str]]]) -> tuple[str, str]:
    topic = key = f"ai-memory-{uuid.uuid4().hex[:10]}"
    engine_rest.deploy(ai_steps_bpmn(key, topic, steps), key)
    return topic, key


def _input_of(store: ContextStore, context_id: str) -> StoredContext:
    asked = store.get_input_for(context_id)
    assert asked is not None
    return asked


def _chats(proxy: OllamaProxy) -> list[tuple[int, list[dict[str, str]]]]:
    return [(e.status, e.json()["messages"]) for e in proxy.exchanges("/api/chat")]


def _boundary_s(engine_rest: EngineRest, pi: str, activity_id: str) -> float:
    """Seconds from the instance's start to ``activity_id`` in the engine's own history."""
    started = engine_rest.get(f"/history/process-instance/{pi}")["startTime"]
    reached = [a for a in engine_rest.get("/history/activity-instance", processInstanceId=pi)
               if a["activityId"] == activity_id]
    assert reached, activity_id
    return (_camunda_time(reached[0]["startTime"]) - _camunda_time(started)).total_seconds()


def _camunda_time(value: str) -> datetime:
    return datetime.strptime(value, "%Y-%m-%dT%H:%M:%S.%f%z")


def test_three_steps_each_see_the_turns_before_them(
    engine_rest: EngineRest, run_worker: Callable[..., Any], store: ContextStore, db: psycopg.Connection[Any],
) -> None:
    prompts = ["My name is Ada and my favourite colour is green. Say hello in one short sentence.",
               "I also play chess on Sundays. Reply in one short sentence.",
               "What is my name, and what is my favourite colour?"]
    options = json.dumps(FAST)
    topic, key = _deploy(engine_rest, [
        (step, {"procos.prompt": text, "procos.memory": "process", "procos.options": options,
                "procos.resultPrefix": step})
        for step, text in zip(("first", "second", "third"), prompts, strict=True)])
    pi = engine_rest.start(key, {})
    run_worker(topic)
    engine_rest.wait_for(lambda: engine_rest.passed_task(pi), timeout_s=600, what="three AI steps done")

    variables = engine_rest.variables(pi)
    outputs = [store.get(variables[f"{step}_context_id"]["value"]) for step in ("first", "second", "third")]
    assert all(outputs)
    answers = [out.content_text or "" for out in outputs if out]
    ids = [str(out.id) for out in outputs if out]
    asked = [_input_of(store, context_id) for context_id in ids]

    assert [a.content_data["memory_context_ids"] for a in asked] == [[], ids[:1], ids[:2]]
    assert asked[2].content_data["messages"] == [
        {"role": "user", "content": prompts[0]}, {"role": "assistant", "content": answers[0]},
        {"role": "user", "content": prompts[1]}, {"role": "assistant", "content": answers[1]},
        {"role": "user", "content": prompts[2]},
    ]
    assert asked[2].content_data["memory"] == {"scope": "process", "key": None, "turns_found": 2, "turns_sent": 2}
    assert asked[2].content_data["window"]["num_ctx"] == 4096  # smollm2's row in procos_ai_models
    assert not [name for name in variables if name.endswith("_prompt_truncated")], "onOverflow=error reports none"

    # Read back: the turns of the instance, and the ones the third answer was given.
    turns = store.turns(process_instance_id=pi)
    assert [(t.question, t.answer, str(t.id)) for t in turns] == list(zip(prompts, answers, ids, strict=True))
    assert [t.activity_id for t in turns] == ["first", "second", "third"]
    assert [str(t.id) for t in store.memory_of(ids[2])] == ids[:2]
    # Sizes are on the rows, and each answer names its question.
    for out, question in zip(outputs, asked, strict=True):
        assert out is not None
        row = db.execute("SELECT input_context_id, text_chars, text_bytes FROM procos_ai_context WHERE id = %s",
                         (out.id,)).fetchone()
        assert row is not None
        assert row == (question.id, len(out.content_text or ""), len((out.content_text or "").encode()))
    # The seed's view keeps working.
    view = db.execute("SELECT query_text, ai_response FROM procos_ai_conversations WHERE process_instance_id = %s",
                      (pi,)).fetchall()
    assert [q for q, _ in view if q is not None] == prompts
    assert [a for _, a in view if a is not None] == answers


def _seed_turns(store: ContextStore, pi: str, count: int, model: str) -> list[str]:
    """Earlier turns of instance ``pi``, as a worker would have stored them (no token figures)."""
    ids = []
    for i in range(count):
        task = Task(id=f"seed-{uuid.uuid4().hex}", topic="seed", worker_id="seed", process_instance_id=pi,
                    activity_id="earlier")
        question = f"Question {i}: " + SENTENCE * 2
        answer = f"Answer {i}: " + SENTENCE * 3
        input_id, _ = store.save_input(task, TaskInputs(query=question), [{"role": "user", "content": question}],
                                       model=model, options={})
        result = LlmResult(content=answer, model=model, done_reason="stop", prompt_eval_count=0, eval_count=0,
                           total_duration_ns=0, load_duration_ns=0, prompt_eval_duration_ns=0, eval_duration_ns=0,
                           wall_s=0.0)
        ids.append(str(store.save_output(task, result, input_id).id))
    return ids


def test_a_conversation_longer_than_the_context_keeps_its_newest_turns(
    engine_rest: EngineRest, run_worker: Callable[..., Any], store: ContextStore, proxy: OllamaProxy,
    settings: Settings,
) -> None:
    num_ctx, num_predict = 1024, 16
    topic, key = _deploy(engine_rest, [("ask", {
        "procos.prompt": "Which boat came in last?", "procos.memory": "process",
        "procos.options": json.dumps({**FAST, "num_ctx": num_ctx, "num_predict": num_predict})})])
    pi = engine_rest.start(key, {})
    seeded = _seed_turns(store, pi, 60, settings.ollama.model)  # about 150 tokens each: far over 1024
    run_worker(topic, ollama={"base_url": proxy.base_url})
    engine_rest.wait_for(lambda: engine_rest.passed_task(pi), timeout_s=600, what="AI step done")

    answer_id = engine_rest.variables(pi)["ai_context_id"]["value"]
    asked = _input_of(store, answer_id)
    sent = asked.content_data["memory_context_ids"]
    assert 0 < len(sent) < len(seeded)
    assert sent == seeded[-len(sent):], "the newest turns, oldest of them first, none skipped"
    chats = _chats(proxy)
    refused = [messages for status, messages in chats if status == 400]
    assert len(refused) <= 1, "at most one over-long request per task"
    assert [status for status, _ in chats][-1] == 200
    assert chats[-1][1] == asked.content_data["messages"], "the stored row holds what Ollama was sent"
    assert asked.content_data["window"]["refused_by_ollama"] == len(refused)
    # Whole turns only: every question is followed by its own answer.
    turns = {str(t.id): t for t in store.memory_of(answer_id)}
    memory = asked.content_data["messages"][:-1]
    assert memory == [m for i in sent for m in ({"role": "user", "content": turns[i].question},
                                                {"role": "assistant", "content": turns[i].answer})]
    answer = store.get(answer_id)
    assert answer is not None and answer.token_usage is not None
    assert answer.token_usage["prompt_tokens"] <= num_ctx - num_predict


def test_a_300_kb_prompt_is_refused_with_ai_prompt_too_long_at_once(
    engine_rest: EngineRest, run_worker: Callable[..., Any], proxy: OllamaProxy,
) -> None:
    topic, key = _deploy(engine_rest, [("ask", {"procos.options": json.dumps({**FAST, "num_ctx": 4096})})])
    query = (SENTENCE * (300_000 // len(SENTENCE) + 1))[:300_000]
    run_worker(topic, ollama={"base_url": proxy.base_url})
    pi = engine_rest.start(key, {"query": json_variable(query)})
    engine_rest.wait_for(lambda: engine_rest.passed_task(pi, "too-long"), timeout_s=120, what="AI_PROMPT_TOO_LONG")

    seconds = _boundary_s(engine_rest, pi, "ask-too-long")
    print(f"300 KB prompt: AI_PROMPT_TOO_LONG reached the boundary event {seconds:.3f} s after the start")
    assert seconds < 5
    message = engine_rest.variables(pi)["ai_error_message"]["value"]
    assert "does not fit the context window of model" in message
    assert "300,000 characters" in message and "num_ctx 4,096 (options)" in message and "not sent" in message
    assert proxy.count("/api/chat") == 0, "obviously too long: refused without keeping Ollama busy"


def test_a_prompt_ollama_refuses_is_reported_after_exactly_one_request(
    engine_rest: EngineRest, run_worker: Callable[..., Any], proxy: OllamaProxy, store: ContextStore,
) -> None:
    topic, key = _deploy(engine_rest, [("ask", {"procos.options": json.dumps({**FAST, "num_ctx": 2048})})])
    query = (SENTENCE * (20_000 // len(SENTENCE) + 1))[:20_000]  # ~4,500 tokens: over 2048, not obviously
    run_worker(topic, ollama={"base_url": proxy.base_url})
    pi = engine_rest.start(key, {"query": json_variable(query)})
    engine_rest.wait_for(lambda: engine_rest.passed_task(pi, "too-long"), timeout_s=300, what="AI_PROMPT_TOO_LONG")

    message = engine_rest.variables(pi)["ai_error_message"]["value"]
    assert "Ollama refused it" in message and "num_ctx 2,048 (options)" in message and "20,000 characters" in message
    assert [status for status, _ in _chats(proxy)] == [400]
    # The refused prompt is on record, and nothing claims it was answered.
    rows = store.conversation(pi)
    assert [row.context_type for row in rows] == ["input"] and rows[0].content_text == query


def test_truncate_mode_cuts_only_the_context_and_says_so(
    engine_rest: EngineRest, run_worker: Callable[..., Any], store: ContextStore, proxy: OllamaProxy,
) -> None:
    num_ctx = 1024
    topic, key = _deploy(engine_rest, [("ask", {
        "procos.onOverflow": "truncate", "procos.options": json.dumps({**FAST, "num_ctx": num_ctx})})])
    context = (SENTENCE * (300_000 // len(SENTENCE) + 1))[:300_000]
    query = "Who counted the boats?"
    run_worker(topic, ollama={"base_url": proxy.base_url})
    pi = engine_rest.start(key, {"query": query, "context": json_variable(context),
                                 "system_prompt": "You answer in one sentence."})
    engine_rest.wait_for(lambda: engine_rest.passed_task(pi), timeout_s=600, what="AI step done")

    variables = engine_rest.variables(pi)
    assert variables["ai_prompt_truncated"]["value"] is True
    answer = store.get(variables["ai_context_id"]["value"])
    assert answer is not None and answer.token_usage is not None
    assert answer.token_usage["prompt_tokens"] <= num_ctx
    asked = _input_of(store, str(answer.id))
    # Exactly what Ollama was sent, beside the full original inputs.
    chats = _chats(proxy)
    assert chats[-1] == (200, asked.content_data["messages"])
    assert len([status for status, _ in chats if status == 400]) <= 1
    assert asked.content_data["context"] == context and asked.content_data["query"] == query
    system, user = asked.content_data["messages"]
    assert system == {"role": "system", "content": "You answer in one sentence."}
    sent_chars = asked.content_data["truncation"]["context_chars_sent"]
    assert asked.content_data["truncation"]["context_chars"] == 300_000 and 0 < sent_chars < 300_000
    assert user["content"].startswith("Context:\n" + context[:sent_chars] + "\n[... ")
    assert user["content"].endswith(f"characters of the context were cut here to fit the model's context window]"
                                    f"\n\nQuestion:\n{query}")
    assert asked.content_text == user["content"]


def test_memory_by_variable_continues_across_process_instances(
    engine_rest: EngineRest, run_worker: Callable[..., Any], store: ContextStore, db: psycopg.Connection[Any],
) -> None:
    topic, key = _deploy(engine_rest, [("ask", {
        "procos.prompt": "{{ question }}", "procos.memory": "variable:customerId",
        "procos.systemPrompt": "You are a support agent. Answer in one sentence.",
        "procos.options": json.dumps(FAST)})])
    customer, other = f"c-{uuid.uuid4().hex[:8]}", f"c-{uuid.uuid4().hex[:8]}"
    run_worker(topic)
    first = engine_rest.start(key, {"customerId": customer, "question": "My order number is 4711. Please note it."})
    engine_rest.wait_for(lambda: engine_rest.passed_task(first), timeout_s=300, what="first instance done")
    second = engine_rest.start(key, {"customerId": customer, "question": "What is my order number?"})
    stranger = engine_rest.start(key, {"customerId": other, "question": "What is my order number?"})
    for pi in (second, stranger):
        engine_rest.wait_for(lambda pi=pi: engine_rest.passed_task(pi), timeout_s=300, what="instance done")

    first_id = engine_rest.variables(first)["ai_context_id"]["value"]
    first_out, first_in = store.get(first_id), _input_of(store, first_id)
    assert first_out is not None
    second_in = _input_of(store, engine_rest.variables(second)["ai_context_id"]["value"])
    assert second_in.content_data["memory_context_ids"] == [first_id]
    assert second_in.content_data["memory"]["key"] == f"customerId={customer}"
    assert second_in.content_data["messages"] == [
        {"role": "system", "content": "You are a support agent. Answer in one sentence."},
        {"role": "user", "content": first_in.content_text},
        {"role": "assistant", "content": first_out.content_text},
        {"role": "user", "content": "What is my order number?"},
    ]
    stranger_in = _input_of(store, engine_rest.variables(stranger)["ai_context_id"]["value"])
    assert stranger_in.content_data["memory_context_ids"] == []
    assert [t.process_instance_id for t in store.turns(memory_key=f"customerId={customer}")] == [first, second]
    keys = db.execute("SELECT DISTINCT memory_key FROM procos_ai_context WHERE process_instance_id = ANY(%s)",
                      ([first, second],)).fetchall()
    assert keys == [(f"customerId={customer}",)]


def test_the_follow_up_example_asks_with_the_first_answer(
    engine_rest: EngineRest, run_worker: Callable[..., Any], store: ContextStore,
) -> None:
    """bpmn/ai-follow-up.bpmn as the README runs it: the follow-up is asked with the first turn before it."""
    topic = key = f"ai-follow-up-{uuid.uuid4().hex[:10]}"
    engine_rest.deploy(own_copy(FOLLOW_UP_BPMN, topic, key), key)
    pi = engine_rest.start(key, {"question": "Why is the sky blue?"})
    run_worker(topic)
    engine_rest.wait_for(lambda: engine_rest.passed_task(pi), timeout_s=600, what="both AI steps done")

    variables = engine_rest.variables(pi)
    first_id, follow_up_id = variables["answer_context_id"]["value"], variables["followup_context_id"]["value"]
    first = store.get(first_id)
    assert first is not None
    asked = _input_of(store, follow_up_id)
    assert asked.content_data["memory_context_ids"] == [first_id]
    system, question, answer, follow_up = asked.content_data["messages"]
    assert system["role"] == "system" and question == {"role": "user", "content": "Why is the sky blue?"}
    assert answer == {"role": "assistant", "content": first.content_text}
    assert follow_up["content"].startswith("Explain your previous answer")
    assert [t.activity_id for t in store.turns(process_instance_id=pi)] == ["answer", "follow-up"]
