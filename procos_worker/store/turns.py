"""Earlier turns of a conversation in procos_ai_context: their sizes for the budget, the texts of those
that fit, and a conversation read back.

A turn is an output row and the input row it answered (``input_context_id``): the user message the model
saw (the input's ``content_text``) and the answer. A task with several stored attempts counts once, with
its latest answer (an attempt is superseded by a later output row of the same task id).

The newest turns of a process instance or of a memory key are index scans in creation order
(``idx_procos_ai_context_turns``, ``idx_procos_ai_context_memory_key``), stopped after the limit: a
conversation's length does not change their cost. The size query reads the small columns only
(``text_chars``, ``text_bytes``, ``token_usage``), never a text; the texts are read only for the turns the
budget chose. Rows written before migration 0036 (or by an older worker since) fall back to the texts.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal
from uuid import UUID

import psycopg

from procos_worker import textcodec
from procos_worker.models import Turn, TurnSize

__all__ = ["Scope", "conversation", "memory_of", "recent", "recent_sql", "texts"]

Scope = Literal["process", "variable"]

_WHERE = {"process": "o.process_instance_id = %(scope)s", "variable": "o.memory_key = %(scope)s"}
_INPUT_OF = "i.id = coalesce(o.input_context_id, (o.content_data->>'input_context_id')::uuid)"
# A task's earlier attempts are not turns: only its latest output row is.
_LATEST = """NOT EXISTS (SELECT 1 FROM procos_ai_context later
                         WHERE later.task_id = o.task_id AND later.context_type = 'output'
                           AND (later.created_at, later.id) > (o.created_at, o.id))"""
_RECENT = f"""
SELECT o.id, i.id AS input_id, o.model_used,
       coalesce(o.text_chars, char_length(o.content_text), 0) AS answer_chars,
       coalesce(o.text_bytes, octet_length(o.content_text), 0) AS answer_bytes,
       coalesce(i.text_chars, char_length(i.content_text), 0) AS question_chars,
       coalesce(i.text_bytes, octet_length(i.content_text), 0) AS question_bytes,
       (o.token_usage->>'prompt_chars')::bigint AS prompt_chars,
       (o.token_usage->>'prompt_tokens')::bigint AS prompt_tokens,
       (o.token_usage->>'prompt_messages')::int AS prompt_messages
FROM procos_ai_context o
JOIN procos_ai_context i ON {_INPUT_OF}
WHERE {{where}} AND o.context_type = 'output' AND o.task_id IS DISTINCT FROM %(task)s::text AND {_LATEST}
ORDER BY o.created_at DESC, o.id DESC
LIMIT %(limit)s::int
"""
_TURN_COLUMNS = """
    o.id, i.id AS input_id, i.content_text AS question, i.text_encoding AS question_encoding,
    o.content_text AS answer, o.text_encoding AS answer_encoding, o.process_instance_id, o.task_id,
    o.activity_id, o.memory_key, o.model_used, o.created_at
"""


def recent_sql(scope: Scope) -> str:
    """The size query of the newest turns of a process instance or a memory key (shown by EXPLAIN in the
    tests). Parameters: scope (the instance id or the key), task (left out: the asking task), limit."""
    return _RECENT.format(where=_WHERE[scope])


def recent(cur: psycopg.Cursor[dict[str, Any]], scope: Scope, value: str, *, task_id: str | None,
           limit: int) -> list[TurnSize]:
    """The sizes of the newest ``limit`` turns, newest first."""
    cur.execute(recent_sql(scope).encode(), {"scope": value, "task": task_id, "limit": limit})
    return [TurnSize(id=UUID(str(row["id"])), input_id=UUID(str(row["input_id"])),
                     question_chars=int(row["question_chars"]), question_bytes=int(row["question_bytes"]),
                     answer_chars=int(row["answer_chars"]), answer_bytes=int(row["answer_bytes"]),
                     model=row["model_used"], prompt_chars=row["prompt_chars"], prompt_tokens=row["prompt_tokens"],
                     prompt_messages=row["prompt_messages"])
            for row in cur.fetchall()]


def texts(cur: psycopg.Cursor[dict[str, Any]], ids: Sequence[UUID]) -> dict[UUID, Turn]:
    """The turns of these output rows, with their texts."""
    if not ids:
        return {}
    cur.execute(f"""SELECT {_TURN_COLUMNS} FROM procos_ai_context o JOIN procos_ai_context i ON {_INPUT_OF}
                    WHERE o.id = ANY(%s) AND o.context_type = 'output'""".encode(), ([str(i) for i in ids],))
    return {turn.id: turn for turn in map(_turn, cur.fetchall())}


def conversation(cur: psycopg.Cursor[dict[str, Any]], *, process_instance_id: str | None = None,
                 memory_key: str | None = None) -> list[Turn]:
    """Every turn of a process instance or of a memory key, oldest first."""
    if (process_instance_id is None) == (memory_key is None):
        raise ValueError("give exactly one of process_instance_id and memory_key")
    scope: Scope = "process" if process_instance_id is not None else "variable"
    cur.execute(f"""SELECT {_TURN_COLUMNS} FROM procos_ai_context o JOIN procos_ai_context i ON {_INPUT_OF}
                    WHERE {_WHERE[scope]} AND o.context_type = 'output' AND {_LATEST}
                    ORDER BY o.created_at, o.id""".encode(), {"scope": process_instance_id or memory_key})
    return [_turn(row) for row in cur.fetchall()]


def memory_of(cur: psycopg.Cursor[dict[str, Any]], context_id: UUID | str) -> list[Turn]:
    """The turns the answer (output row) ``context_id`` was asked with, oldest first."""
    cur.execute("""SELECT i.content_data->'memory_context_ids' AS ids FROM procos_ai_context o
                   JOIN procos_ai_context i ON i.id = coalesce(o.input_context_id,
                                                               (o.content_data->>'input_context_id')::uuid)
                   WHERE o.id = %s""", (str(context_id),))
    row = cur.fetchone()
    ids = [UUID(str(i)) for i in (row["ids"] or [])] if row else []
    found = texts(cur, ids)
    return [found[i] for i in ids if i in found]


def _turn(row: Mapping[str, Any]) -> Turn:
    return Turn(id=UUID(str(row["id"])), input_id=UUID(str(row["input_id"])),
                question=_decoded(row["question"], row["question_encoding"]),
                answer=_decoded(row["answer"], row["answer_encoding"]),
                process_instance_id=str(row["process_instance_id"]), task_id=row["task_id"],
                activity_id=row["activity_id"], memory_key=row["memory_key"], model=row["model_used"],
                created_at=row["created_at"])


def _decoded(text: str | None, encoding: str | None) -> str:
    if text is None:
        return ""
    return textcodec.decode(text) if encoding == textcodec.ESCAPE_ENCODING else text
