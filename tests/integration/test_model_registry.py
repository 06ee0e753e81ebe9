"""procos_ai_models on the real PostgreSQL: performance_stats computed from the stored rows (a real run
on the real model, and exact figures over known rows), one refresh per interval for the fleet, and the
default rows in step with the model the stack serves."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest
import requests
from psycopg.types.json import Jsonb
from pydantic import SecretStr

from procos_testkit.engine import EngineRest
from procos_testkit.pg import scratch_database
from procos_worker.settings import DatabaseSettings, Settings
from procos_worker.store import migrations
from procos_worker.store.context import ContextStore
from procos_worker.store.registry import STATS_LOCK_KEY, ModelTable

pytestmark = pytest.mark.integration

PARAMS = Path(__file__).resolve().parents[2] / "stack" / "ollama" / "smollm2.params.json"


@pytest.fixture()
def scratch(settings: Settings) -> Iterator[str]:
    """A database of its own (the stats must come from this test's rows only), schema applied."""
    with scratch_database(settings.database.url.get_secret_value()) as url:
        with psycopg.connect(url, autocommit=True) as conn:
            migrations.upgrade(conn)
        yield url


def _stats(url: str, model: str) -> dict[str, Any]:
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute("SELECT performance_stats FROM procos_ai_models WHERE model_name = %s", (model,)).fetchone()
    assert row is not None
    stats: dict[str, Any] = row[0] or {}
    return stats


def test_performance_stats_of_the_served_model_show_real_figures_after_a_run(
    scratch: str, engine_rest: EngineRest, deployed: tuple[str, str], run_worker: Callable[..., Any],
    ollama_up: str, settings: Settings,
) -> None:
    topic, key = deployed
    instances = [engine_rest.start(key, {"query": f"Name {n} colours."}) for n in (2, 3, 4)]
    running = run_worker(topic, database={"url": SecretStr(scratch)}, registry={"stats_interval_s": 1},
                         ollama={"options": {"num_predict": 16, "temperature": 0}})
    for pi in instances:
        engine_rest.wait_for(lambda pi=pi: engine_rest.passed_task(pi), timeout_s=300, what="AI task done")

    stats = engine_rest.wait_for(lambda: (s := _stats(scratch, settings.ollama.model)).get("calls") == 3 and s,
                                 timeout_s=60, what="performance_stats of 3 calls")
    with psycopg.connect(scratch, autocommit=True) as conn:
        # Computed here from each row's own data: the answer, the messages, Ollama's timings.
        rows = conn.execute(
            """SELECT (o.token_usage->>'prompt_tokens')::int, (o.token_usage->>'completion_tokens')::int,
                      (o.content_data->>'eval_duration')::bigint, length(o.content_text),
                      (SELECT sum(length(m->>'content')) FROM jsonb_array_elements(i.content_data->'messages') m),
                      (o.content_data->>'wall_s')::float8
               FROM procos_ai_context o JOIN procos_ai_context i ON i.task_id = o.task_id AND i.context_type = 'input'
               WHERE o.context_type = 'output'""").fetchall()
    columns = (list(col) for col in zip(*rows, strict=True))
    prompt_tokens, completion_tokens, eval_ns, chars, prompt_chars, walls = columns
    assert len(rows) == 3 and min(completion_tokens) > 0 and min(eval_ns) > 0
    assert stats["errors"] == 0
    assert stats["prompt_tokens"] == sum(prompt_tokens) and stats["completion_tokens"] == sum(completion_tokens)
    assert stats["latency_p50_s"] == pytest.approx(sorted(walls)[1], abs=0.001)
    assert sorted(walls)[1] <= stats["latency_p95_s"] <= max(walls) + 0.001
    assert stats["tokens_per_s"] == pytest.approx(sum(completion_tokens) / (sum(eval_ns) / 1e9), abs=0.01)
    assert stats["chars_per_token_completion"] == pytest.approx(sum(chars) / sum(completion_tokens), abs=0.001)
    assert stats["chars_per_token_prompt"] == pytest.approx(sum(prompt_chars) / sum(prompt_tokens), abs=0.001)
    assert stats["refreshed_by"] == running.worker.settings.worker.id
    assert _stats(scratch, "llama3.2:1b")["calls"] == 0, "a registered model nobody asked"


def _insert(conn: psycopg.Connection[Any], *, task: str, kind: str, model: str, age_s: float,
            data: dict[str, Any], usage: dict[str, Any] | None = None) -> None:
    conn.execute(
        """INSERT INTO procos_ai_context (process_instance_id, task_id, context_type, content_data, ai_provider,
                                          model_used, token_usage, created_at)
           VALUES ('pi', %s, %s, %s, 'ollama', %s, %s, now() - make_interval(secs => %s))""",
        (task, kind, Jsonb(data), model, None if usage is None else Jsonb(usage), age_s))


def _answered(conn: psycopg.Connection[Any], task: str, model: str, *, age_s: float, prompt_chars: int,
              prompt_tokens: int, completion_tokens: int, wall_s: float, eval_s: float, chars: int) -> None:
    _insert(conn, task=task, kind="input", model=model, age_s=age_s, data={})
    _insert(conn, task=task, kind="output", model=model, age_s=age_s, data={},
            usage={"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens, "wall_s": wall_s,
                   "eval_duration_ns": int(eval_s * 1e9), "response_chars": chars, "prompt_chars": prompt_chars})


def test_stats_from_known_rows_and_one_refresh_per_interval(scratch: str) -> None:
    model = "known:1b"
    with psycopg.connect(scratch, autocommit=True) as conn:
        conn.execute("INSERT INTO procos_ai_models (model_name, provider, version, config_data) "
                     "VALUES (%s, 'ollama', '1', '{}')", (model,))
        _answered(conn, "a", model, age_s=7200, prompt_chars=100, prompt_tokens=10, completion_tokens=20,
                  wall_s=1.0, eval_s=2.0, chars=80)
        _answered(conn, "b", model, age_s=60, prompt_chars=300, prompt_tokens=30, completion_tokens=20,
                  wall_s=3.0, eval_s=1.0, chars=40)
        _answered(conn, "old", model, age_s=3 * 86400, prompt_chars=1, prompt_tokens=1, completion_tokens=1,
                  wall_s=99.0, eval_s=1.0, chars=1)  # outside the window
        _insert(conn, task="failed", kind="input", model=model, age_s=7200, data={})
        _insert(conn, task="running", kind="input", model=model, age_s=10, data={})
        _answered(conn, "other", "unregistered:7b", age_s=60, prompt_chars=1, prompt_tokens=1, completion_tokens=1,
                  wall_s=1.0, eval_s=1.0, chars=1)

    with ContextStore(DatabaseSettings(url=SecretStr(scratch))) as store:
        table = ModelTable(store, "ollama")

        def refresh(worker: str, min_age_s: float = 60) -> int | None:
            return table.refresh_stats(window_s=86_400, min_age_s=min_age_s, unanswered_after_s=3600,
                                       worker_id=worker)

        assert refresh("w1") == 3  # every registered row of the provider: the two defaults and this one
        stats = _stats(scratch, model)
        assert {k: v for k, v in stats.items() if k != "refreshed_at"} == {
            "calls": 2, "errors": 1, "prompt_tokens": 40, "completion_tokens": 40,
            "latency_p50_s": 2.0, "latency_p95_s": 2.9, "tokens_per_s": 13.33,
            "chars_per_token_prompt": 10.0, "chars_per_token_completion": 3.0,
            "window_s": 86_400, "refreshed_by": "w1",
        }
        assert isinstance(datetime.fromisoformat(stats["refreshed_at"]), datetime)

        # Another worker's timer fires right after: the figures are fresh, it does nothing.
        assert refresh("w2") is None
        assert _stats(scratch, model)["refreshed_by"] == "w1"
        # A worker refreshing right now holds the lock: the others skip this round.
        with psycopg.connect(scratch) as holder:
            holder.execute("SELECT pg_advisory_xact_lock(%s)", (STATS_LOCK_KEY,))
            assert refresh("w3", min_age_s=0) is None
        assert refresh("w4", min_age_s=0) == 3
        assert _stats(scratch, model)["refreshed_by"] == "w4"
        assert ModelTable(store, "ollama").load()[0].name == model  # newest row first


def test_the_default_model_row_agrees_with_the_served_model(store: ContextStore, ollama_up: str,
                                                            settings: Settings) -> None:
    [row] = [r for r in ModelTable(store, "ollama").load()
             if r.name == settings.ollama.model and r.version == "135m-instruct-q4_1"]
    served = json.loads(PARAMS.read_text(encoding="utf-8"))
    assert row.active and row.config_data["options"] == {"num_ctx": served["num_ctx"]}
    shown = requests.post(f"{ollama_up}/api/show", json={"model": settings.ollama.model}, timeout=30).json()
    assert f"num_ctx {served['num_ctx']}" in " ".join(shown["parameters"].split())

