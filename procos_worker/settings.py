"""Every setting of procos-worker, in one pydantic-settings type.

This is the only module that reads the environment. Each section is a small model; an environment
variable is named ``<SECTION>_<FIELD>`` in upper case, so ``CAMUNDA_BASE_URL`` sets
``settings.camunda.base_url`` and ``WORKER_LOCK_DURATION_MS`` sets ``settings.worker.lock_duration_ms``
(``CAMUNDA_BASE_URL`` and ``OLLAMA_BASE_URL`` are the names the ProcOS deployment documents use). Values
can also come from a ``.env`` file in the working directory. Secrets are ``SecretStr`` so that they
never print.
"""

from __future__ import annotations

import json
import os
import socket
import uuid
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

__all__ = [
    "BackoffSettings",
    "CamundaSettings",
    "DatabaseSettings",
    "LogSettings",
    "MemorySettings",
    "OllamaSettings",
    "RegistrySettings",
    "Settings",
    "TaskSettings",
    "WindowSettings",
    "WorkerSettings",
    "default_worker_id",
    "env_var_names",
]

# Camunda rejects a long poll above 30 minutes with HTTP 400.
_MAX_ASYNC_RESPONSE_TIMEOUT_MS = 1_800_000


def default_worker_id() -> str:
    """A worker id unique per process: ``complete`` does not check lock expiry, so two processes
    sharing an id could complete each other's tasks."""
    return f"procos-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


def _split_csv(value: Any) -> Any:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


class CamundaSettings(BaseModel):
    """Where the Camunda 7 REST API is and how to log in."""

    base_url: str = "http://127.0.0.1:8080/engine-rest"
    username: str | None = None
    password: SecretStr | None = None
    http_timeout_s: float = Field(default=30.0, gt=0)

    @field_validator("base_url")
    @classmethod
    def _strip_slash(cls, value: str) -> str:
        return value.rstrip("/")


class WorkerSettings(BaseModel):
    """How the poll loop fetches, locks and holds tasks."""

    id: str = Field(default_factory=default_worker_id, min_length=1)
    topics: Annotated[list[str], NoDecode] = Field(default_factory=lambda: ["ai-query"], min_length=1)
    lock_duration_ms: int = Field(default=60_000, ge=1_000)
    max_tasks_in_flight: int = Field(default=4, ge=1, le=256)
    async_response_timeout_ms: int = Field(default=20_000, ge=0, le=_MAX_ASYNC_RESPONSE_TIMEOUT_MS)
    shutdown_grace_s: float = Field(default=30.0, ge=0)
    retries: int = Field(default=3, ge=0, description="Camunda retries given to a task on its first failure")
    retry_timeout_ms: int = Field(default=10_000, ge=0, description="first retryTimeout; doubles per failure")
    retry_timeout_max_ms: int = Field(default=600_000, ge=0)
    health_file: Path = Path("/tmp/procos-worker-health.json")
    health_max_age_s: float = Field(default=60.0, gt=0)

    _split_topics = field_validator("topics", mode="before")(_split_csv)


class TaskSettings(BaseModel):
    """Which process variables a task reads, how bad input is reported, and per-topic task defaults."""

    query_variable: str = "query"
    context_variable: str = "context"
    system_prompt_variable: str = "system_prompt"
    input_error_code: str = "AI_INPUT_INVALID"
    # Camunda's REST JSON reader refuses strings over 20,000,000 characters anyway.
    max_input_chars: int = Field(default=20_000_000, ge=1)
    # {topic: {"procos.model": "...", "procos.options": {...}, ...}}: the task's extension properties'
    # names and values, used where a task doesn't set them (checked by ai.taskconfig when the worker starts).
    topic_defaults: Annotated[dict[str, dict[str, Any]], NoDecode] = Field(
        default_factory=dict, description="JSON object {topic: {procos.* property: value}}")

    @field_validator("topic_defaults", mode="before")
    @classmethod
    def _parse_topic_defaults(cls, value: Any) -> Any:
        if isinstance(value, str):
            try:
                value = json.loads(value) if value.strip() else {}
            except json.JSONDecodeError as exc:
                raise ValueError("TASK_TOPIC_DEFAULTS must be a JSON object "
                                 f"{{topic: {{\"procos.model\": ...}}}}: {exc}") from exc
        return value


class OllamaSettings(BaseModel):
    """The model server and the request sent to it."""

    base_url: str = "http://127.0.0.1:11434"
    model: str = "smollm2:135m"
    timeout_s: float = Field(default=600.0, gt=0)
    options: Annotated[dict[str, Any], NoDecode] = Field(
        default_factory=dict, description="JSON object of Ollama options, e.g. {\"temperature\": 0.2}")
    keep_alive: str | None = None
    attempts: int = Field(default=3, ge=1, description="in-process tries on a transient Ollama error")
    provider: str = "ollama"


    @field_validator("options", mode="before")
    @classmethod
    def _parse_options(cls, value: Any) -> Any:
        if isinstance(value, str):
            try:
                value = json.loads(value) if value.strip() else {}
            except json.JSONDecodeError as exc:
                raise ValueError(f"OLLAMA_OPTIONS must be a JSON object, e.g. {{\"temperature\": 0.2}}: {exc}") from exc
        return value


class RegistrySettings(BaseModel):
    """How the worker uses procos_ai_models: refusing disabled models, default options, performance_stats."""

    allow_unregistered: bool = Field(default=True, description="serve models that have no row in procos_ai_models")
    cache_s: float = Field(default=30.0, ge=0, description="how long a read of procos_ai_models is reused")
    stats_interval_s: float = Field(default=60.0, ge=0, description="performance_stats refresh period; 0 = never")
    stats_window_s: float = Field(default=86_400.0, gt=0, description="stored rows of this period make the stats")


class MemorySettings(BaseModel):
    """Conversation memory (``procos.memory``): how many earlier turns a task may be given."""

    max_turns: int = Field(default=100, ge=1, le=10_000,
                           description="most earlier turns read (their sizes only) when a task's prompt is assembled")


class WindowSettings(BaseModel):
    """The context window of a request: what the worker assumes where Ollama tells it nothing."""

    # Ollama 0.24: OLLAMA_CONTEXT_LENGTH, else 4096 (32k/256k only with 23/47 GiB of VRAM).
    default_num_ctx: int = Field(default=4096, ge=4,
                                 description="context of a model whose options and Modelfile set no num_ctx")
    # Characters per token before the model has any stored figure; low = conservative (fewer turns).
    chars_per_token: float = Field(default=2.0, gt=0, le=16)
    reply_tokens: int = Field(default=512, ge=0, description="tokens kept for the answer when num_predict is not set")


class DatabaseSettings(BaseModel):
    """The PostgreSQL database that holds procos_ai_context."""

    url: SecretStr = SecretStr("postgresql://procos:procos123@127.0.0.1:5432/procos")
    pool_max_size: int = Field(default=8, ge=1)
    connect_timeout_s: float = Field(default=5.0, gt=0)


class BackoffSettings(BaseModel):
    """Jittered exponential backoff while a service is unreachable (one state per service)."""

    initial_s: float = Field(default=0.5, gt=0)
    max_s: float = Field(default=5.0, gt=0)
    multiplier: float = Field(default=2.0, ge=1)
    jitter: float = Field(default=0.25, ge=0, le=1)


class LogSettings(BaseModel):
    """Log level and format (``auto``: console on a terminal, JSON otherwise)."""

    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    format: Literal["auto", "json", "console"] = "auto"

    @field_validator("level", mode="before")
    @classmethod
    def _upper(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value


class Settings(BaseSettings):
    """All of procos-worker's configuration. Build it once (``Settings()``) and pass it down."""

    model_config = SettingsConfigDict(
        env_file=".env",
        env_file_encoding="utf-8",
        env_nested_delimiter="_",
        env_nested_max_split=1,
        extra="ignore",
        # An empty variable (compose's `WORKER_ID=`) means "use the default", e.g. a unique worker id.
        env_ignore_empty=True,
        frozen=True,
    )

    camunda: CamundaSettings = Field(default_factory=CamundaSettings)
    worker: WorkerSettings = Field(default_factory=WorkerSettings)
    task: TaskSettings = Field(default_factory=TaskSettings)
    ollama: OllamaSettings = Field(default_factory=OllamaSettings)
    registry: RegistrySettings = Field(default_factory=RegistrySettings)
    memory: MemorySettings = Field(default_factory=MemorySettings)
    window: WindowSettings = Field(default_factory=WindowSettings)
    database: DatabaseSettings = Field(default_factory=DatabaseSettings)
    backoff: BackoffSettings = Field(default_factory=BackoffSettings)
    log: LogSettings = Field(default_factory=LogSettings)

    @model_validator(mode="after")
    def _check_consistency(self) -> Settings:
        if (self.camunda.username is None) != (self.camunda.password is None):
            raise ValueError("CAMUNDA_USERNAME and CAMUNDA_PASSWORD must be set together")
        if self.worker.retry_timeout_max_ms < self.worker.retry_timeout_ms:
            raise ValueError("WORKER_RETRY_TIMEOUT_MAX_MS must be >= WORKER_RETRY_TIMEOUT_MS")
        return self


def env_var_names() -> set[str]:
    """The environment variable names Settings reads (what .env.example and compose must list)."""
    names: set[str] = set()
    for section, field in Settings.model_fields.items():
        model = field.annotation
        assert isinstance(model, type) and issubclass(model, BaseModel)
        names.update(f"{section}_{name}".upper() for name in model.model_fields)
    return names
