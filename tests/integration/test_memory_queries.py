"""The memory queries stay fast as conversations grow: on 100,000 rows in a scratch database, the newest
turns of an instance or of a memory key are index scans stopped at the limit (EXPLAIN), and their sizes
are read without reading a single answer (EXPLAIN ANALYZE, BUFFERS)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row

from procos_testkit.pg import scratch_database
from procos_worker.settings import Settings
from procos_worker.store import migrations, turns

pytestmark = pytest.mark.integration

INSTANCES, TURNS_EACH, KEYS = 1_000, 50, 100  # 1,000 x 50 x (input + output) = 100,000 rows

# Every instance holds TURNS_EACH answered tasks; every output row carries one of KEYS memory keys.
_FILL = """
INSERT INTO procos_ai_context (id, process_instance_id, task_id, activity_id, context_type, content_data,
                               content_text, input_context_id, memory_key, text_chars, text_bytes, token_usage,
                               model_used, created_at)
SELECT CASE k.kind WHEN 'input' THEN t.input ELSE t.output END, t.pi, t.task, 'step', k.kind,
       jsonb_build_object('content', t.text), t.text,
       CASE WHEN k.kind = 'output' THEN t.input END,
       CASE WHEN k.kind = 'output' THEN 'customer=' || (t.n %% %(keys)s) END,
       length(t.text), octet_length(t.text),
       CASE WHEN k.kind = 'output' THEN '{"prompt_tokens": 40, "prompt_chars": 160, "prompt_messages": 1}'::jsonb END,
       'smollm2:135m', now() - make_interval(secs => %(turns)s - t.n)
FROM (SELECT n, 'pi-' || (n %% %(instances)s) AS pi, 'task-' || n AS task, 'turn ' || n AS text,
             uuid_generate_v4() AS input, uuid_generate_v4() AS output
      FROM generate_series(1, %(turns)s) AS n) AS t
CROSS JOIN (VALUES ('input'), ('output')) AS k(kind)
"""


@pytest.fixture(scope="module")
def big(settings: Settings) -> Iterator[psycopg.Connection[Any]]:
    with scratch_database(settings.database.url.get_secret_value(), "procos_memory") as url, \
            psycopg.connect(url, autocommit=True) as plain:
        migrations.upgrade(plain)
        conn = psycopg.Connection.connect(url, autocommit=True, row_factory=dict_row)
        conn.execute(_FILL.encode(), {"instances": INSTANCES, "turns": INSTANCES * TURNS_EACH, "keys": KEYS})
        conn.execute("ANALYZE procos_ai_context")
        with conn:
            yield conn


def _plan(conn: psycopg.Connection[Any], scope: turns.Scope, value: str, *, analyze: bool = False) -> dict[str, Any]:
    options = "ANALYZE, BUFFERS, FORMAT JSON" if analyze else "FORMAT JSON"
    row = conn.execute(f"EXPLAIN ({options}) {turns.recent_sql(scope)}".encode(),
                       {"scope": value, "task": "asking-task", "limit": 20}).fetchone()
    assert row is not None
    plan: dict[str, Any] = row["QUERY PLAN"][0]
    return plan


def _nodes(node: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield node
    for child in node.get("Plans", []):
        yield from _nodes(child)


def test_the_table_holds_100000_rows(big: psycopg.Connection[Any]) -> None:
    row = big.execute("SELECT count(*) AS n FROM procos_ai_context").fetchone()
    assert row is not None and row["n"] == 100_000


@pytest.mark.parametrize(("scope", "value", "index"), [
    ("process", "pi-7", "idx_procos_ai_context_turns"),
    ("variable", "customer=7", "idx_procos_ai_context_memory_key"),
])
def test_the_newest_turns_are_an_index_scan_stopped_at_the_limit(
    big: psycopg.Connection[Any], scope: turns.Scope, value: str, index: str,
) -> None:
    plan = _plan(big, scope, value, analyze=True)
    nodes = list(_nodes(plan["Plan"]))
    print(f"\nEXPLAIN {scope}:\n" + "\n".join(
        f"{n['Node Type']} {n.get('Index Name', '')} rows={n.get('Actual Rows')}" for n in nodes))
    assert plan["Plan"]["Node Type"] == "Limit"
    assert not [n for n in nodes if n["Node Type"] in ("Seq Scan", "Sort", "Bitmap Heap Scan")]
    ordered = [n for n in nodes if n.get("Index Name") == index]
    assert ordered and ordered[0]["Node Type"] == "Index Scan"
    assert ordered[0]["Actual Rows"] <= 25, "the scan stops after the limit (20 turns) instead of reading them all"
    assert plan["Plan"]["Actual Rows"] == 20


def test_turn_sizes_are_read_without_reading_the_answers(big: psycopg.Connection[Any]) -> None:
    """A 5 MB answer costs the size query no more than a short one; its text is read only when fetched."""
    pi, question, answer = f"pi-big-{uuid.uuid4().hex[:6]}", uuid.uuid4(), uuid.uuid4()
    huge = "".join(uuid.uuid4().hex for _ in range(160_000))  # 5 MB, incompressible: TOASTed out of line
    for kind, row_id, text in (("input", question, "short question"), ("output", answer, huge)):
        big.execute(
            "INSERT INTO procos_ai_context (id, process_instance_id, task_id, context_type, content_data, content_text,"
            " input_context_id, text_chars, text_bytes) VALUES (%s, %s, 'big-task', %s, '{}', %s, %s, %s, %s)",
            (row_id, pi, kind, text, question if kind == "output" else None, len(text), len(text)))
    sizes = big.execute(turns.recent_sql("process").encode(), {"scope": pi, "task": "x", "limit": 20}).fetchall()
    assert [(r["answer_chars"], r["question_chars"]) for r in sizes] == [(len(huge), len("short question"))]

    plan = _plan(big, "process", pi, analyze=True)
    read = plan["Plan"].get("Shared Hit Blocks", 0) + plan["Plan"].get("Shared Read Blocks", 0)
    assert read < 50, f"the size query touched {read} blocks: it read the answer"
    fetched = turns.texts(big.cursor(row_factory=dict_row), [answer])
    assert fetched[answer].answer == huge and fetched[answer].question == "short question"
