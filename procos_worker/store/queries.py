"""Read-only queries an operator asks of procos_ai_context: search and usage statistics.

Each function takes a cursor and returns plain frozen records; ``ContextStore.search`` and
``ContextStore.stats`` run them on the pool, converting psycopg's errors there. The row-by-id reads
(``get``, ``get_input_for``, ``conversation``) are the store's own read API.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

import psycopg

__all__ = ["ActivityStats", "ModelStats", "SearchHit", "Stats", "escape_like", "search", "stats"]

# Characters of the answer shown on each side of a search match.
_SNIPPET_CHARS = 60
_PERCENTILES = (0.5, 0.95, 0.99)


@dataclass(frozen=True, slots=True)
class SearchHit:
    """A row whose text contains the searched string, with the text around the first match."""

    id: UUID
    context_type: str
    process_instance_id: str
    activity_id: str | None
    model_used: str | None
    created_at: datetime
    text_length: int
    snippet: str


@dataclass(frozen=True, slots=True)
class ModelStats:
    """Calls answered by one model (output rows), joined with its registry entry."""

    model: str
    provider: str
    registered_versions: tuple[str, ...]
    active: bool | None
    calls: int
    prompt_tokens: int
    completion_tokens: int
    latency_s: tuple[float, float, float] | None  # p50, p95, p99 of the LLM call's wall time
    first_at: datetime | None
    last_at: datetime | None


@dataclass(frozen=True, slots=True)
class ActivityStats:
    """Calls made by one BPMN step (process definition key + activity id)."""

    process_definition_key: str | None
    activity_id: str | None
    calls: int
    prompt_tokens: int
    completion_tokens: int
    latency_s: tuple[float, float, float] | None


@dataclass(frozen=True, slots=True)
class Stats:
    since: datetime | None
    models: tuple[ModelStats, ...]
    activities: tuple[ActivityStats, ...]


def escape_like(text: str) -> str:
    """``text`` as a literal inside a LIKE pattern (backslash is PostgreSQL's default escape)."""
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def search(cur: psycopg.Cursor[dict[str, Any]], text: str, *, limit: int,
           context_type: str | None = None) -> list[SearchHit]:
    """Rows whose ``content_text`` contains ``text`` (case-insensitive), newest first.

    ``ILIKE '%text%'`` is answered by the trigram index (``idx_procos_ai_context_content_search``)
    when ``text`` has three characters or more; shorter strings scan the table.
    """
    cur.execute(
        """
        SELECT id, context_type, process_instance_id, activity_id, model_used, created_at,
               length(content_text) AS text_length,
               substr(content_text, greatest(1, strpos(lower(content_text), lower(%(text)s)) - %(side)s),
                      length(%(text)s) + 2 * %(side)s) AS snippet
        FROM procos_ai_context
        WHERE content_text ILIKE %(pattern)s
          AND (%(type)s::text IS NULL OR context_type = %(type)s::text)
        ORDER BY created_at DESC, id
        LIMIT %(limit)s
        """,
        {"text": text, "pattern": f"%{escape_like(text)}%", "side": _SNIPPET_CHARS, "limit": limit,
         "type": context_type},
    )
    return [
        SearchHit(id=UUID(str(row["id"])), context_type=str(row["context_type"]),
                  process_instance_id=str(row["process_instance_id"]), activity_id=row["activity_id"],
                  model_used=row["model_used"], created_at=row["created_at"],
                  text_length=int(row["text_length"] or 0), snippet=str(row["snippet"] or ""))
        for row in cur.fetchall()
    ]


# The LLM call's wall time as the worker saw it: in token_usage (small) since the model registry's
# refresh needed it there, in content_data (which holds the whole answer) for earlier rows, Ollama's
# own total for rows written by other tools. COALESCE reads content_data only when it must.
_LATENCY = ("coalesce((token_usage->>'wall_s')::float8, (content_data->>'wall_s')::float8, "
            "(content_data->>'total_duration')::float8 / 1e9)")
# One pass over the output rows for both groupings: reading a row's JSONB is most of the cost.
_STATS = f"""
    WITH outputs AS (
        SELECT coalesce(model_used, '') AS model, coalesce(ai_provider, '') AS provider,
               process_definition_key, activity_id, created_at,
               (token_usage->>'prompt_tokens')::bigint AS prompt_tokens,
               (token_usage->>'completion_tokens')::bigint AS completion_tokens,
               {_LATENCY} AS latency
        FROM procos_ai_context
        WHERE context_type = 'output' AND (%(since)s::timestamptz IS NULL OR created_at >= %(since)s)
    )
    SELECT GROUPING(model, provider) <> 0 AS per_step, model, provider, process_definition_key, activity_id,
           count(*) AS calls, coalesce(sum(prompt_tokens), 0) AS prompt_tokens,
           coalesce(sum(completion_tokens), 0) AS completion_tokens,
           percentile_cont(%(percentiles)s::float8[]) WITHIN GROUP (ORDER BY latency) AS latency_s,
           min(created_at) AS first_at, max(created_at) AS last_at
    FROM outputs
    GROUP BY GROUPING SETS ((model, provider), (process_definition_key, activity_id))
    ORDER BY calls DESC, 2, 3, 4, 5
"""
_REGISTRY = """
    SELECT model_name AS model, provider, array_agg(coalesce(version, '') ORDER BY version) AS versions,
           bool_or(is_active) AS active
    FROM procos_ai_models GROUP BY 1, 2 ORDER BY 1, 2
"""


def stats(cur: psycopg.Cursor[dict[str, Any]], *, since: datetime | None = None) -> Stats:
    """Calls, tokens and latency percentiles per model (with the registry, procos_ai_models, which
    also lists models no call used) and per BPMN step, over the output rows written since ``since``
    (all of them when None: a full scan of the table)."""
    cur.execute(_STATS, {"since": since, "percentiles": list(_PERCENTILES)})
    rows = cur.fetchall()
    cur.execute(_REGISTRY)
    registry = {(str(r["model"]), str(r["provider"])): r for r in cur.fetchall()}
    models: list[ModelStats] = []
    activities: list[ActivityStats] = []
    for row in rows:
        calls, prompt, completion = int(row["calls"]), int(row["prompt_tokens"]), int(row["completion_tokens"])
        latency = _triple(row["latency_s"])
        if row["per_step"]:
            activities.append(ActivityStats(process_definition_key=row["process_definition_key"],
                                            activity_id=row["activity_id"], calls=calls, prompt_tokens=prompt,
                                            completion_tokens=completion, latency_s=latency))
            continue
        entry = registry.pop((str(row["model"]), str(row["provider"])), None)
        models.append(ModelStats(model=str(row["model"]), provider=str(row["provider"]),
                                 registered_versions=tuple(str(v) for v in entry["versions"]) if entry else (),
                                 active=entry["active"] if entry else None, calls=calls, prompt_tokens=prompt,
                                 completion_tokens=completion, latency_s=latency, first_at=row["first_at"],
                                 last_at=row["last_at"]))
    models += [ModelStats(model=model, provider=provider, registered_versions=tuple(str(v) for v in r["versions"]),
                          active=r["active"], calls=0, prompt_tokens=0, completion_tokens=0, latency_s=None,
                          first_at=None, last_at=None)
               for (model, provider), r in registry.items()]
    return Stats(since=since, models=tuple(models), activities=tuple(activities))


def _triple(values: list[float | None] | None) -> tuple[float, float, float] | None:
    if not values or any(v is None for v in values):
        return None
    p50, p95, p99 = (float(v) for v in values if v is not None)
    return p50, p95, p99
