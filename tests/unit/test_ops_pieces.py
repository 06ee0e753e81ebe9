"""The small pieces of the operations layer: ages, the liveness bound, health records, progress, metrics."""

from __future__ import annotations

from datetime import timedelta

import pytest
from pydantic import ValidationError

from procos_worker import metrics
from procos_worker.health import HealthRecord, Progress
from procos_worker.settings import Settings, parse_age
from procos_worker.store.queries import escape_like


@pytest.mark.parametrize(("text", "expected"), [
    ("90d", timedelta(days=90)), ("12h", timedelta(hours=12)), ("30m", timedelta(minutes=30)),
    ("45s", timedelta(seconds=45)), ("2w", timedelta(weeks=2)), (" 1.5d ", timedelta(hours=36)),
])
def test_ages(text: str, expected: timedelta) -> None:
    assert parse_age(text) == expected


@pytest.mark.parametrize("text", ["90", "d", "-1d", "90 days", "1y", ""])
def test_bad_ages(text: str) -> None:
    with pytest.raises(ValueError, match="is not an age"):
        parse_age(text)


def test_retention_settings_read_ages_and_an_empty_value_means_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RETENTION_PURGE_OLDER_THAN", "90d")
    assert Settings(_env_file=None).retention.purge_older_than == timedelta(days=90)
    assert Settings(_env_file=None).retention.scheduled
    monkeypatch.setenv("RETENTION_PURGE_OLDER_THAN", "")
    assert not Settings(_env_file=None).retention.scheduled
    monkeypatch.setenv("RETENTION_PURGE_OLDER_THAN", "soon")
    with pytest.raises(ValidationError, match="is not an age"):
        Settings(_env_file=None)


def test_the_liveness_bound_must_outlast_an_idle_long_poll(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WORKER_ASYNC_RESPONSE_TIMEOUT_MS", "60000")
    with pytest.raises(ValidationError, match="OPS_LIVENESS_MAX_S must exceed"):
        Settings(_env_file=None)
    monkeypatch.setenv("OPS_LIVENESS_MAX_S", "65.5")
    assert Settings(_env_file=None).ops.liveness_max_s == 65.5


def test_the_http_port_is_on_and_on_the_loopback_by_default() -> None:
    ops = Settings(_env_file=None).ops
    assert (ops.http_host, ops.http_port) == ("127.0.0.1", 9464)


def _record(**changes: object) -> HealthRecord:
    fields: dict[str, object] = {"ts": 1000.0, "state": "running", "worker_id": "w", "pid": 1, "in_flight": 0,
                                 "progress_age_s": {"poll": 1.0, "heartbeat": 0.5}}
    fields.update(changes)
    return HealthRecord(**fields)  # type: ignore[arg-type]


def test_a_record_is_unhealthy_when_a_loop_stalls_even_if_it_is_fresh() -> None:
    assert _record().problem(now=1001.0, max_age_s=60, liveness_max_s=30) is None
    stalled = _record(progress_age_s={"poll": 29.5, "heartbeat": 0.5})
    assert stalled.problem(now=1001.0, max_age_s=60, liveness_max_s=30) == "poll loop made no progress for 30.5s"
    both = _record(progress_age_s={"poll": 40, "heartbeat": 40})
    assert both.problem(now=1000.0, max_age_s=60, liveness_max_s=30) == (
        "heartbeat loop made no progress for 40.0s; poll loop made no progress for 40.0s")


def test_a_record_is_unhealthy_when_old_or_not_running() -> None:
    assert _record().problem(now=1100.0, max_age_s=60, liveness_max_s=300) == "state=running age=100.0s"
    assert _record(state="stopping").problem(now=1000.0, max_age_s=60, liveness_max_s=30) == (
        "state=stopping age=0.0s")


def test_a_record_survives_the_file_round_trip(tmp_path: object) -> None:
    from pathlib import Path

    path = Path(str(tmp_path)) / "health.json"
    record = _record(down=("ollama",))
    record.write(path)
    assert HealthRecord.read(path) == record
    path.write_text('{"ts": 1}')
    with pytest.raises(ValueError, match="not a health record"):
        HealthRecord.read(path)


def test_progress_ages_follow_the_beats() -> None:
    now = [100.0]
    progress = Progress(clock=lambda: now[0])
    now[0] = 110.0
    progress.beat("heartbeat")
    now[0] = 112.5
    assert progress.ages_s() == {"poll": 12.5, "heartbeat": 2.5}


def test_metric_labels_are_bounded_words_only() -> None:
    metrics.declare(["topic-a"], "0.0.0")
    allowed = {"topic", "model", "outcome", "operation", "service", "version", "le"}
    for family in metrics.REGISTRY.collect():
        if family.name.startswith("procos_worker"):
            for sample in family.samples:
                assert set(sample.labels) <= allowed, (family.name, sample.labels)
    names = metrics.exported_names()
    assert {"procos_worker_tasks_total", "procos_worker_tasks_fetched_total", "procos_worker_tasks_in_flight",
            "procos_worker_llm_duration_seconds_bucket", "procos_worker_prompt_tokens_total",
            "procos_worker_lock_losses_total", "procos_worker_orphan_reclaims_total",
            "procos_worker_service_up", "process_cpu_seconds_total"} <= names


def test_like_wildcards_are_escaped() -> None:
    assert escape_like(r"50%_off\x") == r"50\%\_off\\x"


def test_the_daemon_reports_the_installed_version_and_unknown_without_metadata(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from importlib import metadata

    from procos_worker import __version__
    from procos_worker.ops import daemon

    assert daemon._version() == __version__

    def missing(name: str) -> str:
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(metadata, "version", missing)
    assert daemon._version() == "unknown"
