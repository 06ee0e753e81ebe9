"""The mutable state of one task while this worker holds it (shared by its thread, the heartbeat and
shutdown). Every transition happens under ``lock``, so a task is either reported or released, never both.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum

from procos_worker.models import Task

__all__ = ["RunState", "TaskRun"]


class RunState(Enum):
    RUNNING = "running"      # inputs, LLM, storage
    REPORTING = "reporting"  # sending the outcome to Camunda: never interrupted
    RELEASED = "released"    # shutdown unlocked it: say nothing more to Camunda
    LOST = "lost"            # the engine says the lock is not ours: say nothing more


@dataclass(eq=False)
class TaskRun:
    """``clock`` is the monotonic time source (tests pass a fake one); ``started`` is read from it."""

    task: Task
    lock_duration_ms: int
    clock: Callable[[], float] = field(default=time.monotonic, repr=False)
    started: float = field(init=False)
    state: RunState = RunState.RUNNING
    lock: threading.Lock = field(default_factory=threading.Lock)
    cancel: threading.Event = field(default_factory=threading.Event)
    lock_expires_at: float = 0.0

    def __post_init__(self) -> None:
        self.started = self.clock()
        self.lock_expires_at = self.started + self.lock_duration_ms / 1000

    def elapsed_s(self) -> float:
        return round(self.clock() - self.started, 3)

    def begin_report(self) -> bool:
        """Claim the right to report; False if the task was released or lost first."""
        with self.lock:
            if self.state is not RunState.RUNNING:
                return False
            self.state = RunState.REPORTING
            return True

    def give_up(self, state: RunState) -> bool:
        """Move to RELEASED or LOST unless reporting already started; wakes any wait of the task."""
        with self.lock:
            if self.state is not RunState.RUNNING:
                return False
            self.state = state
            self.cancel.set()
            return True
