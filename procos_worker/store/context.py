"""procos_ai_context in PostgreSQL: exactly-once writes for the worker, and a small read API.

Writes are keyed by (task_id, context_type, input_hash) (unique index ``uq_procos_ai_context_attempt``): a
task fetched again after a crash or an expired lock finds the rows of the same attempt (same prompt,
model, options, process instance: ``fingerprint.input_hash``) instead of writing second ones; a task whose
input changed gets new rows beside the old ones. Each write is one autocommitted statement, so a row the
worker sees has been committed.

Row types: ``input`` and ``output`` (the answer the task completes with). A structured task
(``procos.outputSchema``) also writes, per answer that breaks its schema, ``invalid_output_<n>`` (the
answer of attempt n) and ``repair_input_<n+1>`` (the request to repair it); ``output`` is written only
for an answer that passed the check.

psycopg errors are turned into the project's errors here, by SQLSTATE (``_classify``): can't connect /
connection lost (class 08, 57P01-57P03, no SQLSTATE) -> ``StoreUnavailable`` (the worker waits for the
database); reachable but unable for now (statement or lock timeout, too many connections, disk full,
read-only after a failover, serialization failure, I/O error) -> ``StoreRefused``, tried DATABASE_ATTEMPTS
times here, then a failure that spends a Camunda retry; anything else PostgreSQL rejects (schema, data) ->
``PermanentError`` (an incident). Messages carry PostgreSQL's primary message only, never its DETAIL
(which can quote the row, that is the prompt or the answer).

Every pooled connection has ``statement_timeout``, ``lock_timeout`` and TCP keepalives (DATABASE_*), so a
hung database or an exclusive lock held by another session can't hold a task forever.
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
from tenacity import Retrying, retry_if_exception_type, stop_after_attempt, wait_exponential_jitter

from procos_worker import textcodec
from procos_worker.errors import PermanentError, StoreRefused, StoreUnavailable
from procos_worker.fingerprint import input_hash
from procos_worker.models import LlmResult, StoredContext, StoredOutput, Task, TaskInputs, Turn, TurnSize
from procos_worker.settings import MODEL_NAME_MAX_CHARS, DatabaseSettings
from procos_worker.store import camunda_tuning, migrations, queries, turns

__all__ = ["ContextStore"]

_T = TypeVar("_T")
_JsonTree = Any

_OUTPUT_COLUMNS = """
    id, model_used, ai_provider, token_usage,
    content_data->>'done_reason' AS done_reason,
    (content_data->>'response_length')::bigint AS response_length,
    coalesce((content_data->>'prompt_truncated')::boolean, false) AS prompt_truncated
"""
# text_chars / text_bytes: the text's size, so that memory budgets never read a text for its length.
_INSERT_OUTPUT = f"""
    INSERT INTO procos_ai_context
        (process_instance_id, task_id, activity_id, process_definition_key, activity_instance_id,
         context_type, content_data, content_text, ai_provider, model_used, token_usage,
         input_context_id, memory_key, text_chars, text_bytes, text_encoding, input_hash{{thinking_column}})
    VALUES (%(pi)s, %(task)s, %(activity)s, %(definition_key)s, %(activity_instance)s, %(type)s,
            jsonb_build_object('content', {{text}}) || %(meta)s::jsonb, {{text}},
            %(provider)s, %(model)s, %(usage)s,
            %(input_id)s, %(memory_key)s, %(chars)s, octet_length({{text}}), %(encoding)s,
            (SELECT input_hash FROM procos_ai_context WHERE id = %(input_id)s){{thinking_value}})
    ON CONFLICT (task_id, context_type, input_hash) DO NOTHING
    RETURNING {_OUTPUT_COLUMNS}
"""
_SAVED_INPUT = f"""
    SELECT (SELECT id FROM procos_ai_context
            WHERE task_id = %(task)s AND context_type = %(type)s AND input_hash = %(hash)s) AS input_id,
           output.*
    FROM (SELECT 1) AS one
    LEFT JOIN LATERAL (SELECT {_OUTPUT_COLUMNS} FROM procos_ai_context
                       WHERE task_id = %(task)s AND context_type = 'output' AND input_hash = %(hash)s) AS output
           ON true
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
# SQLSTATEs (or classes, by their first two characters) of a reachable database that can't do it now.
_REFUSED = {
    "57014": "statement timeout (DATABASE_STATEMENT_TIMEOUT_MS) or the statement was cancelled",
    "55P03": "lock timeout (DATABASE_LOCK_TIMEOUT_MS): another session holds a lock on the table",
    "53300": "too many connections",
    "53100": "disk full",
    "53200": "out of memory",
    "53400": "a configured limit was exceeded",
    "25006": "read-only (a standby, after a failover?)",
    "40001": "serialization failure",
    "40P01": "deadlock",
    "58": "I/O or system error",
}
# What PostgreSQL says when it refuses a new connection for lack of slots (no SQLSTATE reaches the client).
_NO_SLOTS = ("too many connections", "too many clients", "connection slots are reserved")
_ROW_COLUMNS = """
    id, process_instance_id, task_id, activity_id, process_definition_key, activity_instance_id,
    context_type, content_text, content_data, ai_provider, model_used, token_usage, created_at
"""


class ContextStore:
    """A connection pool on the ProcOS database and every query the worker makes there."""

    def __init__(self, settings: DatabaseSettings, *, provider: str = "ollama", pool_size: int | None = None) -> None:
        """``pool_size``: the worker passes ``Settings.pool_size``; other users get DATABASE_POOL_MAX_SIZE or 4."""
        self._provider = provider
        self._timeout_s = settings.connect_timeout_s
        # One for every call: tenacity keeps each call's state per thread.
        self._retrying = Retrying(
            retry=retry_if_exception_type(StoreRefused),
            stop=stop_after_attempt(settings.attempts),
            wait=wait_exponential_jitter(multiplier=0.5, max=5.0),
            reraise=True,
        )
        self._conninfo = settings.url.get_secret_value()
        self._connect_kwargs = _connect_kwargs(settings, self._conninfo)
        self._pool = psycopg_pool.ConnectionPool(
            self._conninfo,
            min_size=1,
            max_size=pool_size or settings.pool_max_size or 4,
            open=False,
            timeout=settings.connect_timeout_s,
            kwargs=self._connect_kwargs,
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
        """Create the schema, or apply the migrations it lacks (``migrations.upgrade``).

        Without the session's statement and lock timeouts: a migration may take long, and waiting for the
        advisory lock of a concurrent upgrade is expected."""
        def upgrade(cur: psycopg.Cursor[dict[str, Any]]) -> list[str]:
            cur.execute("SET statement_timeout = 0")
            cur.execute("SET lock_timeout = 0")
            try:
                return migrations.upgrade(cur.connection, init_sql=init_sql)
            finally:
                cur.execute("RESET statement_timeout")
                cur.execute("RESET lock_timeout")

        return self._run(upgrade)

    def tune_camunda(self) -> list[str]:
        """Build procos' indexes on Camunda's tables without blocking the engine (``camunda_tuning.tune``)."""
        return self._run(lambda cur: camunda_tuning.tune(cur.connection))

    def schema_status(self) -> migrations.SchemaStatus:
        return self._run(lambda cur: migrations.schema_status(cur.connection))

    # -- worker writes ---------------------------------------------------------------------------

    def save_input(self, task: Task, inputs: TaskInputs, messages: Sequence[Mapping[str, str]], *,
                   model: str, options: Mapping[str, Any], think: bool | str | None = None,
                   context_type: str = "input", extra: Mapping[str, Any] | None = None,
                   window: Mapping[str, Any] | None = None,
                   memory_key: str | None = None) -> tuple[UUID, StoredOutput | None]:
        """Store what the model is asked (once per attempt: the task id and ``fingerprint.input_hash`` of the
        messages, model, options and process instance): every message in order (system, memory turns,
        user), the inputs they were made from (variables, or templates and the values they used), the model
        and its options, ``think`` (when sent), and ``window`` (memory_context_ids, the budget:
        ``ai.window.Prompt.record``); in the same round trip look for an output row the same attempt
        committed. Returns (input row id, that output or None). ``context_type``: ``repair_input_<n>`` for
        a structured task's repair request; ``extra`` goes into ``content_data`` too (the output schema, the
        attempt).
        """
        if len(model) > MODEL_NAME_MAX_CHARS:
            # Refused before the model is asked: model_used could not hold the name of what answered.
            raise PermanentError(f"model name is {len(model)} characters; procos_ai_context.model_used holds "
                                 f"{MODEL_NAME_MAX_CHARS} (procos.model / TASK_TOPIC_DEFAULTS / OLLAMA_MODEL)")
        data, text = _input_data(task, inputs, messages, model=model, options=options, window=window, extra=extra,
                                 think=think)

        attempt = input_hash(task.process_instance_id, messages, model, options)
        params = {**_step(task), "type": context_type, "data": Jsonb(data), "text": text, "provider": self._provider,
                  "model": model, "hash": attempt, "memory_key": memory_key, "chars": len(text),
                  "encoding": data.get("text_encoding")}

        def insert(cur: psycopg.Cursor[dict[str, Any]]) -> dict[str, Any]:
            # The outer SELECT does not see the CTE's new row, but it sees a row that conflicted, if that row
            # was committed before this statement began.
            cur.execute(
                f"""
                WITH ins AS (
                    INSERT INTO procos_ai_context
                        (process_instance_id, task_id, activity_id, process_definition_key,
                         activity_instance_id, context_type, content_data, content_text, ai_provider, model_used,
                         memory_key, text_chars, text_bytes, text_encoding, input_hash)
                    VALUES (%(pi)s, %(task)s, %(activity)s, %(definition_key)s, %(activity_instance)s,
                            %(type)s, %(data)s, %(text)s, %(provider)s, %(model)s,
                            %(memory_key)s, %(chars)s, octet_length(%(text)s), %(encoding)s, %(hash)s)
                    ON CONFLICT (task_id, context_type, input_hash) DO NOTHING
                    RETURNING id
                )
                SELECT COALESCE((SELECT id FROM ins),
                                (SELECT id FROM procos_ai_context
                                 WHERE task_id = %(task)s AND context_type = %(type)s AND input_hash = %(hash)s))
                           AS input_id,
                       output.*
                FROM (SELECT 1) AS one
                LEFT JOIN LATERAL (SELECT {_OUTPUT_COLUMNS} FROM procos_ai_context
                                   WHERE task_id = %(task)s AND context_type = 'output' AND input_hash = %(hash)s)
                       AS output ON true
                """,
                params,
            )
            row = cur.fetchone()
            if row is not None and row["input_id"] is None:
                # Another holder of the task inserted the row and committed while this statement waited on
                # it: ON CONFLICT returned nothing and the statement's snapshot predates that commit. A new
                # statement (a new snapshot, autocommit) sees it.
                cur.execute(_SAVED_INPUT, params)
                row = cur.fetchone()
            assert row is not None and row["input_id"] is not None
            return row

        row = self._run(insert)
        return UUID(str(row["input_id"])), (None if row["id"] is None else self._to_output(row))

    def amend_input(self, input_id: UUID, task: Task, inputs: TaskInputs, messages: Sequence[Mapping[str, str]], *,
                    model: str, options: Mapping[str, Any], window: Mapping[str, Any] | None = None) -> None:
        """Rewrite the input row with the messages of a second try (Ollama refused the first as too long), so
        that it holds exactly what the answer was asked with."""
        data, text = _input_data(task, inputs, messages, model=model, options=options, window=window)
        self._run(lambda cur: cur.execute(
            "UPDATE procos_ai_context SET content_data = %(data)s, content_text = %(text)s, text_chars = %(chars)s, "
            "text_bytes = octet_length(%(text)s), text_encoding = %(encoding)s "
            "WHERE id = %(id)s AND context_type = 'input'",
            {"id": str(input_id), "data": Jsonb(data), "text": text, "chars": len(text),
             "encoding": data.get("text_encoding")}))

    def save_output(self, task: Task, result: LlmResult, input_id: UUID | None, *,
                    prompt_chars: int | None = None, prompt_messages: int | None = None,
                    memory_key: str | None = None, prompt_truncated: bool = False, context_type: str = "output",
                    extra: Mapping[str, Any] | None = None) -> StoredOutput:
        """Store the answer of the attempt whose input row is ``input_id`` (its ``input_hash`` goes with it);
        if the same attempt already did, return that row instead (exactly once). ``prompt_chars`` (all
        messages sent) and ``prompt_messages`` (how many) go with the token counts, for characters per
        token; ``memory_key`` and ``input_id`` make the row a turn later tasks can be given
        (``procos.memory``); ``prompt_truncated``: procos.onOverflow=truncate cut the prompt.
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
        if prompt_truncated:
            meta["prompt_truncated"] = True
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
        if prompt_messages is not None:
            usage["prompt_messages"] = prompt_messages

        params = {**_step(task), "type": context_type, "text": text, "meta": Jsonb(meta), "provider": self._provider,
                  "model": result.model, "usage": Jsonb(usage), "input_id": None if input_id is None else str(input_id),
                  "memory_key": memory_key, "chars": len(text), "encoding": meta.get("text_encoding"),
                  "thinking": thinking}

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
                    "WHERE task_id = %(task)s AND context_type = %(type)s AND input_hash = "
                    "(SELECT input_hash FROM procos_ai_context WHERE id = %(input_id)s)",
                    params,
                )
                row = cur.fetchone()
            assert row is not None
            return row

        return self._to_output(self._run(insert))

    def recent_turns(self, task: Task, scope: str, value: str, limit: int) -> list[TurnSize]:
        """The sizes of the newest ``limit`` turns before ``task`` (its own rows left out) of a process
        instance (``scope`` "process") or a memory key ("variable"), newest first (``store.turns``)."""
        kind: turns.Scope = "process" if scope == "process" else "variable"
        return self._run(lambda cur: turns.recent(cur, kind, value, task_id=task.id, limit=limit))

    def turn_texts(self, ids: Sequence[UUID]) -> dict[UUID, Turn]:
        """The turns of these output rows with their texts (only those the budget chose)."""
        return self._run(lambda cur: turns.texts(cur, ids))

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
        """The input row the output row ``context_id`` answered (a task may have several attempts)."""
        rows = self._select(
            f"""SELECT {_ROW_COLUMNS} FROM procos_ai_context
                WHERE context_type = 'input'
                  AND id = (SELECT (content_data->>'input_context_id')::uuid FROM procos_ai_context
                            WHERE id = %s)""",
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

    def turns(self, *, process_instance_id: str | None = None, memory_key: str | None = None) -> list[Turn]:
        """A conversation as turns, oldest first: each task's final question (the user message its model
        saw) and answer, of one process instance or of one ``procos.memory=variable:NAME`` key
        (``NAME=value``)."""
        return self._run(lambda cur: turns.conversation(cur, process_instance_id=process_instance_id,
                                                        memory_key=memory_key))

    def memory_of(self, context_id: UUID | str) -> list[Turn]:
        """The earlier turns the answer ``context_id`` was asked with (its input row's
        ``memory_context_ids``), oldest first."""
        return self._run(lambda cur: turns.memory_of(cur, context_id))

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
        """Run ``work`` on a pooled connection; ``StoreRefused`` is tried DATABASE_ATTEMPTS times (every
        write here is idempotent), a refusal that lasts goes to the caller (a failure spending a retry)."""
        result: _T = self._retrying(self._run_converted, work)
        return result

    def _run_converted(self, work: Callable[[psycopg.Cursor[dict[str, Any]]], _T]) -> _T:
        with self._converting():
            try:
                return self._run_once(work)
            except psycopg.OperationalError as exc:
                if not _connection_lost(exc):
                    raise
                # After a database restart every pooled connection is dead. Checking each one before
                # every use would cost a round trip per query; instead drop the dead ones and try once
                # more (every write here is idempotent). A second failure means the database is down.
                self._pool.check()
                return self._run_once(work)

    def _run_once(self, work: Callable[[psycopg.Cursor[dict[str, Any]]], _T]) -> _T:
        with self._pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            try:
                return work(cur)
            except psycopg.errors.ReadOnlySqlTransaction:
                # After a failover this connection may lead to the old primary, now a standby: don't reuse it.
                conn.close()
                raise

    @contextmanager
    def _converting(self) -> Iterator[None]:
        try:
            yield
        except psycopg_pool.PoolTimeout as exc:
            raise self._why_no_connection(exc) from exc
        except (psycopg.Error, psycopg_pool.PoolClosed) as exc:
            raise _classify(exc) from exc

    def _why_no_connection(self, exc: psycopg_pool.PoolTimeout) -> Exception:
        """A pool timeout is not by itself "PostgreSQL down": every connection may be busy, or the server
        may refuse new ones. One direct connection attempt tells which."""
        stats = self._pool.get_stats()
        if stats.get("pool_size", 0) >= (self._pool.max_size or 0) and not stats.get("pool_available", 0):
            return StoreRefused(f"PostgreSQL: all {self._pool.max_size} pooled connections are busy",
                                details=repr(exc))
        try:
            psycopg.connect(self._conninfo, **self._connect_kwargs).close()
        except psycopg.Error as probe:
            return _classify(probe)
        return StoreRefused("PostgreSQL: no pooled connection within DATABASE_CONNECT_TIMEOUT_S", details=repr(exc))

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
            prompt_truncated=bool(row.get("prompt_truncated")),
        )


def _input_data(task: Task, inputs: TaskInputs, messages: Sequence[Mapping[str, str]], *, model: str,
                options: Mapping[str, Any], window: Mapping[str, Any] | None,
                extra: Mapping[str, Any] | None = None, think: bool | str | None = None) -> tuple[dict[str, Any], str]:
    """content_data and content_text (the user message) of an input row, escaped if they must be."""
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
    if window:
        data.update(window)
    data.update(extra or {})
    return _storable(data, prompt)


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


def _connect_kwargs(settings: DatabaseSettings, conninfo: str) -> dict[str, Any]:
    """Connection parameters on top of DATABASE_URL: autocommit, timeouts, keepalives. The session limits
    go after any ``options`` the URL already has (a later ``-c`` wins, so they apply)."""
    own = f"-c statement_timeout={settings.statement_timeout_ms} -c lock_timeout={settings.lock_timeout_ms}"
    given = psycopg.conninfo.conninfo_to_dict(conninfo).get("options")
    return {
        "autocommit": True,
        "connect_timeout": max(1, int(settings.connect_timeout_s)),
        "options": f"{given} {own}" if given else own,
        "keepalives": 1,
        "keepalives_idle": settings.keepalives_idle_s,
        "keepalives_interval": settings.keepalives_interval_s,
        "keepalives_count": settings.keepalives_count,
    }


def _classify(exc: BaseException) -> Exception:
    """A psycopg/pool error as the project's error, by SQLSTATE; the message has no DETAIL (it can quote rows)."""
    sqlstate = getattr(exc, "sqlstate", None) or ""
    primary = _primary(exc)
    reason = _REFUSED.get(sqlstate) or (_REFUSED["58"] if sqlstate.startswith("58") else None)
    if reason is None and not sqlstate and any(words in primary.lower() for words in _NO_SLOTS):
        reason = _REFUSED["53300"]
    details = f"{type(exc).__name__} (SQLSTATE {sqlstate or 'none'}): {primary}"
    if reason is not None:
        return StoreRefused(f"PostgreSQL: {reason}: {primary}", details=details)
    if isinstance(exc, psycopg_pool.PoolClosed) or _connection_lost(exc):
        return StoreUnavailable(f"PostgreSQL unavailable: {primary}", details=details)
    return PermanentError(f"PostgreSQL rejected the write: {primary}; check the schema (procos-worker init-db)",
                          details=details)


def _connection_lost(exc: BaseException) -> bool:
    """Can't connect, or the connection broke: class 08, the server shutting down or starting, or a
    client-side failure that never got a SQLSTATE. Not the pool's own errors (OperationalErrors too): no
    connection within the timeout is no dead connection, and trying again would double the wait."""
    if not isinstance(exc, psycopg.OperationalError) or isinstance(exc, (psycopg_pool.PoolTimeout,
                                                                         psycopg_pool.PoolClosed)):
        return False
    sqlstate = exc.sqlstate or ""
    if not sqlstate:
        return not any(words in str(exc).lower() for words in _NO_SLOTS)
    return sqlstate.startswith("08") or sqlstate in ("57P01", "57P02", "57P03")


def _primary(exc: BaseException) -> str:
    """PostgreSQL's primary message (no DETAIL, no statement), or the first line of a client error."""
    diag = getattr(exc, "diag", None)
    primary = getattr(diag, "message_primary", None) if diag is not None else None
    if primary:
        return str(primary)
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

