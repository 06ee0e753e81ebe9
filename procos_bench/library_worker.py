"""camunda-external-task-client-python3's own ``ExternalTaskWorker`` doing procos-worker's work.

The handler does the same work as procos-worker per task: read the inputs, ask Ollama with the
``ollama`` client (the benchmark points it at a fake with a fixed latency), store an input and an
output row in procos_ai_context with psycopg (one autocommit connection), and complete with the same
flag variables. The library runs tasks one after another (its ``subscribe`` is a blocking loop that
cannot be stopped), so the benchmark runs this as a process and ends it with SIGTERM::

    python -m procos_bench.library_worker --url ... --topic T --ollama http://127.0.0.1:PORT --db postgresql://...

It prints ``ready`` just before ``subscribe``. The library's own defaults are kept (maxTasks 1,
lockDuration 300 s, asyncResponseTimeout 30 s), except ``sleepSeconds`` (1 s instead of 300 s
after an error, so a hiccup can't stall a run for five minutes).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import uuid
from collections.abc import Sequence
from typing import Any

import ollama
import psycopg
from psycopg.types.json import Jsonb

__all__ = ["main", "make_handler"]

_INSERT = """
INSERT INTO procos_ai_context (process_instance_id, task_id, activity_id, context_type, content_data, content_text,
                               ai_provider, model_used, token_usage)
VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)
RETURNING id
"""


def make_handler(conn: psycopg.Connection[Any], client: ollama.Client, model: str) -> Any:
    """The task handler (``task -> TaskResult``) the library's worker calls."""

    def handle(task: Any) -> Any:
        query = str(task.get_variable("query"))
        context = task.get_variable("context")
        system_prompt = task.get_variable("system_prompt")
        user = query if context is None else f"Context:\n{context}\n\nQuestion:\n{query}"
        messages = ([{"role": "system", "content": str(system_prompt)}] if system_prompt else []) + [
            {"role": "user", "content": user}]
        pi, tid, act, topic = (task.get_process_instance_id(), task.get_task_id(), task.get_activity_id(),
                               task.get_topic_name())
        with conn.cursor() as cur:
            cur.execute(_INSERT, (pi, tid, act, "input",
                                  Jsonb({"query": query, "context": context, "system_prompt": system_prompt,
                                         "topic": topic, "worker_id": task.get_worker_id(),
                                         "prompt_length": len(user)}),
                                  user, None, None, None))
            input_row = cur.fetchone()
        response = client.chat(model=model, messages=messages, stream=False)
        content = response.message.content or ""
        prompt_tokens, completion_tokens = response.prompt_eval_count or 0, response.eval_count or 0
        usage = {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                 "total_tokens": prompt_tokens + completion_tokens}
        with conn.cursor() as cur:
            cur.execute(_INSERT, (pi, tid, act, "output",
                                  Jsonb({"content": content, "model": response.model,
                                         "done_reason": response.done_reason, "response_length": len(content),
                                         "input_context_id": str(input_row[0]) if input_row else None,
                                         "topic": topic, "worker_id": task.get_worker_id()}),
                                  content, "ollama", response.model, Jsonb(usage)))
            output_row = cur.fetchone()
        assert output_row is not None
        return task.complete({
            "ai_context_id": str(output_row[0]),
            "ai_response_stored": True,
            "ai_response_length": len(content),
            "ai_model": response.model or model,
            "ai_provider": "ollama",
            "ai_prompt_tokens": prompt_tokens,
            "ai_completion_tokens": completion_tokens,
            "ai_total_tokens": prompt_tokens + completion_tokens,
            "ai_done_reason": response.done_reason or "",
        })

    return handle


def main(argv: Sequence[str] | None = None) -> int:
    from camunda.external_task.external_task_worker import ExternalTaskWorker  # noqa: PLC0415 (slow import)

    parser = argparse.ArgumentParser(prog="python -m procos_bench.library_worker", description=__doc__)
    parser.add_argument("--url", required=True)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--ollama", required=True)
    parser.add_argument("--db", required=True)
    parser.add_argument("--model", default="smollm2:135m")
    args = parser.parse_args(argv)
    # The library's loop catches BaseException, SystemExit included, and goes on polling: a SIGTERM that
    # raised it was swallowed and the harness killed the process 10 s later. Nothing here needs cleaning up.
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    conn = psycopg.connect(args.db, autocommit=True)
    client = ollama.Client(host=args.ollama)
    worker = ExternalTaskWorker(worker_id=f"library-{uuid.uuid4().hex[:8]}", base_url=args.url,
                                config={"sleepSeconds": 1})
    print("ready", json.dumps({"worker_id": worker.worker_id}), flush=True)
    worker.subscribe(args.topic, make_handler(conn, client, args.model))
    return 0


if __name__ == "__main__":
    sys.exit(main())
