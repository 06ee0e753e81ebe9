"""Issue 9, item 9: shutdown ends inside compose's stop_grace_period even against a hung engine.

After WORKER_SHUTDOWN_GRACE_S the worker unlocks what it still holds, waits for reports and sweeps; each
of those is an engine call that, against an engine that accepts connections and never answers, waited its
whole CAMUNDA_HTTP_TIMEOUT_S (30 s) one after the other: minutes, far beyond compose's 45 s, after which
the container is killed anyway. Now the whole release phase is bounded by WORKER_SHUTDOWN_RELEASE_S.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable

import pytest

from procos_testkit.engine import EngineRest
from procos_testkit.fake_ollama import FakeOllama
from procos_testkit.holding_proxy import HoldingProxy
from procos_testkit.worker_process import WorkerProcess
from tests.faults.faultkit import task_ids

pytestmark = pytest.mark.faults

GRACE_S = 4.0
RELEASE_S = 4.0
MARGIN_S = 4.0  # process exit, closing the pool, a busy 2-core machine
COMPOSE_STOP_GRACE_S = 45.0


def test_shutdown_against_a_hung_engine_ends_in_time(
    engine_rest: EngineRest, deployed: tuple[str, str], fake: FakeOllama, camunda_proxy: HoldingProxy,
    spawn: Callable[..., WorkerProcess],
) -> None:
    topic, key = deployed
    fake.set_behaviour(delay_ms=60_000)  # in flight until long after the grace
    pis = [engine_rest.start(key, {"query": f"hung {i}"}) for i in range(4)]
    ids = task_ids(engine_rest, pis)
    worker = spawn(topic, OLLAMA_BASE_URL=fake.base_url, CAMUNDA_BASE_URL=f"{camunda_proxy.base_url}/engine-rest",
                   WORKER_SHUTDOWN_GRACE_S=str(GRACE_S), WORKER_SHUTDOWN_RELEASE_S=str(RELEASE_S),
                   WORKER_LOCK_DURATION_MS="30000", WORKER_MAX_TASKS_IN_FLIGHT="4", CAMUNDA_HTTP_TIMEOUT_S="30")
    for task_id in ids.values():
        worker.wait_for("task.input_stored", task_id=task_id)
    camunda_proxy.hold(r".*")  # from now on the engine accepts every request and answers none

    worker.signal(signal.SIGTERM)
    started = time.monotonic()
    code = worker.wait(COMPOSE_STOP_GRACE_S + 30)
    took = time.monotonic() - started
    camunda_proxy.release(forward=False)
    assert code == 0
    assert took <= GRACE_S + RELEASE_S + MARGIN_S, f"shutdown took {took:.1f} s"
    assert took < COMPOSE_STOP_GRACE_S
    stopped = worker.wait_for("worker.stopped")
    assert stopped["exit_code"] == 0
