"""``python -m procos_bench.scaling``: procos_ai_context at scale, measured (docs/scaling.md).

1. **A million rows.** A scratch database filled with ``--rows`` rows (default 1,000,000): one input
   and one output row per task, one to three tasks per process instance, created over the last 180
   days, texts drawn from a Zipf-distributed vocabulary (so the trigram index sees realistic text).
2. Each repeated and given as median and slowest: ``context show`` (the query, and the whole CLI
   process), ``context search`` for a rare, a medium and a common word, a conversation fetch,
   ``context stats``.
3. **Row cost.** What one more row costs in that table: typical rows written through the worker's
   own store, and one 64 MiB answer: bytes in the table, its TOAST and each index, time to write;
   then the searches again, with that huge answer in the table.
4. Purge batches (scan, the engine's answer for the batch's instances, delete) against the real
   engine, and with ``--full-purge`` every row older than 90 days.

Writes a JSON report (``--out``) and prints it. The scratch databases are dropped at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import string
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
from pydantic import SecretStr

from procos_testkit.pg import scratch_database
from procos_worker.engine.client import EngineClient
from procos_worker.models import LlmResult, Task, TaskInputs
from procos_worker.retention import purge
from procos_worker.settings import CamundaSettings, DatabaseSettings
from procos_worker.store import migrations
from procos_worker.store.context import ContextStore
from procos_worker.store.retention import RetentionStore

__all__ = ["main"]

_VOCABULARY = 8000
_RARE = "zyxquorbal"      # in about 1 row in 10,000
_MEDIUM = "lanternfish"   # in about 1 row in 100
_MODEL = "smollm2:135m"
_KEEP_INDEXES = ("procos_ai_context_pkey", "uq_procos_ai_context_task_type")


def _log(message: str) -> None:
    print(f"scaling: {message}", file=sys.stderr, flush=True)


def _timed(fn: Callable[[], Any], reps: int) -> dict[str, float]:
    """Median and slowest wall time in ms of ``reps`` calls (after one warm-up call)."""
    fn()
    times = []
    for _ in range(reps):
        started = time.perf_counter()
        fn()
        times.append((time.perf_counter() - started) * 1000)
    return {"median_ms": round(statistics.median(times), 2), "max_ms": round(max(times), 2), "reps": reps}


# -- 1. the cost of one row ------------------------------------------------------------------------


def _sizes(conn: psycopg.Connection[Any]) -> dict[str, int]:
    rows = conn.execute("""
        SELECT 'heap', pg_relation_size('procos_ai_context')
        UNION ALL SELECT 'toast', coalesce(pg_total_relation_size(reltoastrelid), 0)
                  FROM pg_class WHERE oid = 'procos_ai_context'::regclass
        UNION ALL SELECT indexrelid::regclass::text, pg_relation_size(indexrelid)
                  FROM pg_index WHERE indrelid = 'procos_ai_context'::regclass""").fetchall()
    return {str(name): int(size) for name, size in rows}


def _delta(before: dict[str, int], after: dict[str, int], per: int) -> dict[str, float]:
    return {name: round((after[name] - before.get(name, 0)) / per, 1) for name in after}


def _user(prompt: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": prompt}]


def _result(content: str) -> LlmResult:
    return LlmResult(content=content, model=_MODEL, done_reason="stop", prompt_eval_count=60,
                     eval_count=180, total_duration_ns=2_000_000_000, load_duration_ns=1, prompt_eval_duration_ns=1,
                     eval_duration_ns=1, wall_s=2.0)


def _flushed_sizes(conn: psycopg.Connection[Any]) -> dict[str, int]:
    """Sizes after moving GIN's pending lists (fast update) into the indexes proper, as autovacuum would."""
    gin = conn.execute("""SELECT c.oid::regclass::text FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
                          JOIN pg_am a ON a.oid = c.relam
                          WHERE i.indrelid = 'procos_ai_context'::regclass AND a.amname = 'gin'""").fetchall()
    for (index,) in gin:
        conn.execute("SELECT gin_clean_pending_list(%s::regclass)", (index,))
    return _sizes(conn)


def row_cost(url: str, small_rows: int, big_bytes: int) -> dict[str, Any]:
    """What one more row costs in a filled table (``url``): bytes in the table, its TOAST and each index
    (GIN pending lists flushed), and the time to write, for typical rows written through the worker's
    own store and for one huge answer."""
    rng = random.Random(1)
    words = _words(rng)
    with psycopg.connect(url, autocommit=True) as conn, ContextStore(DatabaseSettings(url=SecretStr(url))) as store:
        before = _flushed_sizes(conn)
        started = time.perf_counter()
        for _ in range(small_rows // 2):
            task = Task(id=str(uuid.uuid4()), topic="ai-query", worker_id="bench",
                        process_instance_id=str(uuid.uuid4()), activity_id="ask-ai")
            prompt = _text(rng, words, 30)
            input_id, _ = store.save_input(task, TaskInputs(query=prompt), _user(prompt), model=_MODEL, options={})
            store.save_output(task, _result(_text(rng, words, 110)), input_id, prompt_chars=len(prompt))
        small_s = time.perf_counter() - started
        after = _flushed_sizes(conn)
        small = {"rows": small_rows, "bytes_per_row": _delta(before, after, small_rows),
                 "total_bytes_per_row": round((sum(after.values()) - sum(before.values())) / small_rows, 1),
                 "write_ms_per_task": round(small_s * 1000 / (small_rows // 2), 2)}
        # Letters, spaces and newlines: text-like, and as hard on TOAST's compression as prose would be.
        answer = "".join(rng.choices(string.ascii_letters + "     \n", k=big_bytes))
        task = Task(id=str(uuid.uuid4()), topic="ai-query", worker_id="bench", process_instance_id=str(uuid.uuid4()))
        input_id, _ = store.save_input(task, TaskInputs(query="q"), _user("q"), model=_MODEL, options={})
        before = _flushed_sizes(conn)
        started = time.perf_counter()
        store.save_output(task, _result(answer), input_id)
        big_s = time.perf_counter() - started
        after = _flushed_sizes(conn)
    big = {"answer_bytes": big_bytes, "bytes": _delta(before, after, 1),
           "total_bytes": sum(after.values()) - sum(before.values()), "write_s": round(big_s, 2)}
    return {"small": small, "big": big}


# -- 2. a million rows ------------------------------------------------------------------------------


def _words(rng: random.Random) -> list[str]:
    return ["".join(rng.choices(string.ascii_lowercase, k=rng.randint(2, 10))) for _ in range(_VOCABULARY)]


def _text(rng: random.Random, words: list[str], mean_words: int, extra: Sequence[str] = ()) -> str:
    # Zipf-like: word i with weight 1/(i+1), drawn through a precomputed cumulative table.
    chosen = rng.choices(words, cum_weights=_cumulative(len(words)), k=max(3, int(rng.gauss(mean_words, 10))))
    for word in extra:
        chosen.insert(rng.randrange(len(chosen) + 1), word)
    return " ".join(chosen).capitalize() + "."


_CUMULATIVE: dict[int, list[float]] = {}


def _cumulative(n: int) -> list[float]:
    if n not in _CUMULATIVE:
        total, table = 0.0, []
        for i in range(n):
            total += 1.0 / (i + 1)
            table.append(total)
        _CUMULATIVE[n] = table
    return _CUMULATIVE[n]


def _generate(rows: int, seed: int) -> Iterator[tuple[Any, ...]]:
    """Rows of procos_ai_context as COPY tuples, shaped as the worker writes them: one input and one
    output row per task, 1-3 tasks per instance."""
    rng = random.Random(seed)
    words = _words(rng)
    now = datetime.now(UTC)
    written = 0
    while written < rows:
        pi = str(uuid.uuid4())
        at = now - timedelta(seconds=rng.uniform(60, 180 * 86400))
        for _task in range(rng.randint(1, 3)):
            if written >= rows:
                return
            task_id, activity = str(uuid.uuid4()), rng.choice(("ask-ai", "classify", "summarise"))
            model = "smollm2:135m" if rng.random() < 0.9 else "llama3.2:1b"
            extra = [w for w, p in ((_RARE, 0.0001), (_MEDIUM, 0.01)) if rng.random() < p]
            prompt = _text(rng, words, 30, extra)
            answer = _text(rng, words, 110)
            input_id, wall = str(uuid.uuid4()), rng.lognormvariate(0.5, 0.6)
            step = (pi, task_id, activity, "ai-query", f"{activity}:{uuid.uuid4()}")
            data_in: dict[str, Any] = {
                "query": prompt, "context": None, "system_prompt": None,
                "messages": [{"role": "user", "content": prompt}], "model": model, "options": {},
                "topic": "ai-query", "worker_id": "bench", "prompt_length": len(prompt), "prompt_chars": len(prompt)}
            yield (input_id, *step, "input", json.dumps(data_in), prompt, "ollama", model, None, at, at)
            at += timedelta(seconds=wall)
            prompt_tokens, completion_tokens = len(prompt) // 4, len(answer) // 4
            data_out = {"content": answer, "model": model, "done_reason": "stop", "response_length": len(answer),
                        "total_duration": int(wall * 1e9), "wall_s": round(wall, 6), "input_context_id": input_id,
                        "topic": "ai-query", "worker_id": "bench"}
            usage = {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                     "total_tokens": prompt_tokens + completion_tokens, "prompt_eval_count": prompt_tokens,
                     "eval_count": completion_tokens, "wall_s": round(wall, 6),
                     "eval_duration_ns": int(wall * 0.9e9), "response_chars": len(answer),
                     "prompt_chars": len(prompt)}
            yield (str(uuid.uuid4()), *step, "output", json.dumps(data_out), answer, "ollama", model,
                   json.dumps(usage), at, at)
            written += 2
            at += timedelta(seconds=rng.uniform(1, 300))


def _fill(url: str, rows: int) -> dict[str, Any]:
    """Load ``rows`` rows with COPY (secondary indexes dropped, then rebuilt and timed)."""
    with psycopg.connect(url, autocommit=True) as conn:
        migrations.upgrade(conn)
        indexes = [(str(n), str(d)) for n, d in conn.execute(
            "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'procos_ai_context'").fetchall()
            if n not in _KEEP_INDEXES]
        for name, _definition in indexes:
            conn.execute(f'DROP INDEX "{name}"')
        started = time.perf_counter()
        columns = ("id, process_instance_id, task_id, activity_id, process_definition_key, activity_instance_id, "
                   "context_type, content_data, content_text, ai_provider, model_used, token_usage, created_at, "
                   "updated_at")
        with conn.cursor() as cur, cur.copy(f"COPY procos_ai_context ({columns}) FROM STDIN") as copy:
            for n, row in enumerate(_generate(rows, seed=42), start=1):
                copy.write_row(row)
                if n % 100_000 == 0:
                    _log(f"copied {n} rows")
        load_s = time.perf_counter() - started
        builds = {}
        for name, definition in indexes:
            started = time.perf_counter()
            conn.execute(definition.encode())
            builds[name] = round(time.perf_counter() - started, 1)
            _log(f"built {name} in {builds[name]} s")
        conn.execute("VACUUM ANALYZE procos_ai_context")
        sizes = _sizes(conn)
    return {"rows": rows, "copy_s": round(load_s, 1), "index_build_s": builds, "sizes_bytes": sizes,
            "bytes_per_row": {k: round(v / rows, 1) for k, v in sizes.items()}}


def _sampled(conn: psycopg.Connection[Any], column: str, where: str = "TRUE") -> list[str]:
    """Up to 200 values of ``column`` from 1 % of the table's pages; a small table's 1 % can be no
    page at all, so it falls back to the first rows."""
    for source in ("procos_ai_context TABLESAMPLE SYSTEM (1)", "procos_ai_context"):
        values = [str(r[0]) for r in conn.execute(f"SELECT {column} FROM {source} WHERE {where} LIMIT 200")]
        if values:
            return values
    raise RuntimeError("procos_ai_context is empty: nothing to sample")


def _samples(url: str) -> dict[str, Any]:
    with psycopg.connect(url, autocommit=True) as conn:
        outputs = _sampled(conn, "id", "context_type = 'output'")
        pis = _sampled(conn, "process_instance_id")
        common = conn.execute("""SELECT w FROM (SELECT split_part(content_text, ' ', 3) AS w FROM procos_ai_context
                                 TABLESAMPLE SYSTEM (1) WHERE context_type = 'output') s
                                 WHERE length(w) >= 4 GROUP BY w ORDER BY count(*) DESC LIMIT 1""").fetchone()
        counts = {word: int(conn.execute("SELECT count(*) FROM procos_ai_context WHERE content_text ILIKE %s",
                                          (f"%{word}%",)).fetchone()[0])  # type: ignore[index]
                  for word in (_RARE, _MEDIUM, str(common[0]) if common else "the")}
    return {"outputs": outputs, "instances": pis, "search_words": counts}


def searches(url: str, words: dict[str, int], reps: int) -> dict[str, Any]:
    """``context search`` timed again (e.g. once a huge answer is in the table)."""
    with ContextStore(DatabaseSettings(url=SecretStr(url))) as store:
        return {f"search_query[{word}]": _timed(_searching(store, word), reps) for word in words}


def _searching(store: ContextStore, word: str) -> Callable[[], Any]:
    return lambda: store.search(word, limit=20)


def queries(url: str, reps: int, cwd: Path) -> dict[str, Any]:
    """The read side at scale: the store's own queries, and the CLI as an operator runs it."""
    sample = _samples(url)
    rng = random.Random(7)
    results: dict[str, Any] = {"search_matches": sample["search_words"]}
    with ContextStore(DatabaseSettings(url=SecretStr(url))) as store:
        results["show_query"] = _timed(lambda: store.get(rng.choice(sample["outputs"])), reps)
        results["input_query"] = _timed(lambda: store.get_input_for(rng.choice(sample["outputs"])), reps)
        results["conversation_query"] = _timed(lambda: store.conversation(rng.choice(sample["instances"])), reps)
        for word in sample["search_words"]:
            results[f"search_query[{word}]"] = _timed(_searching(store, word), reps)
        results["stats_query[all]"] = _timed(store.stats, max(1, reps // 3))
        week = datetime.now(UTC) - timedelta(days=7)
        results["stats_query[7d]"] = _timed(lambda: store.stats(since=week), reps)
    env = {"DATABASE_URL": url, "LOG_FORMAT": "json", "PATH": "/usr/bin:/bin"}

    def cli(*args: str) -> None:
        done = subprocess.run([sys.executable, "-m", "procos_worker", "context", *args], env=env, cwd=cwd,
                              capture_output=True, check=False)
        assert done.returncode in (0, 1), done.stderr[-500:]

    results["show_cli"] = _timed(lambda: cli("show", rng.choice(sample["outputs"])), max(3, reps // 2))
    results["search_cli[rare]"] = _timed(lambda: cli("search", _RARE), max(3, reps // 2))
    results["conversation_cli"] = _timed(lambda: cli("conversation", rng.choice(sample["instances"])),
                                         max(3, reps // 2))
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import procos_worker.ops.cli"], env=env, cwd=cwd, check=True)
    results["cli_import_ms"] = round((time.perf_counter() - started) * 1000, 1)
    return results


def purge_batches(url: str, camunda_url: str, batch_size: int, batches: int) -> dict[str, Any]:
    """Purge batches of ``batch_size`` rows (older than 90 days) against the real engine, timed each."""
    engine = EngineClient(CamundaSettings(base_url=camunda_url), "procos-bench-purge", async_response_timeout_ms=0,
                          pool_size=1)
    times: list[float] = []
    reports = []
    with RetentionStore(DatabaseSettings(url=SecretStr(url))) as store:
        for _ in range(batches):
            started = time.perf_counter()
            # One batch: limit the scan to batch_size rows by purging with a moving "now".
            report = _one_batch(store, engine, batch_size)
            times.append((time.perf_counter() - started) * 1000)
            reports.append(report)
    engine.close()
    rows = [r["rows_purged"] for r in reports]
    return {"batch_size": batch_size, "batches": batches, "median_ms": round(statistics.median(times), 1),
            "max_ms": round(max(times), 1), "rows_per_batch_median": statistics.median(rows),
            "rows_per_s": round(sum(rows) / (sum(times) / 1000), 1)}


def _one_batch(store: RetentionStore, engine: EngineClient, batch_size: int) -> dict[str, Any]:
    """The steps of one purge batch, as ``retention.purge`` runs them, on the oldest rows."""
    before = datetime.now(UTC) - timedelta(days=90)
    rows = store.scan(before, None, batch_size)
    pis = {r.process_instance_id for r in rows}
    recent = store.with_rows_since(pis, before)
    running = engine.running_instance_ids(pis - recent)
    doomed = pis - recent - running
    deleted = 0
    while True:
        count = store.delete(doomed, before, limit=batch_size)
        deleted += count
        if count < batch_size:
            break
    return {"rows_scanned": len(rows), "rows_purged": deleted}


def full_purge(url: str, camunda_url: str, batch_size: int) -> dict[str, Any]:
    engine = EngineClient(CamundaSettings(base_url=camunda_url), "procos-bench-purge", async_response_timeout_ms=0,
                          pool_size=1)
    with RetentionStore(DatabaseSettings(url=SecretStr(url))) as store:
        report = purge(store, engine, mode="older-than", older_than=timedelta(days=90), batch_size=batch_size)
    engine.close()
    return report.as_dict()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m procos_bench.scaling", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--reps", type=int, default=15)
    parser.add_argument("--small-rows", type=int, default=2000)
    parser.add_argument("--big-bytes", type=int, default=64 * 1024 * 1024)
    parser.add_argument("--purge-batches", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--full-purge", action="store_true", help="then purge every row older than 90 days")
    parser.add_argument("--database-url", default="postgresql://procos:procos123@127.0.0.1:5432/procos")
    parser.add_argument("--camunda-url", default="http://127.0.0.1:8080/engine-rest")
    parser.add_argument("--out", type=Path, help="write the JSON report here too")
    args = parser.parse_args(argv)

    started = time.monotonic()
    report: dict[str, Any] = {"date": datetime.now(UTC).isoformat(timespec="seconds"), "args": vars(args) | {
        "out": str(args.out) if args.out else None}, "cpus": os.cpu_count(), "load_average_start": os.getloadavg()}
    with scratch_database(args.database_url, prefix="procos_bench_scale") as url:
        _log(f"filling {args.rows} rows")
        report["fill"] = _fill(url, args.rows)
        _log("queries")
        report["load_average_before_queries"] = os.getloadavg()
        report["queries"] = queries(url, args.reps, Path.cwd())
        _log("row cost")
        report["row_cost"] = row_cost(url, args.small_rows, args.big_bytes)
        _log("search with the huge answer in the table")
        report["search_with_huge_row"] = searches(url, report["queries"]["search_matches"], args.reps)
        _log("purge batches")
        report["purge_batches"] = purge_batches(url, args.camunda_url, args.batch_size, args.purge_batches)
        if args.full_purge:
            _log("full purge")
            report["full_purge"] = full_purge(url, args.camunda_url, args.batch_size)
    report["wall_s"] = round(time.monotonic() - started, 1)
    # Other users of the machine: the timings above are only as quiet as this.
    report["load_average_end"] = os.getloadavg()
    text = json.dumps(report, indent=2, default=str)
    if args.out:
        args.out.write_text(text + "\n", encoding="utf-8")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
