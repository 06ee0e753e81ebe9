"""The threads that run tasks: started as work arrives, reused while it keeps coming, gone when idle.

A thread per task cost a start handshake (a new OS thread, then an event both sides wait on) for every
task, about 4 % of the worker's CPU in the P1 benchmark. Here a finished thread waits for the next task
and exits after ``idle_exit_s`` without one, so a quiet worker holds no threads. The worker decides how
many tasks run at once (its capacity); this only supplies threads for them. Threads are daemons, like
the thread-per-task ones were: the worker's shutdown waits for its runs, never for a thread.

Not ``concurrent.futures.ThreadPoolExecutor``: its threads are joined when the interpreter exits, so
one task stuck in a hung call would hold the process past its shutdown bound, and idle ones never leave.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import Generic, TypeVar

__all__ = ["Runners"]

_T = TypeVar("_T")


class Runners(Generic[_T]):
    """Runs ``target(item)`` for each item given to :meth:`run`, each on a thread of its own at the time."""

    def __init__(self, target: Callable[[_T], None], *, name: str, idle_exit_s: float = 30.0) -> None:
        self._target = target
        self._name = name
        self._idle_exit_s = idle_exit_s
        self._items: queue.SimpleQueue[_T | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._idle = 0  # threads waiting for an item that no queued item is promised to
        self._started = 0
        self._closed = False

    @property
    def started(self) -> int:
        """Threads started so far (a reused thread is counted once)."""
        return self._started

    @property
    def idle(self) -> int:
        """Threads waiting for an item."""
        return self._idle

    def run(self, item: _T) -> None:
        with self._lock:
            if self._idle:
                # Put under the lock: an idle thread timing out checks the queue under it too, so it
                # never leaves while an item is promised to it.
                self._idle -= 1
                self._items.put(item)
                return
            self._started += 1
            thread = threading.Thread(target=self._serve, args=(item,), name=f"{self._name}-{self._started}",
                                      daemon=True)
        thread.start()

    def close(self) -> None:
        """Let every idle thread exit now; a busy one exits when its task is done, and an item given
        after this runs on a thread that exits after it."""
        with self._lock:
            self._closed = True
            for _ in range(self._idle):
                self._items.put(None)
            self._idle = 0

    def _serve(self, item: _T | None) -> None:
        while item is not None:
            self._target(item)
            with self._lock:
                if self._closed:
                    return
                self._idle += 1
            item = self._next()

    def _next(self) -> _T | None:
        while True:
            try:
                return self._items.get(timeout=self._idle_exit_s)
            except queue.Empty:
                with self._lock:
                    if self._items.empty():
                        self._idle -= 1
                        return None
