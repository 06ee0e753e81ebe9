"""The ``procos-worker`` command: run, init-db, check, health, context, purge."""

from __future__ import annotations

import argparse
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import structlog
from pydantic import ValidationError
from pydantic_settings import SettingsError

from procos_worker.ai.llm import LlmClient
from procos_worker.engine.client import EngineClient
from procos_worker.errors import EngineError, ProcosError
from procos_worker.health import HealthRecord
from procos_worker.ops import context_cli, purge_cli
from procos_worker.ops.logs import configure_logging
from procos_worker.retention import PurgeSchedule
from procos_worker.settings import Settings
from procos_worker.store.context import ContextStore
from procos_worker.worker import Worker

__all__ = ["main"]

# `check` exit codes: which dependency failed.
EXIT_CONFIG, EXIT_CAMUNDA, EXIT_POSTGRES, EXIT_OLLAMA, EXIT_MODEL, EXIT_SCHEMA = 2, 3, 4, 5, 6, 7


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="procos-worker", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("run", help="serve external tasks until SIGTERM/SIGINT")
    init = sub.add_parser("init-db", help="create the ProcOS schema in DATABASE_URL, or apply the migrations it "
                                          "lacks (idempotent)")
    init.add_argument("--file", type=Path, help="build a fresh database from this SQL file instead of the bundled "
                                                "init-db.sql")
    sub.add_parser("check", help="reach Camunda, PostgreSQL and Ollama; check the model is present")
    sub.add_parser("health", help="exit 0 if a running worker refreshed its health file recently")
    context_cli.add_parser(sub)
    purge_cli.add_parser(sub)
    args = parser.parse_args(argv)

    try:
        settings = Settings()
    except (ValidationError, SettingsError) as exc:
        print(f"procos-worker: invalid settings:\n{exc}", file=sys.stderr)
        return EXIT_CONFIG
    configure_logging(settings)

    commands: dict[str, Callable[[Settings, argparse.Namespace], int]] = {
        "run": lambda s, _a: _run(s),
        "init-db": lambda s, a: _init_db(s, a.file),
        "check": lambda s, _a: _check(s),
        "health": lambda s, _a: _health(s),
        "context": context_cli.run,
        "purge": purge_cli.run,
    }
    return commands[args.command](settings, args)


def _run(settings: Settings) -> int:
    """The daemon: the worker; Camunda's indexes checked (and built if missing) in the background; the
    scheduled purge when RETENTION_* asks for one."""
    threading.Thread(target=_tune_in_background, args=(settings,), name="procos-tune", daemon=True).start()
    schedule = PurgeSchedule(settings)
    schedule.start()
    try:
        return Worker(settings).run()
    finally:
        schedule.stop()


def _init_db(settings: Settings, path: Path | None) -> int:
    log = structlog.get_logger("procos_worker.ops.cli")
    sql = path.read_text(encoding="utf-8") if path is not None else None
    with ContextStore(settings.database) as store:
        try:
            steps = store.upgrade_schema(init_sql=sql)
            status = store.schema_status()
        except ProcosError as exc:
            log.error("db.init_failed", error=str(exc))
            return EXIT_POSTGRES
        log.info("db.initialised", steps=steps or ["nothing to do"], schema=status.describe())
        return 0 if _tune_camunda(store) else EXIT_POSTGRES


def _tune_in_background(settings: Settings) -> None:
    with ContextStore(settings.database) as store:
        _tune_camunda(store)


def _tune_camunda(store: ContextStore) -> bool:
    """Camunda's indexes (migration 0040), built concurrently; False when PostgreSQL refused."""
    log = structlog.get_logger("procos_worker.ops.cli")
    try:
        steps = store.tune_camunda()
    except ProcosError as exc:
        log.error("camunda.tuning_failed", error=str(exc))
        return False
    log.info("camunda.tuned", steps=steps)
    return True


def _check(settings: Settings) -> int:
    """One line per dependency; the exit code names the first that failed."""
    results: list[tuple[str, int, str]] = []
    engine = EngineClient(settings.camunda, settings.worker.id, lock_duration_ms=settings.worker.lock_duration_ms,
                          async_response_timeout_ms=0)
    try:
        results.append(("camunda", 0, f"ok: engines {engine.engine_name()} at {settings.camunda.base_url}"))
    except EngineError as exc:
        results.append(("camunda", EXIT_CAMUNDA, f"FAILED: {exc}"))
    finally:
        engine.close()

    with ContextStore(settings.database) as store:
        try:
            status = store.schema_status()
            code = 0 if status.current else EXIT_SCHEMA
            results.append(("postgresql", code, ("ok: " if code == 0 else "FAILED: ") + status.describe()))
        except ProcosError as exc:
            results.append(("postgresql", EXIT_POSTGRES, f"FAILED: {exc}"))

    llm = LlmClient(settings.ollama)
    try:
        models = llm.ping()
        if settings.ollama.model in models or f"{settings.ollama.model}:latest" in models:
            results.append(("ollama", 0, f"ok: model {settings.ollama.model} present"))
        else:
            results.append(("ollama", EXIT_MODEL,
                            f"FAILED: model {settings.ollama.model} not on {settings.ollama.base_url} "
                            f"(has: {', '.join(models) or 'none'})"))
    except ProcosError as exc:
        results.append(("ollama", EXIT_OLLAMA, f"FAILED: {exc}"))

    for name, _code, message in results:
        print(f"{name:<11} {message}")
    return next((code for _name, code, _msg in results if code), 0)


def _health(settings: Settings) -> int:
    path = settings.worker.health_file
    try:
        record = HealthRecord.read(path)
    except (OSError, ValueError) as exc:
        print(f"unhealthy: no readable health file at {path} ({exc})", file=sys.stderr)
        return 1
    problem = record.problem(now=time.time(), max_age_s=settings.worker.health_max_age_s)
    if problem is not None:
        print(f"unhealthy: {problem}", file=sys.stderr)
        return 1
    down = record.down
    print(f"healthy: worker {record.worker_id} in_flight={record.in_flight} "
          f"age={time.time() - record.ts:.1f}s" + (f" waiting for {', '.join(down)}" if down else ""))
    return 0
