"""procos_ai_context in PostgreSQL: exactly-once writes for the worker, and a small read API.

Writes are keyed by (task_id, context_type) (unique index in sql/init-db.sql): a task fetched again
after a crash or an expired lock finds its rows instead of writing second ones. Each write is one
autocommitted statement, so a row the worker sees has been committed.

Row types: ``input`` and ``output`` (the answer the task completes with). A structured task
(``procos.outputSchema``) also writes, per answer that breaks its schema, ``invalid_output_<n>`` (the
answer of attempt n) and ``repair_input_<n+1>`` (the request to repair it); ``output`` is written only
for an answer that passed the check.

psycopg errors are turned into the project's errors here: can't connect / connection lost ->
``StoreUnavailable`` (the worker waits for the database); anything else PostgreSQL rejects ->
``PermanentError`` (an incident, with PostgreSQL's message).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import Any, TypeVar
from uuid import UUID

import psycopg
import psycopg_pool
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from procos_worker import textcodec
from procos_worker.errors import PermanentError, StoreUnavailable
from procos_worker.models import LlmResult, StoredContext, StoredOutput, Task, TaskInputs
from procos_worker.settings import DatabaseSettings
from procos_worker.store import camunda_tuning, migrations, queries

__all__ = ["ContextStore"]

_T = TypeVar("_T")
_JsonTree = Any

_OUTPUT_COLUMNS = """
    id, model_used, ai_provider, token_usage,
    content_data->>'done_reason' AS done_reason,
    (content_data->>'response_length')::bigint AS response_length
"""
_INSERT_OUTPUT = f"""
    INSERT INTO procos_ai_context
        (process_instance_id, task_id, activity_id, process_definition_key, activity_instance_id,
         context_type, content_data, content_text, ai_provider, model_used, token_usage{{thinking_column}})
    VALUES (%(pi)s, %(task)s, %(activity)s, %(definition_key)s, %(activity_instance)s, %(type)s,
            jsonb_build_object('content', {{text}}) || %(meta)s::jsonb, {{text}},
            %(provider)s, %(model)s, %(usage)s{{thinking_value}})
    ON CONFLICT (task_id, context_type) DO NOTHING
    RETURNING {_OUTPUT_COLUMNS}
"""
# thinking_text (migration 0050) is named only when there is thinking: the answers of models that don't
# think are stored alike on a database that has not applied 0050 yet.
_THINKING = {"thinking_column": ", thinking_text", "thinking_value": ", %(thinking)s::text"}
_NO_THINKING = {"thinking_column": "", "thinking_value": ""}
# Answers longer than this go to PostgreSQL by COPY, in pieces (see _copy_to_pending).
_COPY_ABOVE_CHARS = 1 << 20
_COPY_PIECE_CHARS = 1 << 20
# COPY's text format: these four characters are written as backslash escapes.
_COPY_ESCAPES = str.maketrans({"\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"})
_ROW_COLUMNS = """
    id, process_instance_id, task_id, activity_id, process_definition_key, activity_instance_id,
    context_type, content_text, content_data, ai_provider, model_used, token_usage, created_at
"""


class ContextStore:
    """A connection pool on the ProcOS database and every query the worker makes there."""

    def __init__(self, settings: DatabaseSettings, *, provider: str = "ollama") -> None:
        self._provider = provider
        self._timeout_s = settings.connect_timeout_s
        self._pool = psycopg_pool.ConnectionPool(
            settings.url.get_secret_value(),
            min_size=1,
            max_size=settings.pool_max_size,
            open=False,
            timeout=settings.connect_timeout_s,
            kwargs={"autocommit": True, "connect_timeout": max(1, int(settings.connect_timeout_s))},
            name="procos-store",
        )

    # -- lifecycle -------------------------------------------------------------------------------

    def open(self) -> None:
        """Start the pool without waiting: the worker starts even while the database is down."""
        self._pool.open(wait=False)

    def close(self) -> None:
        self._pool.close(timeout=self._timeout_s)

    def __enter__(self) -> ContextStore:
        self.open()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def ping(self) -> None:
        """Raise ``StoreUnavailable`` unless a query runs."""
        self._run(lambda cur: cur.execute("SELECT 1"))

    def upgrade_schema(self, *, init_sql: str | None = None) -> list[str]:
        """Create the schema, or apply the migrations it lacks (``migrations.upgrade``)."""
        return self._run(lambda cur: migrations.upgrade(cur.connection, init_sql=init_sql))

    def tune_camunda(self) -> list[str]:
        """Build procos' indexes on Camunda's tables without blocking the engine (``camunda_tuning.tune``)."""
        return self._run(lambda cur: camunda_tuning.tune(cur.connection))

    def schema_status(self) -> migrations.SchemaStatus:
        return self._run(lambda cur: migrations.schema_status(cur.connection))

    # -- worker writes ---------------------------------------------------------------------------

    def save_input(self, task: Task, inputs: TaskInputs, messages: Sequence[Mapping[str, str]], *,
                   model: str, options: Mapping[str, Any], think: bool | str | None = None,
                   context_type: str = "input",
                   extra: Mapping[str, Any] | None = None) -> tuple[UUID, StoredOutput | None]:
        """Store what the model is asked (once per task id): every message in order, the inputs they were
        made from (variables, or templates and the values they used), the model, its options and ``think``
        (when sent); in the same round trip look for an output row an earlier attempt committed. Returns
        (input row id, that output or None). ``context_type``: ``repair_input_<n>`` for a structured task's
        repair request; ``extra`` goes into ``content_data`` too (the output schema, the attempt).
        """
        prompt = messages[-1]["content"]
        data: dict[str, Any] = {
            "query": inputs.query,
            "context": inputs.context,
            "system_prompt": inputs.system_prompt,
            "messages": [dict(m) for m in messages],
            "model": model,
            "options": dict(options),
            "topic": task.topic,
            "worker_id": task.worker_id,
            "prompt_length": len(prompt),
            "prompt_chars": sum(len(m["content"]) for m in messages),
        }
        if think is not None:
            data["think"] = think
        if inputs.templates:
            data["templates"] = dict(inputs.templates)
            data["variables"] = dict(inputs.template_variables)
        data.update(extra or {})
        data, text = _storable(data, prompt)

        def insert(cur: psycopg.Cursor[dict[str, Any]]) -> dict[str, Any]:
            # The outer SELECT does not see the CTE's new row, but it sees a row that conflicted.
            cur.execute(
                f"""
                WITH ins AS (
                    INSERT INTO procos_ai_context
                        (process_instance_id, task_id, activity_id, process_definition_key,
                         activity_instance_id, context_type, content_data, content_text, ai_provider, model_used)
                    VALUES (%(pi)s, %(task)s, %(activity)s, %(definition_key)s, %(activity_instance)s,
                            %(type)s, %(data)s, %(text)s, %(provider)s, %(model)s)
                    ON CONFLICT (task_id, context_type) DO NOTHING
                    RETURNING id
                )
                SELECT COALESCE((SELECT id FROM ins),
                                (SELECT id FROM procos_ai_context
                                 WHERE task_id = %(task)s AND context_type = %(type)s)) AS input_id,
                       output.*
                FROM (SELECT 1) AS one
                LEFT JOIN LATERAL (SELECT {_OUTPUT_COLUMNS} FROM procos_ai_context
                                   WHERE task_id = %(task)s AND context_type = 'output') AS output ON true
                """,
                {**_step(task), "type": context_type, "data": Jsonb(data), "text": text, "provider": self._provider,
                 "model": model},
            )
            row = cur.fetchone()
            assert row is not None
            return row

        row = self._run(insert)
        return UUID(str(row["input_id"])), (None if row["id"] is None else self._to_output(row))

    def save_output(self, task: Task, result: LlmResult, input_id: UUID | None, *,
                    prompt_chars: int | None = None, context_type: str = "output",
                    extra: Mapping[str, Any] | None = None) -> StoredOutput:
        """Store the answer; if an earlier attempt already did, return that row instead (exactly once).
        ``prompt_chars`` (all messages sent) goes with the token counts, for characters per token.
        ``context_type``: ``invalid_output_<n>`` for a structured answer that broke its schema; ``extra``
        goes into ``content_data`` too (the parsed answer, the attempt, what was wrong)."""
        meta: dict[str, Any] = {
            "model": result.model,
            "done_reason": result.done_reason,
            "response_length": len(result.content),
            "total_duration": result.total_duration_ns,
            "load_duration": result.load_duration_ns,
            "prompt_eval_duration": result.prompt_eval_duration_ns,
            "eval_duration": result.eval_duration_ns,
            "wall_s": round(result.wall_s, 6),
            "input_context_id": None if input_id is None else str(input_id),
            "topic": task.topic,
            "worker_id": task.worker_id,
            **(extra or {}),
        }
        thinking = result.thinking
        if thinking:
            # A reasoning model's thinking: its own column (thinking_text), never in the answer's.
            meta["thinking_length"] = len(thinking)
            if textcodec.needs_escape(thinking):
                meta["thinking_encoding"] = textcodec.ESCAPE_ENCODING
                thinking = textcodec.encode(thinking)
        meta, text = _storable(meta, result.content)
        columns = _THINKING if thinking else _NO_THINKING
        usage = {
            "prompt_tokens": result.prompt_eval_count,
            "completion_tokens": result.eval_count,
            "total_tokens": result.prompt_eval_count + result.eval_count,
            "prompt_eval_count": result.prompt_eval_count,
            "eval_count": result.eval_count,
            # The figures of performance_stats, kept in this small JSONB so that the refresh never reads
            # content_data (which holds the whole answer).
            "wall_s": round(result.wall_s, 6),
            "eval_duration_ns": result.eval_duration_ns,
            "response_chars": len(result.content),
            "prompt_chars": prompt_chars,
        }

        params = {**_step(task), "type": context_type, "text": text, "meta": Jsonb(meta), "provider": self._provider,
                  "model": result.model, "usage": Jsonb(usage), "thinking": thinking}

        def insert(cur: psycopg.Cursor[dict[str, Any]]) -> dict[str, Any]:
            if len(text) <= _COPY_ABOVE_CHARS:
                # The answer is sent once ($n reused) and goes into both content_text and content_data.
                cur.execute(_INSERT_OUTPUT.format(text="%(text)s::text", **columns), params)
                row = cur.fetchone()
            else:
                with cur.connection.transaction():
                    _copy_to_pending(cur, text)
                    cur.execute(_INSERT_OUTPUT.format(text="(SELECT t FROM procos_pending_text)", **columns), params)
                    row = cur.fetchone()
            if row is None:
                cur.execute(
                    f"SELECT {_OUTPUT_COLUMNS} FROM procos_ai_context "
                    "WHERE task_id = %s AND context_type = %s",
                    (task.id, context_type),
                )
                row = cur.fetchone()
            assert row is not None
            return row

        return self._to_output(self._run(insert))

    # -- read API --------------------------------------------------------------------------------

    def get(self, context_id: UUID | str) -> StoredContext | None:
        """One stored row by its id (the ``ai_context_id`` flag), text decoded back to the original."""
        rows = self._select(f"SELECT {_ROW_COLUMNS} FROM procos_ai_context WHERE id = %s", (str(context_id),))
        return rows[0] if rows else None

    def thinking(self, context_id: UUID | str) -> str | None:
        """A reasoning model's thinking stored with the answer ``context_id`` (``thinking_text``, migration
        0050), decoded back to the original; None when the model did not think."""
        def query(cur: psycopg.Cursor[dict[str, Any]]) -> dict[str, Any] | None:
            cur.execute("SELECT thinking_text, content_data->>'thinking_encoding' AS encoding "
                        "FROM procos_ai_context WHERE id = %s", (str(context_id),))
            return cur.fetchone()

        row = self._run(query)
        if row is None or row["thinking_text"] is None:
            return None
        text: str = row["thinking_text"]
        return textcodec.decode(text) if row["encoding"] == textcodec.ESCAPE_ENCODING else text

    def get_input_for(self, context_id: UUID | str) -> StoredContext | None:
        """The input row of the task whose output row is ``context_id``."""
        rows = self._select(
            f"""SELECT {_ROW_COLUMNS} FROM procos_ai_context
                WHERE context_type = 'input'
                  AND task_id = (SELECT task_id FROM procos_ai_context WHERE id = %s)""",
            (str(context_id),),
        )
        return rows[0] if rows else None

    def answer_to(self, task_id: str, input_id: UUID, context_type: str) -> StoredContext | None:
        """The row of type ``context_type`` that answered the input row ``input_id`` of task ``task_id``, if
        an earlier delivery of the task stored one (a structured task's invalid answer, found again)."""
        rows = self._select(
            f"""SELECT {_ROW_COLUMNS} FROM procos_ai_context
                WHERE task_id = %s AND context_type = %s AND content_data->>'input_context_id' = %s""",
            (task_id, context_type, str(input_id)),
        )
        return rows[0] if rows else None

    def step_answers(self, process_definition_key: str, activity_id: str, *,
                     process_instance_id: str | None = None) -> list[StoredContext]:
        """Every answer (output row) of one BPMN step, oldest first; of one process instance if given
        (the iterations of a multi-instance step)."""
        return self._select(
            f"""SELECT {_ROW_COLUMNS} FROM procos_ai_context
                WHERE process_definition_key = %s AND activity_id = %s AND context_type = 'output'
                  AND (%s::text IS NULL OR process_instance_id = %s)
                ORDER BY created_at, id""",
            (process_definition_key, activity_id, process_instance_id, process_instance_id),
        )

    def activity_instance_answer(self, activity_instance_id: str) -> StoredContext | None:
        """The answer (output row) of one activity instance: one iteration of a multi-instance step."""
        rows = self._select(
            f"""SELECT {_ROW_COLUMNS} FROM procos_ai_context
                WHERE activity_instance_id = %s AND context_type = 'output'
                ORDER BY created_at DESC LIMIT 1""",
            (activity_instance_id,),
        )
        return rows[0] if rows else None

    def conversation(self, process_instance_id: str) -> list[StoredContext]:
        """Every row of a process instance in the order it was written (input before output)."""
        return self._select(
            f"""SELECT {_ROW_COLUMNS} FROM procos_ai_context WHERE process_instance_id = %s
                ORDER BY created_at, context_type, id""",
            (process_instance_id,),
        )

    def search(self, text: str, *, limit: int = 20, context_type: str | None = None) -> list[queries.SearchHit]:
        """Rows whose text contains ``text``, newest first (``queries.search``)."""
        return self._run(lambda cur: queries.search(cur, text, limit=limit, context_type=context_type))

    def stats(self, *, since: datetime | None = None) -> queries.Stats:
        """Calls, tokens and latency per model and per BPMN step (``queries.stats``)."""
        return self._run(lambda cur: queries.stats(cur, since=since))

    # -- plumbing --------------------------------------------------------------------------------

    def run(self, work: Callable[[psycopg.Cursor[dict[str, Any]]], _T]) -> _T:
        """Run ``work`` on a pooled autocommit connection, with this store's error conversion (for the
        other modules of ``store``, e.g. the model registry's table)."""
        return self._run(work)

    def _select(self, sql: str, params: tuple[Any, ...]) -> list[StoredContext]:
        def query(cur: psycopg.Cursor[dict[str, Any]]) -> list[dict[str, Any]]:
            cur.execute(sql.encode(), params)
            return cur.fetchall()

        return [_to_context(row) for row in self._run(query)]

    def _run(self, work: Callable[[psycopg.Cursor[dict[str, Any]]], _T]) -> _T:
        with self._converting():
            try:
                return self._run_once(work)
            except psycopg.OperationalError:
                # After a database restart every pooled connection is dead. Checking each one before
                # every use would cost a round trip per query; instead drop the dead ones and try once
                # more (every write here is idempotent). A second failure means the database is down.
                self._pool.check()
                return self._run_once(work)

    def _run_once(self, work: Callable[[psycopg.Cursor[dict[str, Any]]], _T]) -> _T:
        with self._pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            return work(cur)

    @contextmanager
    def _converting(self) -> Iterator[None]:
        try:
            yield
        except (psycopg_pool.PoolTimeout, psycopg.OperationalError, psycopg_pool.PoolClosed) as exc:
            raise StoreUnavailable(f"PostgreSQL unavailable: {_first_line(exc)}", details=repr(exc)) from exc
        except psycopg.Error as exc:
            raise PermanentError(
                f"PostgreSQL rejected the write: {_first_line(exc)}; check the schema (procos-worker init-db)",
                details=repr(exc),
            ) from exc

    def _to_output(self, row: Mapping[str, Any]) -> StoredOutput:
        usage = row.get("token_usage") or {}
        return StoredOutput(
            id=UUID(str(row["id"])),
            response_length=int(row.get("response_length") or 0),
            model=str(row.get("model_used") or ""),
            provider=str(row.get("ai_provider") or self._provider),
            prompt_tokens=int(usage.get("prompt_tokens") or 0),
            completion_tokens=int(usage.get("completion_tokens") or 0),
            done_reason=row.get("done_reason"),
        )


def _step(task: Task) -> dict[str, Any]:
    """The columns that say which task and BPMN step a row belongs to."""
    return {"pi": task.process_instance_id, "task": task.id, "activity": task.activity_id,
            "definition_key": task.process_definition_key, "activity_instance": task.activity_instance_id}


def _copy_to_pending(cur: psycopg.Cursor[dict[str, Any]], text: str) -> None:
    """Stream ``text`` into a session temp table in pieces, so a 64 MB answer is never encoded whole
    (as one query parameter it would be held three times: the str, its UTF-8 copy, libpq's buffer)."""
    cur.execute("CREATE TEMP TABLE IF NOT EXISTS procos_pending_text (t text) ON COMMIT DELETE ROWS")
    with cur.copy("COPY procos_pending_text (t) FROM STDIN") as copy:
        for start in range(0, len(text), _COPY_PIECE_CHARS):
            copy.write(text[start : start + _COPY_PIECE_CHARS].translate(_COPY_ESCAPES))
        copy.write("\n")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _storable(data: dict[str, Any], text: str) -> tuple[dict[str, Any], str]:
    """Escape the row's strings when any of them can't go into PostgreSQL as they are."""
    if not textcodec.needs_escape(text) and not _tree_needs_escape(data):
        return data, text
    encoded = _map_strings(data, textcodec.encode)
    encoded["text_encoding"] = textcodec.ESCAPE_ENCODING
    return encoded, textcodec.encode(text)


def _tree_needs_escape(tree: _JsonTree) -> bool:
    if isinstance(tree, str):
        return textcodec.needs_escape(tree)
    if isinstance(tree, dict):
        return any(_tree_needs_escape(k) or _tree_needs_escape(v) for k, v in tree.items())
    if isinstance(tree, list):
        return any(_tree_needs_escape(v) for v in tree)
    return False


def _map_strings(tree: _JsonTree, fn: Callable[[str], str]) -> _JsonTree:
    if isinstance(tree, str):
        return fn(tree)
    if isinstance(tree, dict):
        return {fn(k): _map_strings(v, fn) for k, v in tree.items()}
    if isinstance(tree, list):
        return [_map_strings(v, fn) for v in tree]
    return tree


def _to_context(row: Mapping[str, Any]) -> StoredContext:
    data = row.get("content_data") or {}
    text = row.get("content_text")
    if data.get("text_encoding") == textcodec.ESCAPE_ENCODING:
        data = {k: v for k, v in data.items() if k != "text_encoding"}
        data = _map_strings(data, textcodec.decode)
        text = None if text is None else textcodec.decode(text)
    return StoredContext(
        id=UUID(str(row["id"])),
        process_instance_id=str(row["process_instance_id"]),
        task_id=row.get("task_id"),
        activity_id=row.get("activity_id"),
        process_definition_key=row.get("process_definition_key"),
        activity_instance_id=row.get("activity_instance_id"),
        context_type=str(row["context_type"]),
        content_text=text,
        content_data=data,
        ai_provider=row.get("ai_provider"),
        model_used=row.get("model_used"),
        token_usage=row.get("token_usage"),
        created_at=row["created_at"],
    )

