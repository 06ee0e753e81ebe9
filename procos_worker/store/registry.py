"""procos_ai_models in PostgreSQL: the rows the model registry reads, and the ``performance_stats``
refresh computed from procos_ai_context.

The refresh runs in one transaction holding a transaction-level advisory lock taken with ``try``
(a worker that finds it taken skips this round), and skips when any row's stats were refreshed less
than ``min_age_s`` ago: with N workers each on its own timer, the fleet refreshes about once per
interval, and no row is updated per task.

Figures, per registered model, over the output rows of the last ``window_s`` seconds:
``calls`` (answers stored), ``errors`` (input rows with no answer, older than ``unanswered_after_s``:
failed or given up, not still running), ``prompt_tokens``, ``completion_tokens``,
``latency_p50_s`` / ``latency_p95_s`` (the worker's wall time of the Ollama call), ``tokens_per_s``
(completion tokens over Ollama's eval time), ``chars_per_token_prompt`` (characters of every message
sent over prompt tokens, which include the chat template's own) and ``chars_per_token_completion``.
"""

from __future__ import annotations

from typing import Any

import psycopg

from procos_worker.models import ModelRow
from procos_worker.store.context import ContextStore

__all__ = ["STATS_LOCK_KEY", "ModelTable"]

# pg_try_advisory_xact_lock key of the stats refresh ("statsx" in ASCII); migrations use another.
STATS_LOCK_KEY = 0x737461747378

# model_used -> the registry's spelling (a name without a tag is ':latest', as Ollama reports it).
_CANONICAL = "CASE WHEN strpos(split_part({col}, '/', -1), ':') > 0 THEN {col} ELSE {col} || ':latest' END"

# Reads token_usage (a small JSONB) and row headers only: never content_data, which holds whole texts.
_STATS = f"""
WITH answered AS (
    SELECT {_CANONICAL.format(col="o.model_used")} AS model,
           count(*) AS calls,
           sum((o.token_usage->>'prompt_tokens')::bigint) AS prompt_tokens,
           sum((o.token_usage->>'completion_tokens')::bigint) AS completion_tokens,
           percentile_cont(0.5) WITHIN GROUP (ORDER BY (o.token_usage->>'wall_s')::float8) AS p50,
           percentile_cont(0.95) WITHIN GROUP (ORDER BY (o.token_usage->>'wall_s')::float8) AS p95,
           sum((o.token_usage->>'completion_tokens')::float8)
               FILTER (WHERE (o.token_usage->>'eval_duration_ns')::bigint > 0)
             / nullif(sum((o.token_usage->>'eval_duration_ns')::float8 / 1e9)
               FILTER (WHERE (o.token_usage->>'eval_duration_ns')::bigint > 0), 0) AS tokens_per_s,
           sum((o.token_usage->>'prompt_chars')::float8)
             / nullif(sum((o.token_usage->>'prompt_tokens')::float8)
               FILTER (WHERE o.token_usage->>'prompt_chars' IS NOT NULL), 0) AS cpt_prompt,
           sum((o.token_usage->>'response_chars')::float8)
             / nullif(sum((o.token_usage->>'completion_tokens')::float8)
               FILTER (WHERE o.token_usage->>'response_chars' IS NOT NULL), 0) AS cpt_completion
    FROM procos_ai_context o
    WHERE o.context_type = 'output' AND o.ai_provider = %(provider)s
      AND o.created_at >= now() - make_interval(secs => %(window_s)s)
    GROUP BY 1
), unanswered AS (
    SELECT {_CANONICAL.format(col="i.model_used")} AS model, count(*) AS errors
    FROM procos_ai_context i
    WHERE i.context_type = 'input' AND i.ai_provider = %(provider)s AND i.model_used IS NOT NULL
      AND i.created_at >= now() - make_interval(secs => %(window_s)s)
      AND i.created_at < now() - make_interval(secs => %(unanswered_after_s)s)
      AND NOT EXISTS (SELECT 1 FROM procos_ai_context o  -- the answer of the same attempt (input_hash)
                      WHERE o.task_id = i.task_id AND o.context_type = 'output'
                        AND o.input_hash IS NOT DISTINCT FROM i.input_hash)
    GROUP BY 1
), stats AS (
    SELECT m.id, jsonb_build_object(
        'calls', coalesce(a.calls, 0),
        'errors', coalesce(u.errors, 0),
        'prompt_tokens', coalesce(a.prompt_tokens, 0),
        'completion_tokens', coalesce(a.completion_tokens, 0),
        'latency_p50_s', round(a.p50::numeric, 3),
        'latency_p95_s', round(a.p95::numeric, 3),
        'tokens_per_s', round(a.tokens_per_s::numeric, 2),
        'chars_per_token_prompt', round(a.cpt_prompt::numeric, 3),
        'chars_per_token_completion', round(a.cpt_completion::numeric, 3),
        'window_s', %(window_s)s,
        'refreshed_at', now(),
        'refreshed_by', %(worker_id)s::text
    ) AS figures
    FROM procos_ai_models m
    LEFT JOIN answered a ON a.model = {_CANONICAL.format(col="m.model_name")}
    LEFT JOIN unanswered u ON u.model = {_CANONICAL.format(col="m.model_name")}
    WHERE m.provider = %(provider)s
)
UPDATE procos_ai_models m SET performance_stats = stats.figures
FROM stats WHERE m.id = stats.id
"""


class ModelTable:
    """procos_ai_models rows of one provider, through the context store's pool."""

    def __init__(self, store: ContextStore, provider: str) -> None:
        self._store = store
        self._provider = provider

    def load(self) -> list[ModelRow]:
        """Every row of the provider, newest first (the registry uses the newest active version)."""
        def query(cur: psycopg.Cursor[dict[str, Any]]) -> list[dict[str, Any]]:
            cur.execute(
                "SELECT model_name, provider, version, is_active, config_data, "
                "(performance_stats->>'chars_per_token_prompt')::float8 AS chars_per_token FROM procos_ai_models "
                "WHERE provider = %s ORDER BY created_at DESC, version DESC NULLS LAST",
                (self._provider,),
            )
            return cur.fetchall()

        return [ModelRow(name=str(row["model_name"]), provider=str(row["provider"]), version=row["version"],
                         active=row["is_active"] is not False, config_data=row["config_data"] or {},
                         chars_per_token=row["chars_per_token"])
                for row in self._store.run(query)]

    def refresh_stats(self, *, window_s: float, min_age_s: float, unanswered_after_s: float,
                      worker_id: str) -> int | None:
        """Recompute performance_stats; the number of rows updated, or None if another worker is
        refreshing or did so less than ``min_age_s`` ago."""
        params = {"provider": self._provider, "window_s": float(window_s),
                  "unanswered_after_s": float(unanswered_after_s), "worker_id": worker_id}

        def refresh(cur: psycopg.Cursor[dict[str, Any]]) -> int | None:
            with cur.connection.transaction():
                cur.execute("SELECT pg_try_advisory_xact_lock(%s) AS locked", (STATS_LOCK_KEY,))
                if not _first(cur)["locked"]:
                    return None
                cur.execute(
                    "SELECT coalesce(max((performance_stats->>'refreshed_at')::timestamptz)"
                    "       > now() - make_interval(secs => %s), false) AS recent "
                    "FROM procos_ai_models WHERE provider = %s",
                    (float(min_age_s), self._provider),
                )
                if _first(cur)["recent"]:
                    return None
                cur.execute(_STATS, params)
                return cur.rowcount

        return self._store.run(refresh)


def _first(cur: psycopg.Cursor[dict[str, Any]]) -> dict[str, Any]:
    row = cur.fetchone()
    assert row is not None
    return row

