"""``procos-worker context ...``: read what the worker stored, from a terminal or a pipe.

``show ID`` writes the stored answer exactly as the model gave it (the decoded text, byte for byte in
UTF-8; a newline is added only on a terminal), ``input ID`` the prompt that was sent, ``conversation
PROCESS_INSTANCE_ID`` every row of an instance, ``search TEXT`` rows containing a string, ``stats``
calls, tokens and latency per model and per BPMN step. ``--json`` prints one JSON document instead.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable
from dataclasses import asdict, is_dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, TextIO
from uuid import UUID

from procos_worker.errors import ProcosError
from procos_worker.models import StoredContext
from procos_worker.settings import Settings, parse_age
from procos_worker.store.context import ContextStore
from procos_worker.store.queries import SearchHit, Stats

__all__ = ["add_parser", "age", "run"]

EXIT_NOT_FOUND, EXIT_USAGE, EXIT_POSTGRES = 1, 2, 4


def age(text: str) -> timedelta:
    """``90d``, ``12h``, ``30m``, ``45s``, ``2w`` -> a timedelta (an argparse type)."""
    try:
        return parse_age(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def _uuid(text: str) -> UUID:
    try:
        return UUID(text.strip())
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r} is not an ai_context_id (a UUID)") from exc


def add_parser(sub: Any) -> None:
    """Add ``context`` and its commands to the ``procos-worker`` parser."""
    context = sub.add_parser("context", help="read stored prompts and answers (procos_ai_context)")
    commands = context.add_subparsers(dest="context_command", required=True)
    show = commands.add_parser("show", help="print a stored answer exactly (--json: the whole row)")
    show.add_argument("id", type=_uuid, help="ai_context_id (or any row id)")
    inp = commands.add_parser("input", help="print the prompt of the task that wrote row ID (--json: the row)")
    inp.add_argument("id", type=_uuid, help="ai_context_id of the answer (or the input row's id)")
    conv = commands.add_parser("conversation", help="every stored row of a process instance, in order; or with "
                                                    "--memory-key the turns kept under a memory key")
    conv.add_argument("process_instance_id", nargs="?")
    conv.add_argument("--memory-key", help="NAME=value of procos.memory=variable:NAME: its turns (question and "
                                           "answer), oldest first, across process instances")
    search = commands.add_parser("search", help="rows whose text contains TEXT (trigram index), newest first")
    search.add_argument("text")
    search.add_argument("--limit", type=int, default=20, help="most rows to print (default 20)")
    search.add_argument("--type", choices=["input", "output"], dest="context_type", help="only this row type")
    stats = commands.add_parser("stats", help="calls, tokens and latency percentiles per model and per activity")
    stats.add_argument("--since", type=age, help="only rows younger than this age, e.g. 7d")
    for command in (show, inp, conv, search, stats):
        command.add_argument("--json", action="store_true", help="one JSON document on stdout")


def run(settings: Settings, args: argparse.Namespace, out: TextIO | None = None) -> int:
    """Run one ``context`` command; returns the exit status (1 not found, 4 database unreachable)."""
    stream = out if out is not None else sys.stdout
    if args.context_command == "search" and args.limit < 1:
        print("procos-worker context search: --limit must be at least 1", file=sys.stderr)
        return EXIT_USAGE
    commands: dict[str, Callable[[ContextStore, argparse.Namespace, TextIO], int]] = {
        "show": _show, "input": _input, "conversation": _conversation, "search": _search, "stats": _stats,
    }
    try:
        with ContextStore(settings.database, provider=settings.ollama.provider) as store:
            return commands[args.context_command](store, args, stream)
    except ProcosError as exc:
        print(f"procos-worker context: {exc.message}", file=sys.stderr)
        return EXIT_POSTGRES


# -- the commands -----------------------------------------------------------------------------------


def _show(store: ContextStore, args: argparse.Namespace, out: TextIO) -> int:
    row = store.get(args.id)
    if row is None:
        return _not_found(f"no row with id {args.id}")
    return _write_row(out, row, as_json=args.json)


def _input(store: ContextStore, args: argparse.Namespace, out: TextIO) -> int:
    row = store.get(args.id)
    if row is None:
        return _not_found(f"no row with id {args.id}")
    prompt = row if row.context_type == "input" else store.get_input_for(args.id)
    if prompt is None:
        return _not_found(f"row {args.id} has no input row (no task id, or it was purged)")
    return _write_row(out, prompt, as_json=args.json)


def _write_row(out: TextIO, row: StoredContext, *, as_json: bool) -> int:
    """One row: as JSON, or its text exactly as stored."""
    if as_json:
        _write_json(out, _row_json(row))
    else:
        _write_exact(out, row.content_text or "")
    return 0


def _conversation(store: ContextStore, args: argparse.Namespace, out: TextIO) -> int:
    if (args.process_instance_id is None) == (args.memory_key is None):
        print("procos-worker context conversation: give a PROCESS_INSTANCE_ID or --memory-key, not both",
              file=sys.stderr)
        return EXIT_USAGE
    if args.memory_key is not None:
        return _memory_conversation(store, args.memory_key, out, as_json=args.json)
    rows = store.conversation(args.process_instance_id)
    if not rows:
        return _not_found(f"no rows for process instance {args.process_instance_id}")
    if args.json:
        _write_json(out, [_row_json(row) for row in rows])
        return 0
    for row in rows:
        header = [row.context_type, str(row.id), f"{row.created_at:%Y-%m-%d %H:%M:%S%z}"]
        header += [f"{k}={v}" for k, v in (("activity", row.activity_id), ("task", row.task_id),
                                         ("model", row.model_used)) if v]
        if row.token_usage:
            header.append(f"tokens={row.token_usage.get('prompt_tokens')}+{row.token_usage.get('completion_tokens')}")
        out.write(f"--- {' '.join(header)} ---\n")
        text = row.content_text or ""
        out.write(text if text.endswith("\n") else text + "\n")
    return 0


def _memory_conversation(store: ContextStore, key: str, out: TextIO, *, as_json: bool) -> int:
    """The turns of a memory key as later tasks are given them: each task's question and final answer."""
    turns = store.turns(memory_key=key)
    if not turns:
        return _not_found(f"no turns under memory key {key!r}")
    if as_json:
        _write_json(out, [{"id": str(t.id), "input_id": str(t.input_id), "process_instance_id": t.process_instance_id,
                           "task_id": t.task_id, "activity_id": t.activity_id, "model": t.model,
                           "created_at": t.created_at.isoformat(), "question": t.question, "answer": t.answer}
                          for t in turns])
        return 0
    for turn in turns:
        out.write(f"--- turn {turn.id} {turn.created_at:%Y-%m-%d %H:%M:%S%z} process={turn.process_instance_id} "
                  f"activity={turn.activity_id} model={turn.model} ---\n")
        for text in (turn.question, turn.answer):
            out.write(text if text.endswith("\n") else text + "\n")
    return 0


def _search(store: ContextStore, args: argparse.Namespace, out: TextIO) -> int:
    hits = store.search(args.text, limit=args.limit, context_type=args.context_type)
    if args.json:
        _write_json(out, [_plain(hit) for hit in hits])
        return 0
    if not hits:
        return _not_found(f"no row contains {args.text!r}")
    for hit in hits:
        out.write(_search_line(hit) + "\n")
    return 0


def _stats(store: ContextStore, args: argparse.Namespace, out: TextIO) -> int:
    since = None if args.since is None else datetime.now(UTC) - args.since
    result = store.stats(since=since)
    if args.json:
        _write_json(out, _plain(result))
        return 0
    out.write(_stats_text(result))
    return 0


# -- output -----------------------------------------------------------------------------------------


def _not_found(message: str) -> int:
    print(f"procos-worker context: {message}", file=sys.stderr)
    return EXIT_NOT_FOUND


def _write_exact(out: TextIO, text: str) -> None:
    """The text itself: UTF-8, lone surrogates written as their 3-byte forms (surrogatepass)."""
    data = text.encode("utf-8", "surrogatepass")
    buffer = getattr(out, "buffer", None)
    if buffer is None:
        out.write(data.decode("utf-8", "surrogatepass"))
    else:
        out.flush()
        buffer.write(data)
        buffer.flush()
    if out.isatty() and not text.endswith("\n"):
        out.write("\n")


def _write_json(out: TextIO, value: Any) -> None:
    try:
        text = json.dumps(value, ensure_ascii=False, indent=2, default=str)
        text.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate: only an ASCII escape can carry it
        text = json.dumps(value, ensure_ascii=True, indent=2, default=str)
    out.write(text + "\n")


def _row_json(row: StoredContext) -> dict[str, Any]:
    data = _plain(row)
    assert isinstance(data, dict)
    return data


def _plain(value: Any) -> Any:
    """Dataclasses, UUIDs, datetimes, tuples and mappings as JSON-ready values."""
    if is_dataclass(value) and not isinstance(value, type):
        return {k: _plain(v) for k, v in asdict(value).items()}
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, UUID):
        return str(value)
    if isinstance(value, datetime):
        return value.isoformat()
    return value


def _one_line(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


def _search_line(hit: SearchHit) -> str:
    return (f"{hit.created_at:%Y-%m-%d %H:%M:%S}  {hit.context_type:<6}  {hit.id}  "
            f"{hit.process_instance_id}  {hit.activity_id or '-'}  …{_one_line(hit.snippet)}…")


def _latency(values: tuple[float, float, float] | None) -> str:
    return "-" if values is None else " / ".join(f"{v:.2f}" for v in values)


def _stats_text(result: Stats) -> str:
    lines = [f"since {result.since:%Y-%m-%d %H:%M:%S%z}" if result.since else "all rows", "", "per model"]
    lines.append(f"{'model':<28} {'provider':<10} {'registered':<20} {'calls':>8} {'prompt tok':>12} "
                 f"{'compl. tok':>12}  latency s p50 / p95 / p99")
    for m in result.models:
        registered = ",".join(m.registered_versions) or "-"
        lines.append(f"{m.model or '?':<28} {m.provider or '?':<10} {registered:<20} {m.calls:>8} "
                     f"{m.prompt_tokens:>12} {m.completion_tokens:>12}  {_latency(m.latency_s)}")
    lines += ["", "per activity"]
    lines.append(f"{'process definition key':<32} {'activity':<24} {'calls':>8} {'prompt tok':>12} "
                 f"{'compl. tok':>12}  latency s p50 / p95 / p99")
    for a in result.activities:
        lines.append(f"{a.process_definition_key or '-':<32} {a.activity_id or '-':<24} {a.calls:>8} "
                     f"{a.prompt_tokens:>12} {a.completion_tokens:>12}  {_latency(a.latency_s)}")
    return "\n".join(lines) + "\n"

