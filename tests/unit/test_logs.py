from __future__ import annotations

import io
import json
import logging

import pytest
import structlog

from procos_worker.ops.logs import configure_logging
from procos_worker.settings import CamundaSettings, DatabaseSettings, LogSettings, Settings


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
