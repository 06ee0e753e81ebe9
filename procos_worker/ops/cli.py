"""The ``procos-worker`` command: run, init-db, check, health, context, purge."""

from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path

import structlog
from pydantic import ValidationError
from pydantic_settings import SettingsError

from procos_worker.errors import ProcosError, TaskConfigError
from procos_worker.health import check_records
from procos_worker.ops import context_cli, purge_cli
from procos_worker.ops.logs import configure_logging
from procos_worker.settings import Settings, settings_error_text
from procos_worker.store.context import ContextStore

__all__ = ["main"]

_HEALTH_TIMEOUT_S = 10.0
EXIT_CONFIG, EXIT_POSTGRES = 2, 4  # as `check` (ops.check_cli) numbers them


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="procos-worker", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("run", help="serve external tasks until SIGTERM/SIGINT")
    init = sub.add_parser("init-db", help="create the ProcOS schema in DATABASE_URL, or apply the migrations it "
                                          "lacks (idempotent)")
    init.add_argument("--file", type=Path, help="build a fresh database from this SQL file instead of the bundled "
                                                "init-db.sql")
    sub.add_parser("check", help="reach Camunda, PostgreSQL and Ollama; check the schema, the model registry and "
                                 "that the model is present")
    health = sub.add_parser("health", help="exit 0 while the running worker is live: asks its /healthz "
                                           "(the health file when OPS_HTTP_PORT is 0)")
    health.add_argument("--ready", action="store_true", help="ask /readyz instead: dependencies up, schema current, "
                                                             "model present")
    context_cli.add_parser(sub)
    purge_cli.add_parser(sub)
    args = parser.parse_args(argv)

    try:
        settings = Settings()
    except (ValidationError, SettingsError) as exc:
        print(f"procos-worker: invalid settings:\n{settings_error_text(exc)}", file=sys.stderr)
        return EXIT_CONFIG
    configure_logging(settings)

    commands: dict[str, Callable[[Settings, argparse.Namespace], int]] = {
        "run": lambda s, _a: _run(s),
        "init-db": lambda s, a: _init_db(s, a.file),
        "check": lambda s, _a: _check(s),
        "health": lambda s, a: _health(s, a.ready),
        "context": context_cli.run,
        "purge": purge_cli.run,
    }
    return commands[args.command](settings, args)


def _run(settings: Settings) -> int:
    # Imported here: the worker's dependencies (ollama, the engine client...) cost every other command
    # about half a second of start-up.
    from procos_worker.ops import daemon  # noqa: PLC0415

    try:
        return daemon.run(settings)
    except TaskConfigError as exc:  # TASK_TOPIC_DEFAULTS names an unknown property or a bad value
        print(f"procos-worker: invalid settings: {exc}", file=sys.stderr)
        return EXIT_CONFIG


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
        from procos_worker.ops.daemon import tune_camunda  # noqa: PLC0415 - loads the whole worker

        return 0 if tune_camunda(store) else EXIT_POSTGRES


def _check(settings: Settings) -> int:
    from procos_worker.ops.check_cli import check  # noqa: PLC0415 - see _run

    return check(settings)


def _health(settings: Settings, ready: bool) -> int:
    """Ask the running worker's /healthz (or /readyz); when the HTTP port is off, read the health record of
    every live worker process (healthy when each is fresh, running and making progress, and there is one)."""
    if settings.ops.http_port:
        return _health_http(settings, "/readyz" if ready else "/healthz")
    if ready:
        print("procos-worker health --ready needs the HTTP port (OPS_HTTP_PORT is 0)", file=sys.stderr)
        return EXIT_CONFIG
    now = time.time()
    records, problems = check_records(settings.worker.health_file, now=now,
                                      max_age_s=settings.worker.health_max_age_s,
                                      liveness_max_s=settings.ops.liveness_max_s)
    if problems:
        for problem in problems:
            print(f"unhealthy: {problem}", file=sys.stderr)
        return 1
    for record in records:
        down = record.down
        print(f"healthy: worker {record.worker_id} pid {record.pid} in_flight={record.in_flight} "
              f"age={now - record.ts:.1f}s" + (f" waiting for {', '.join(down)}" if down else ""))
    return 0


def _health_http(settings: Settings, path: str) -> int:
    host = settings.ops.http_host
    # A worker listening on every interface is asked on the loopback one.
    host = "127.0.0.1" if host in ("0.0.0.0", "", "::") else host
    url = f"http://{host}:{settings.ops.http_port}{path}"
    try:
        with urllib.request.urlopen(url, timeout=_HEALTH_TIMEOUT_S) as response:
            status, body = response.status, response.read()
    except urllib.error.HTTPError as exc:
        status, body = exc.code, exc.read()
    except OSError as exc:
        print(f"unhealthy: no worker answers on {url} ({exc})", file=sys.stderr)
        return 1
    try:
        answer = json.loads(body)
    except ValueError:
        answer = {"status": body[:200].decode("utf-8", "replace")}
    summary = " ".join(f"{k}={answer[k]}" for k in ("status", "state", "worker_id", "in_flight", "problem")
                       if k in answer)
    if "checks" in answer:
        summary += " " + " ".join(f"{name}={'ok' if c.get('ok') else 'FAILED: ' + str(c.get('detail'))}"
                                  for name, c in answer["checks"].items())
    print(summary, file=sys.stdout if status == 200 else sys.stderr)
    return 0 if status == 200 else 1
