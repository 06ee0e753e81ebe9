"""``procos-worker context ...`` as an operator runs it, each output checked against the database.

show / input / conversation read what a real worker stored for a real process instance (shared
stack); search and stats run on a scratch database whose rows are all known, written through the
worker's own store.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row

from procos_testkit.cli import run_cli
from procos_testkit.engine import EngineRest
from procos_testkit.pg import scratch_database
from procos_worker.models import LlmResult, Task, TaskInputs
from procos_worker.settings import DatabaseSettings, Settings
from procos_worker.store import migrations
from procos_worker.store.context import ContextStore

pytestmark = pytest.mark.integration

SMALL_ANSWER = {"num_predict": 24, "num_ctx": 2048, "seed": 7, "temperature": 0}


def _env(settings: Settings, url: str | None = None) -> dict[str, str]:
    return {"DATABASE_URL": url or settings.database.url.get_secret_value()}


def _row(db: psycopg.Connection[Any], row_id: str) -> dict[str, Any]:
    with db.cursor(row_factory=dict_row) as cur:
        cur.execute("SELECT * FROM procos_ai_context WHERE id = %s", (row_id,))
        row = cur.fetchone()
    assert row is not None
    return row


def _task(pi: str, activity: str = "ask-ai", key: str = "proc") -> Task:
    return Task(id=f"t-{uuid.uuid4()}", topic="ai-query", worker_id="w", process_instance_id=pi,
                activity_id=activity, process_definition_key=key, activity_instance_id=f"{activity}:{uuid.uuid4()}")


def _result(content: str, model: str = "smollm2:135m", prompt_tokens: int = 5, completion: int = 7,
            wall_s: float = 0.1) -> LlmResult:
    return LlmResult(content=content, model=model, done_reason="stop", prompt_eval_count=prompt_tokens,
                     eval_count=completion, total_duration_ns=int(wall_s * 1e9), load_duration_ns=1,
                     prompt_eval_duration_ns=1, eval_duration_ns=1, wall_s=wall_s)


def _write(store: ContextStore, pi: str, prompt: str, answer: str, **result: Any) -> tuple[str, str]:
    task = _task(pi, **{k: result.pop(k) for k in ("activity", "key") if k in result})
    input_id, _ = store.save_input(task, TaskInputs(query=prompt), [{"role": "user", "content": prompt}],
                                   model=result.get("model", "smollm2:135m"), options={})
    output = store.save_output(task, _result(answer, **result), input_id, prompt_chars=len(prompt))
    return str(input_id), str(output.id)


@pytest.fixture(scope="module")
def scratch(settings: Settings) -> Iterator[tuple[str, ContextStore]]:
    """A scratch database with the ProcOS schema: (its URL, a store on it)."""
    with scratch_database(settings.database.url.get_secret_value(), prefix="procos_ops_ctx") as url:
        with psycopg.connect(url, autocommit=True) as conn:
            migrations.upgrade(conn)
        with ContextStore(DatabaseSettings(url=url)) as store:
            yield url, store


# -- show / input / conversation of a real run ------------------------------------------------------


def test_show_input_and_conversation_print_what_a_real_worker_stored(
    engine_rest: EngineRest, deployed: tuple[str, str], run_worker: Callable[..., Any],
    db: psycopg.Connection[Any], ollama_up: str, settings: Settings, tmp_path: Path,
) -> None:
    topic, key = deployed
    pi = engine_rest.start(key, {"query": "Name three colours, one per line."})
    run_worker(topic, ollama={"options": SMALL_ANSWER})
    engine_rest.wait_for(lambda: engine_rest.passed_task(pi), timeout_s=180, what="instance past the AI task")
    context_id = str(engine_rest.variables(pi)["ai_context_id"]["value"])
    output = _row(db, context_id)
    [input_row] = [r for r in _rows_of(db, pi) if r["context_type"] == "input"]

    show = run_cli("context", "show", context_id, cwd=tmp_path, env=_env(settings))
    assert show.returncode == 0, show.stderr
    assert show.stdout == output["content_text"].encode("utf-8"), "show prints the answer exactly, nothing added"

    shown = run_cli("context", "show", context_id, "--json", cwd=tmp_path, env=_env(settings))
    row = json.loads(shown.stdout)
    assert row["id"] == context_id and row["process_instance_id"] == pi
    assert row["content_text"] == output["content_text"]
    assert row["content_data"] == output["content_data"] and row["token_usage"] == output["token_usage"]
    assert datetime.fromisoformat(row["created_at"]) == output["created_at"]
    assert (row["activity_id"], row["process_definition_key"]) == (output["activity_id"], key)

    prompt = run_cli("context", "input", context_id, cwd=tmp_path, env=_env(settings))
    assert prompt.returncode == 0, prompt.stderr
    assert prompt.stdout == input_row["content_text"].encode("utf-8") == b"Name three colours, one per line."

    conversation = run_cli("context", "conversation", pi, cwd=tmp_path, env=_env(settings))
    text = conversation.stdout.decode()
    headers = [line for line in text.splitlines() if line.startswith("--- ")]
    assert [h.split()[1:3] for h in headers] == [["input", str(input_row["id"])], ["output", context_id]]
    assert input_row["content_text"] in text and output["content_text"] in text
    as_json = json.loads(run_cli("context", "conversation", pi, "--json", cwd=tmp_path, env=_env(settings)).stdout)
    assert [r["id"] for r in as_json] == [str(r["id"]) for r in _rows_of(db, pi)]


def _rows_of(db: psycopg.Connection[Any], pi: str) -> list[dict[str, Any]]:
    with db.cursor(row_factory=dict_row) as cur:
        cur.execute("SELECT * FROM procos_ai_context WHERE process_instance_id = %s "
                    "ORDER BY created_at, context_type, id", (pi,))
        return cur.fetchall()


@pytest.mark.parametrize("answer", [
    "no newline at the end", "two\r\nlines\n", "nul \x00 inside", "lone surrogate \ud800 here",
    "backslash \\0 and tab\t", "日本語 🎉\n\n",
], ids=["plain", "crlf", "nul", "surrogate", "escapes", "unicode"])
def test_show_is_exact_for_text_postgresql_cannot_hold(
    store: ContextStore, db: psycopg.Connection[Any], settings: Settings, tmp_path: Path, answer: str,
) -> None:
    pi = f"pi-{uuid.uuid4()}"
    input_id, output_id = _write(store, pi, f"prompt for {answer}", answer)
    shown = run_cli("context", "show", output_id, cwd=tmp_path, env=_env(settings))
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout == answer.encode("utf-8", "surrogatepass")
    stored = _row(db, output_id)["content_text"]
    needs_escape = "\x00" in answer or "\ud800" in answer
    assert (stored != answer) == needs_escape, "escaped in the table only when it must be, exact on screen"
    as_json = json.loads(run_cli("context", "show", output_id, "--json", cwd=tmp_path, env=_env(settings)).stdout)
    assert as_json["content_text"] == answer and "text_encoding" not in as_json["content_data"]
    prompt = run_cli("context", "input", input_id, cwd=tmp_path, env=_env(settings))
    assert prompt.stdout == f"prompt for {answer}".encode("utf-8", "surrogatepass")


def test_missing_rows_bad_ids_and_an_unreachable_database(settings: Settings, tmp_path: Path) -> None:
    missing = str(uuid.uuid4())
    for command in (["show", missing], ["input", missing], ["conversation", f"pi-{uuid.uuid4()}"]):
        result = run_cli("context", *command, cwd=tmp_path, env=_env(settings))
        assert result.returncode == 1, result
        assert result.stdout == b"" and b"no row" in result.stderr
    bad = run_cli("context", "show", "not-a-uuid", cwd=tmp_path, env=_env(settings))
    assert bad.returncode == 2 and b"not an ai_context_id" in bad.stderr
    down = run_cli("context", "show", missing, cwd=tmp_path,
                   env={"DATABASE_URL": "postgresql://procos:procos123@127.0.0.1:9/procos",
                        "DATABASE_CONNECT_TIMEOUT_S": "1"})
    assert down.returncode == 4 and b"PostgreSQL unavailable" in down.stderr and b"procos123" not in down.stderr


# -- search and stats on known rows -----------------------------------------------------------------


def test_search_finds_exactly_the_rows_containing_the_text(
    scratch: tuple[str, ContextStore], tmp_path: Path, settings: Settings,
) -> None:
    url, store = scratch
    marker = f"zq{uuid.uuid4().hex[:8]}"
    pi = f"pi-{uuid.uuid4()}"
    written = [_write(store, pi, f"question {i} about {marker.upper() if i % 2 else marker}",
                      f"answer {i}: 50%_off {marker} " + "filler " * 50) for i in range(5)]
    _write(store, pi, "unrelated question", "50 percent off, nothing else")  # must not match
    with psycopg.connect(url, autocommit=True) as conn:
        expected = [str(r[0]) for r in conn.execute(
            "SELECT id FROM procos_ai_context WHERE strpos(lower(content_text), lower(%s)) > 0 "
            "ORDER BY created_at DESC, id", (marker,)).fetchall()]
    assert len(expected) == 10

    found = json.loads(run_cli("context", "search", marker, "--limit", "100", "--json", cwd=tmp_path,
                               env=_env(settings, url)).stdout)
    assert [hit["id"] for hit in found] == expected
    assert all(marker in hit["snippet"].lower() for hit in found)
    limited = json.loads(run_cli("context", "search", marker, "--limit", "3", "--json", cwd=tmp_path,
                                 env=_env(settings, url)).stdout)
    assert [hit["id"] for hit in limited] == expected[:3]
    outputs = json.loads(run_cli("context", "search", marker, "--type", "output", "--json", cwd=tmp_path,
                                 env=_env(settings, url)).stdout)
    assert sorted(hit["id"] for hit in outputs) == sorted(out for _inp, out in written)

    # LIKE's wildcards in the searched text are literal: "50%_off" is not "50 percent off".
    literal = json.loads(run_cli("context", "search", "50%_off", "--limit", "100", "--json", cwd=tmp_path,
                                 env=_env(settings, url)).stdout)
    assert sorted(hit["id"] for hit in literal) == sorted(out for _inp, out in written)

    terminal = run_cli("context", "search", marker, "--limit", "2", cwd=tmp_path, env=_env(settings, url))
    lines = terminal.stdout.decode().splitlines()
    assert len(lines) == 2 and [line.split()[3] for line in lines] == expected[:2]
    none = run_cli("context", "search", f"absent{uuid.uuid4().hex}", cwd=tmp_path, env=_env(settings, url))
    assert none.returncode == 1 and none.stdout == b""


def _percentile(values: list[float], p: float) -> float:
    """PostgreSQL's percentile_cont: linear interpolation between the closest ranks."""
    ordered = sorted(values)
    position = p * (len(ordered) - 1)
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def test_stats_per_model_and_activity_match_the_rows_and_the_registry(
    scratch: tuple[str, ContextStore], tmp_path: Path, settings: Settings,
) -> None:
    url, store = scratch
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("DELETE FROM procos_ai_context")  # only this test's rows count below
    key = f"stats-{uuid.uuid4().hex[:6]}"
    calls = [("smollm2:135m", "summarise", 10, 20, 0.5), ("smollm2:135m", "summarise", 30, 40, 1.5),
             ("smollm2:135m", "classify", 5, 1, 0.2), ("other:7b", "classify", 100, 200, 9.0)]
    for model, activity, prompt, completion, wall in calls:
        _write(store, f"pi-{uuid.uuid4()}", "q", "a", model=model, prompt_tokens=prompt, completion=completion,
               wall_s=wall, activity=activity, key=key)
    # An old row that --since must leave out.
    _inp, old = _write(store, f"pi-{uuid.uuid4()}", "q", "a", prompt_tokens=999, completion=999, wall_s=99.0,
                       activity="summarise", key=key)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("UPDATE procos_ai_context SET created_at = now() - interval '30 days' WHERE id = %s", (old,))

    result = run_cli("context", "stats", "--since", "7d", "--json", cwd=tmp_path, env=_env(settings, url))
    assert result.returncode == 0, result.stderr
    stats = json.loads(result.stdout)
    since = datetime.fromisoformat(stats["since"])
    assert abs(since - (datetime.now(UTC) - timedelta(days=7))) < timedelta(minutes=5)

    models = {(m["model"], m["provider"]): m for m in stats["models"]}
    small = models[("smollm2:135m", "ollama")]
    assert (small["calls"], small["prompt_tokens"], small["completion_tokens"]) == (3, 45, 61)
    assert small["latency_s"] == pytest.approx([_percentile([0.5, 1.5, 0.2], p) for p in (0.5, 0.95, 0.99)])
    assert small["registered_versions"] == ["135m-instruct-q4_1"] and small["active"] is True
    other = models[("other:7b", "ollama")]
    assert (other["calls"], other["registered_versions"], other["active"]) == (1, [], None)
    # A registered model nobody used is listed with zero calls.
    assert models[("llama3.2:1b", "ollama")]["calls"] == 0

    activities = {(a["process_definition_key"], a["activity_id"]): a for a in stats["activities"]}
    assert set(activities) == {(key, "summarise"), (key, "classify")}
    assert (activities[(key, "summarise")]["calls"], activities[(key, "summarise")]["prompt_tokens"]) == (2, 40)
    assert activities[(key, "classify")]["completion_tokens"] == 201

    everything = json.loads(run_cli("context", "stats", "--json", cwd=tmp_path, env=_env(settings, url)).stdout)
    assert {(m["model"], m["calls"]) for m in everything["models"]} >= {("smollm2:135m", 4)}
    with psycopg.connect(url, autocommit=True) as conn:
        [(total,)] = conn.execute("SELECT count(*) FROM procos_ai_context WHERE context_type = 'output'").fetchall()
    assert sum(m["calls"] for m in everything["models"]) == total == 5

    table = run_cli("context", "stats", "--since", "7d", cwd=tmp_path, env=_env(settings, url)).stdout.decode()
    line = next(line for line in table.splitlines() if line.startswith("smollm2:135m"))
    assert line.split()[3:6] == ["3", "45", "61"]


# -- the turns of a memory key -----------------------------------------------------------------------


def test_conversation_by_memory_key_prints_its_turns_across_process_instances(
    scratch: tuple[str, ContextStore], tmp_path: Path, settings: Settings,
) -> None:
    url, store = scratch
    key = f"customerId=c-{uuid.uuid4().hex[:8]}"
    written = []
    for n, pi in enumerate([f"pi-{uuid.uuid4()}", f"pi-{uuid.uuid4()}"]):
        task = _task(pi)
        prompt = f"question {n} of {key}"
        input_id, _ = store.save_input(task, TaskInputs(query=prompt), [{"role": "user", "content": prompt}],
                                       model="smollm2:135m", options={}, memory_key=key)
        output = store.save_output(task, _result(f"answer {n}"), input_id, prompt_chars=len(prompt), memory_key=key)
        written.append((str(output.id), pi, prompt, f"answer {n}"))
    _write(store, f"pi-{uuid.uuid4()}", f"question of another key than {key}", "not in it")

    turns = json.loads(run_cli("context", "conversation", "--memory-key", key, "--json", cwd=tmp_path,
                               env=_env(settings, url)).stdout)
    assert [(t["id"], t["process_instance_id"], t["question"], t["answer"]) for t in turns] == written
    text = run_cli("context", "conversation", "--memory-key", key, cwd=tmp_path, env=_env(settings, url))
    lines = text.stdout.decode().splitlines()
    assert lines[1:3] == [written[0][2], written[0][3]] and lines[4:6] == [written[1][2], written[1][3]]
    assert lines[0].startswith(f"--- turn {written[0][0]} ") and lines[3].startswith(f"--- turn {written[1][0]} ")

    unknown = run_cli("context", "conversation", "--memory-key", f"k={uuid.uuid4()}", cwd=tmp_path,
                      env=_env(settings, url))
    assert unknown.returncode == 1 and b"no turns under memory key" in unknown.stderr
    both = run_cli("context", "conversation", "pi-x", "--memory-key", key, cwd=tmp_path, env=_env(settings, url))
    neither = run_cli("context", "conversation", cwd=tmp_path, env=_env(settings, url))
    for bad in (both, neither):
        assert bad.returncode == 2 and b"not both" in bad.stderr and bad.stdout == b""
