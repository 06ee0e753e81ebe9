from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest
import structlog

from procos_worker.ops.logs import configure_logging
from procos_worker.settings import CamundaSettings, DatabaseSettings, LogSettings, Settings


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    # configure_logging sets process-wide state (structlog's level filter, the root handler): later tests
    # capture DEBUG lines and must not inherit it.
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    structlog.reset_defaults()
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.fixture()
def settings() -> Settings:
    from pydantic import SecretStr

    return Settings(
        database=DatabaseSettings(url=SecretStr("postgresql://procos:db-pass-123@127.0.0.1/procos")),
        camunda=CamundaSettings(username="demo", password=SecretStr("cam-pass-456")),
        log=LogSettings(level="DEBUG", format="json"),
    )


def test_json_lines_and_secrets_masked_everywhere(settings: Settings) -> None:
    out = io.StringIO()
    configure_logging(settings, stream=out)
    log = structlog.get_logger("t").bind(task_id="t1")
    log.info("task.fetched", note="connecting to postgresql://procos:db-pass-123@127.0.0.1/procos")
    log.debug("x", password_echo="cam-pass-456")
    logging.getLogger("somelib").warning("login with db-pass-123 failed")
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [line["event"] for line in lines][:2] == ["task.fetched", "x"]
    assert lines[0]["task_id"] == "t1" and lines[0]["level"] == "info"
    text = out.getvalue()
    assert "db-pass-123" not in text and "cam-pass-456" not in text
    assert text.count("***") == 3


def test_console_format_on_request(settings: Settings) -> None:
    out = io.StringIO()
    configure_logging(settings.model_copy(update={"log": LogSettings(format="console")}), stream=out)
    structlog.get_logger("t").info("worker.started", topics=["ai-query"])
    line = out.getvalue()
    assert "worker.started" in line and not line.lstrip().startswith("{")


def test_lines_below_the_level_are_not_written_above_it_are(settings: Settings) -> None:
    out = io.StringIO()
    configure_logging(settings.model_copy(update={"log": LogSettings(level="INFO", format="json")}), stream=out)
    log = structlog.get_logger("t").bind(task_id="t1")
    log.debug("task.fetched")
    log.info("task.completed")
    try:
        raise ValueError("boom")
    except ValueError:
        log.exception("task.unexpected_error")
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [(line["event"], line["level"]) for line in lines] == [("task.completed", "info"),
                                                                  ("task.unexpected_error", "error")]
    assert "ValueError: boom" in lines[1]["exception"] and lines[1]["logger"] == "t"
