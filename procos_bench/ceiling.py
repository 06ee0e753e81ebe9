"""The raw-REST ceiling: N threads, each ``fetchAndLock`` 1 task then ``complete`` it, doing no work.

What a good minimal client would do: one ``requests.Session`` (keep-alive) per thread, long polling,
and the same small completion variables procos-worker sends. Run as a process by the benchmark::

    python -m procos_bench.ceiling --url http://127.0.0.1:8080/engine-rest --topic T --threads 4

It prints ``ready`` once its threads poll and runs until SIGTERM.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
import uuid
from collections.abc import Sequence
from typing import Any

import requests

__all__ = ["FLAGS", "main"]

# The same shape of completion variables as procos-worker's (procos_worker.flags.build_flags).
FLAGS: dict[str, Any] = {
    "ai_context_id": "00000000-0000-0000-0000-000000000000",
    "ai_response_stored": True,
    "ai_response_length": 42,
    "ai_model": "smollm2:135m",
    "ai_provider": "ollama",
    "ai_prompt_tokens": 10,
    "ai_completion_tokens": 10,
    "ai_total_tokens": 20,
    "ai_done_reason": "stop",
}


def _loop(url: str, topic: str, worker_id: str, stop: threading.Event) -> None:
    session = requests.Session()
    variables = ["query", "context", "system_prompt"]  # what procos-worker fetches
    fetch = {"workerId": worker_id, "maxTasks": 1, "asyncResponseTimeout": 10_000,
             "topics": [{"topicName": topic, "lockDuration": 60_000, "variables": variables}]}
    complete = {"workerId": worker_id, "variables": {k: {"value": v} for k, v in FLAGS.items()}}
    while not stop.is_set():
        try:
            response = session.post(f"{url}/external-task/fetchAndLock", json=fetch, timeout=30)
            response.raise_for_status()
            for task in response.json():
                session.post(f"{url}/external-task/{task['id']}/complete", json=complete, timeout=30).raise_for_status()
        except requests.RequestException as exc:
            print(f"ceiling: {exc}", file=sys.stderr, flush=True)
            stop.wait(0.5)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m procos_bench.ceiling", description=__doc__)
    parser.add_argument("--url", required=True)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--threads", type=int, default=4)
    args = parser.parse_args(argv)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    worker_id = f"ceiling-{uuid.uuid4().hex[:8]}"
    threads = [threading.Thread(target=_loop, args=(args.url.rstrip("/"), args.topic, worker_id, stop), daemon=True)
               for _ in range(args.threads)]
    for t in threads:
        t.start()
    print("ready", flush=True)
    while not stop.wait(0.5):
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
