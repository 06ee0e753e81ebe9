"""structlog set-up: JSON lines when not on a terminal, readable console on one.

Prompts and answers are never logged (only lengths). As a last line of defence, every configured
secret (database URL and its password, Camunda password, token and OAuth client secret, the Ollama
API key and every OLLAMA_HEADERS value) is masked in every log line, including the lines that
libraries write through the standard logging module.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable, MutableMapping
from typing import Any
from urllib.parse import urlsplit

import structlog

from procos_worker.settings import Settings

__all__ = ["configure_logging", "secrets_of"]

_MASK = "***"


def secrets_of(settings: Settings) -> list[str]:
    """Every secret value in ``settings`` that must never be printed."""
    found: list[str] = []
    url = settings.database.url.get_secret_value()
    password = urlsplit(url).password
    if password:
        found += [url, password]
    for secret in (settings.camunda.password, settings.camunda.token, settings.camunda.oauth_client_secret,
                   settings.ollama.api_key, *settings.ollama.headers.values()):
        if secret is not None:
            found.append(secret.get_secret_value())
    return [s for s in found if len(s) >= 3]


class _Redact:
    def __init__(self, secrets: Iterable[str]) -> None:
        self._secrets = sorted(set(secrets), key=len, reverse=True)

    def __call__(self, _logger: Any, _name: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
        if not self._secrets:
            return event
        for key, value in event.items():
            if isinstance(value, str):
                event[key] = self._mask(value)
        return event

    def _mask(self, text: str) -> str:
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, _MASK)
        return text


def configure_logging(settings: Settings, *, stream: Any = None) -> None:
    """Route structlog and the standard logging module to one formatter on ``stream``."""
    out = stream if stream is not None else sys.stderr
    use_json = settings.log.format == "json" or (settings.log.format == "auto" and not out.isatty())
    renderer: Any = structlog.processors.JSONRenderer() if use_json else structlog.dev.ConsoleRenderer()
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.format_exc_info,
    ]
    redact = _Redact(secrets_of(settings))
    level = logging.getLevelNamesMapping()[settings.log.level]
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        # A line below LOG_LEVEL is a method that returns at once: the per-task DEBUG lines cost nothing
        # at INFO (through the processor chain they were about 2 % of the worker's CPU in the P1 benchmark).
        wrapper_class=structlog.make_filtering_bound_logger(level),
        cache_logger_on_first_use=False,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, redact, renderer],
    )
    handler = logging.StreamHandler(out)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.log.level)
    # One line per HTTP call is noise at INFO; our own events say what happened.
    for noisy in ("httpx", "urllib3", "psycopg.pool"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
