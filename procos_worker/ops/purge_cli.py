"""``procos-worker purge``: retention by hand (the scheduled form is ``RETENTION_*`` in a worker).

``--older-than 90d`` deletes the rows of every process instance whose newest row is older than 90
days and that the engine no longer runs; ``--history-removed`` those whose process-instance history
Camunda's history cleanup has removed (with ``--older-than``, only rows older than that).
``--dry-run`` counts without deleting. Exit 0 done, 1 another purge holds the lock or the purge
stopped early, 3 Camunda unreachable, 4 PostgreSQL unreachable.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING, Any, TextIO

import structlog

from procos_worker.errors import EngineError, PurgeStopped, StoreUnavailable
from procos_worker.ops.context_cli import age
from procos_worker.settings import Settings

if TYPE_CHECKING:
    from procos_worker.retention import PurgeMode, PurgeReport

__all__ = ["add_parser", "run"]

EXIT_STOPPED, EXIT_USAGE, EXIT_CAMUNDA, EXIT_POSTGRES = 1, 2, 3, 4


def add_parser(sub: Any) -> None:
    parser = sub.add_parser("purge", help="delete stored prompts and answers of finished process instances")
    parser.add_argument("--older-than", type=age, help="instances whose newest row is older than this, e.g. 90d")
    parser.add_argument("--history-removed", action="store_true",
                        help="instances whose process-instance history Camunda's history cleanup removed")
    parser.add_argument("--dry-run", action="store_true", help="count what would go, delete nothing")
    parser.add_argument("--batch-size", type=int, help="rows read per batch (default RETENTION_BATCH_SIZE)")
    parser.add_argument("--json", action="store_true", help="print the report as one JSON object")


def _usage_error(args: argparse.Namespace) -> str | None:
    if args.older_than is None and not args.history_removed:
        return "give --older-than AGE, --history-removed, or both"
    if args.batch_size is not None and args.batch_size < 1:
        return "--batch-size must be at least 1"
    return None


def run(settings: Settings, args: argparse.Namespace, out: TextIO | None = None) -> int:
    stream = out if out is not None else sys.stdout
    problem = _usage_error(args)
    if problem is not None:
        print(f"procos-worker purge: {problem}", file=sys.stderr)
        return EXIT_USAGE
    # Imported here: the engine client and retention cost the other commands start-up time.
    from procos_worker.engine.client import EngineClient  # noqa: PLC0415
    from procos_worker.retention import purge  # noqa: PLC0415
    from procos_worker.store.retention import RetentionStore  # noqa: PLC0415

    batch_size = args.batch_size or settings.retention.batch_size
    mode: PurgeMode = "history-removed" if args.history_removed else "older-than"
    log = structlog.get_logger("procos_worker.ops.purge")
    w = settings.worker
    engine = EngineClient(settings.camunda, w.id, async_response_timeout_ms=0, pool_size=1)
    try:
        with RetentionStore(settings.database) as store:
            if not args.dry_run and not store.try_lock():
                print("procos-worker purge: another purge is running (advisory lock held); nothing done",
                      file=sys.stderr)
                return EXIT_STOPPED
            report = purge(store, engine, mode=mode, older_than=args.older_than, batch_size=batch_size,
                           dry_run=args.dry_run)
    except EngineError as exc:
        print(f"procos-worker purge: stopped, Camunda: {exc.message}", file=sys.stderr)
        return EXIT_CAMUNDA
    except StoreUnavailable as exc:
        print(f"procos-worker purge: stopped, {exc.message}", file=sys.stderr)
        return EXIT_POSTGRES
    except PurgeStopped as exc:
        print(f"procos-worker purge: stopped: {exc.message}", file=sys.stderr)
        return EXIT_STOPPED
    finally:
        engine.close()
    log.info("retention.purged", **report.as_dict())
    _print(stream, report, as_json=args.json)
    return 0


def _print(out: TextIO, report: PurgeReport, *, as_json: bool) -> None:
    if as_json:
        out.write(json.dumps(report.as_dict()) + "\n")
        return
    verb = "would delete" if report.dry_run else "deleted"
    out.write(f"{report.mode} purge of rows before {report.before:%Y-%m-%d %H:%M:%S%z}: {verb} "
              f"{report.rows_purged} rows of {report.instances_purged} process instances "
              f"({report.rows_scanned} rows read in {report.batches} batches, {report.elapsed_s:.1f} s)\n")
    out.write(f"kept: {report.instances_running} instances still running, {report.instances_recent} with newer "
              f"rows, {report.instances_in_history} still in Camunda's history\n")
