"""The worker's Prometheus metrics (prometheus-client), and one small function per state change.

The pipeline calls these functions (the worker, handler, heartbeat and gates); ``ops.http`` serves
``REGISTRY`` on ``/metrics``. Labels are bounded sets only: ``topic`` (the configured topics),
``model`` (models Ollama answered with), ``outcome``, ``operation`` and ``service`` (fixed words);
never a task, instance or row id. The registry is the process's own (not prometheus-client's global
one), with the standard process, platform and garbage-collector collectors.

Every name is ``procos_worker_*``; counters get ``_total`` from the library. The dashboard in
``deploy/grafana`` and the tests check their queries against ``exported_names()``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal, get_args

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, disable_created_metrics
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

__all__ = [
    "REGISTRY",
    "Outcome",
    "Report",
    "Service",
    "declare",
    "exported_names",
    "fetched",
    "in_flight",
    "llm_answered",
    "lock_extended",
    "lock_lost",
    "orphans_reclaimed",
    "polled",
    "reported",
    "rows_purged",
    "service_state",
    "stored",
    "task_outcome",
]

Outcome = Literal["completed", "failed", "incident", "bpmn_error", "abandoned", "released"]
Report = Literal["complete", "failure", "bpmn_error"]
Service = Literal["camunda", "postgresql", "ollama"]
StoreOperation = Literal["input", "output"]

# No *_created series: they double the exposition and no dashboard or rule here uses them.
disable_created_metrics()  # type: ignore[no-untyped-call]
REGISTRY = CollectorRegistry(auto_describe=True)
ProcessCollector(registry=REGISTRY)
PlatformCollector(registry=REGISTRY)
GCCollector(registry=REGISTRY)

_NS = "procos_worker"
_FAST_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
# A long poll waits up to WORKER_ASYNC_RESPONSE_TIMEOUT_MS (20 s by default) when there is no work.
_FETCH_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0)
_LLM_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0)

_BUILD = Info("build", "Version of the running worker", namespace=_NS, registry=REGISTRY)
_FETCHED = Counter("tasks_fetched", "External tasks fetched and locked", ["topic"], namespace=_NS,
                   registry=REGISTRY)
_TASKS = Counter("tasks", "External tasks by what became of them: completed, failed (retry scheduled), "
                 "incident, bpmn_error, abandoned (lock lost), released (unlocked unreported)",
                 ["topic", "outcome"], namespace=_NS, registry=REGISTRY)
_IN_FLIGHT = Gauge("tasks_in_flight", "Tasks this worker holds right now", ["topic"], namespace=_NS,
                   registry=REGISTRY)
_FETCH_SECONDS = Histogram("fetch_duration_seconds", "fetchAndLock calls, long-poll wait included",
                           namespace=_NS, registry=REGISTRY, buckets=_FETCH_BUCKETS)
_LLM_SECONDS = Histogram("llm_duration_seconds", "Ollama chat calls (all in-process tries) by the model that "
                         "answered", ["model"], namespace=_NS, registry=REGISTRY, buckets=_LLM_BUCKETS)
_STORE_SECONDS = Histogram("store_duration_seconds", "Writes to procos_ai_context (input row, output row)",
                           ["operation"], namespace=_NS, registry=REGISTRY, buckets=_FAST_BUCKETS)
_REPORT_SECONDS = Histogram("complete_duration_seconds", "Reporting an outcome to Camunda (complete, failure, "
                            "bpmnError), retries while the engine is unreachable included", ["outcome"],
                            namespace=_NS, registry=REGISTRY, buckets=_FAST_BUCKETS)
_PROMPT_TOKENS = Counter("prompt_tokens", "Prompt tokens Ollama evaluated (prompt_eval_count)", ["model"],
                         namespace=_NS, registry=REGISTRY)
_COMPLETION_TOKENS = Counter("completion_tokens", "Tokens Ollama generated (eval_count)", ["model"],
                             namespace=_NS, registry=REGISTRY)
_LOCK_EXTENSIONS = Counter("lock_extensions", "Locks extended by the heartbeat", ["topic"], namespace=_NS,
                           registry=REGISTRY)
_LOCK_LOSSES = Counter("lock_losses", "Tasks whose lock the engine said was gone", ["topic"], namespace=_NS,
                       registry=REGISTRY)
_SERVICE_UP = Gauge("service_up", "1 while the worker reaches the service, 0 while it waits for it",
                    ["service"], namespace=_NS, registry=REGISTRY)
_ORPHANS = Counter("orphan_reclaims", "Tasks of dead workers this worker unlocked for work", namespace=_NS,
                   registry=REGISTRY)
_PURGED = Counter("purged_rows", "procos_ai_context rows deleted by the scheduled purge", namespace=_NS,
                  registry=REGISTRY)


def declare(topics: Iterable[str], version: str) -> None:
    """Create every series of the configured topics at zero, so rates and dashboards start at once."""
    _BUILD.info({"version": version})
    for topic in topics:
        _FETCHED.labels(topic)
        _IN_FLIGHT.labels(topic)
        _LOCK_EXTENSIONS.labels(topic)
        _LOCK_LOSSES.labels(topic)
        for outcome in get_args(Outcome):
            _TASKS.labels(topic, outcome)
    for service in get_args(Service):
        _SERVICE_UP.labels(service).set(1)


def fetched(topic: str) -> None:
    _FETCHED.labels(topic).inc()


def in_flight(topic: str, delta: int) -> None:
    _IN_FLIGHT.labels(topic).inc(delta)


def task_outcome(topic: str, outcome: Outcome) -> None:
    _TASKS.labels(topic, outcome).inc()


def polled(seconds: float) -> None:
    _FETCH_SECONDS.observe(seconds)


def llm_answered(model: str, seconds: float, prompt_tokens: int, completion_tokens: int) -> None:
    _LLM_SECONDS.labels(model).observe(seconds)
    _PROMPT_TOKENS.labels(model).inc(prompt_tokens)
    _COMPLETION_TOKENS.labels(model).inc(completion_tokens)


def stored(operation: StoreOperation, seconds: float) -> None:
    _STORE_SECONDS.labels(operation).observe(seconds)


def reported(outcome: Report, seconds: float) -> None:
    _REPORT_SECONDS.labels(outcome).observe(seconds)


def lock_extended(topic: str) -> None:
    _LOCK_EXTENSIONS.labels(topic).inc()


def lock_lost(topic: str) -> None:
    _LOCK_LOSSES.labels(topic).inc()


def service_state(service: Service | str, up: bool) -> None:
    _SERVICE_UP.labels(service).set(1 if up else 0)


def orphans_reclaimed(count: int) -> None:
    _ORPHANS.inc(count)


def rows_purged(count: int) -> None:
    _PURGED.inc(count)


def exported_names() -> set[str]:
    """Every sample name ``/metrics`` can show (with ``_total``, ``_bucket``, ``_count``... suffixes)."""
    names: set[str] = set()
    for family in REGISTRY.collect():
        names.add(family.name)
        names.update(sample.name for sample in family.samples)
        if family.type == "counter":
            names.add(f"{family.name}_total")
        elif family.type == "histogram":
            names.update(f"{family.name}{suffix}" for suffix in ("_bucket", "_count", "_sum"))
        elif family.type == "info":
            names.add(f"{family.name}_info")
    return names
