"""Fixtures of the tests of the worker's threads on the in-memory doubles."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from structlog.testing import capture_logs

from procos_testkit.in_process import Doubles, RunningWorker, worker_on_doubles
from procos_worker.settings import Settings
from tests.unit.worker_kit import Logs


@pytest.fixture()
def logs() -> Iterator[Logs]:
    with capture_logs() as captured:
        yield captured


@pytest.fixture()
def start(doubles: Doubles, unit_settings: Callable[..., Settings], logs: Logs
          ) -> Iterator[Callable[..., RunningWorker]]:
    """``start(settings=None, **worker_fields)``: a Worker on the doubles, serving in a thread (the log
    capture already on); at the end held chats are let go and every worker still running is stopped."""
    started: list[RunningWorker] = []

    def run(settings: Settings | None = None, **worker: Any) -> RunningWorker:
        running = RunningWorker(worker_on_doubles(settings or unit_settings(**worker), doubles)).start()
        started.append(running)
        return running

    yield run
    doubles.llm.release()
    for running in started:
        if running.alive:
            running.stop(10)
