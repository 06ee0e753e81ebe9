"""``python -m procos_bench.stepcpu OUT [procos-worker args]``: procos-worker with the CPU of each step
of a task counted, for P5''s breakdown (where the worker's CPU per task goes).

The steps' methods are wrapped before the worker is built: each call adds the CPU its own thread spent
in it (``time.thread_time``, so waits on the network and on other threads don't count) to a sum. On
SIGUSR2 the sums and call counts go to ``OUT`` as JSON. Nested steps are counted where they run:
``handle`` includes the two stores and the LLM call, ``run_task`` includes ``handle`` and ``complete``;
``Steps.per_task`` subtracts them. A wrapper costs 3.5 µs a call (measured alone), about seven calls a
task: well under 1 % of a task's 7-9 ms. A benchmark tool only: nothing in the worker knows about it.
"""

from __future__ import annotations

import functools
import importlib
import json
import signal
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from procos_worker.ops.cli import main as worker_main

__all__ = ["STEPS", "Steps", "main"]

# name -> (module, class, method); the order is the task's, the poll thread's fetch first.
STEPS: dict[str, tuple[str, str, str]] = {
    "fetch": ("procos_worker.engine.client", "EngineClient", "fetch_and_lock"),
    "store_input": ("procos_worker.store.context", "ContextStore", "save_input"),
    "llm": ("procos_worker.ai.llm", "LlmClient", "chat"),
    "store_output": ("procos_worker.store.context", "ContextStore", "save_output"),
    "handle": ("procos_worker.handler", "TaskHandler", "handle"),
    "complete": ("procos_worker.engine.client", "EngineClient", "complete"),
    "run_task": ("procos_worker.worker", "Worker", "_run_task"),
}


class _Counter:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.seconds: dict[str, float] = dict.fromkeys(STEPS, 0.0)
        self.calls: dict[str, int] = dict.fromkeys(STEPS, 0)

    def wrap(self, name: str, method: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(method)
        def counted(*args: Any, **kwargs: Any) -> Any:
            t0 = time.thread_time()
            try:
                return method(*args, **kwargs)
            finally:
                spent = time.thread_time() - t0
                with self.lock:
                    self.seconds[name] += spent
                    self.calls[name] += 1

        return counted

    def dump(self, out: Path) -> None:
        with self.lock:
            data = {"seconds": dict(self.seconds), "calls": dict(self.calls)}
        tmp = out.with_suffix(".tmp")
        tmp.write_text(json.dumps(data), encoding="utf-8")
        tmp.replace(out)  # the reader never sees half a file


@dataclass(frozen=True)
class Steps:
    """The sums one worker wrote; ``per_task`` turns them into exclusive CPU ms per task."""

    seconds: Mapping[str, float]
    calls: Mapping[str, int]

    @classmethod
    def read(cls, path: Path) -> Steps:
        data = json.loads(path.read_text(encoding="utf-8"))
        return cls(seconds=data["seconds"], calls=data["calls"])

    def per_task(self, tasks: int, total_cpu_s: float) -> dict[str, float]:
        """CPU ms per task of each step on its own; ``task_thread_rest``: the task thread outside the
        steps (config, inputs, outcome, logs, metrics); ``rest``: every other thread and what the process
        spent outside the steps (``total_cpu_s``, the process's CPU over the same run)."""
        s = self.seconds
        own = {
            "fetch": s["fetch"],
            "store_input": s["store_input"],
            "llm": s["llm"],
            "store_output": s["store_output"],
            "complete": s["complete"],
            "handler_rest": s["handle"] - s["store_input"] - s["llm"] - s["store_output"],
            "task_thread_rest": s["run_task"] - s["handle"] - s["complete"],
        }
        own["rest"] = total_cpu_s - s["run_task"] - s["fetch"]
        return {name: round(1000 * value / tasks, 3) for name, value in own.items()}


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args:
        print(__doc__, file=sys.stderr)
        return 2
    out = Path(args[0])
    counter = _Counter()
    for name, (module, cls_name, method) in STEPS.items():
        cls = getattr(importlib.import_module(module), cls_name)
        setattr(cls, method, counter.wrap(name, getattr(cls, method)))
    # Written from a thread of its own: the handler may interrupt the main thread while it holds the lock.
    signal.signal(signal.SIGUSR2, lambda *_: threading.Thread(target=counter.dump, args=(out,)).start())
    return worker_main(args[1:])


if __name__ == "__main__":
    raise SystemExit(main())
