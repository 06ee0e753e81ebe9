"""Every setting of procos-worker, in one pydantic-settings type.

This is the only module that reads the environment. Each section is a small model; an environment
variable is named ``<SECTION>_<FIELD>`` in upper case, so ``CAMUNDA_BASE_URL`` sets
``settings.camunda.base_url`` and ``WORKER_LOCK_DURATION_MS`` sets ``settings.worker.lock_duration_ms``
(``CAMUNDA_BASE_URL`` and ``OLLAMA_BASE_URL`` are the names the ProcOS deployment documents use). Values
can also come from a ``.env`` file in the working directory. Secrets are ``SecretStr`` so that they
never print, and ``settings_error_text`` words a validation error without any input value (a bad
setting never echoes a password, whatever field it sits in).
"""

from __future__ import annotations

import difflib
import json
import os
import re
import socket
import uuid
from collections.abc import Mapping
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import unquote, urlsplit, urlunsplit

import ollama
from ollama._client import _parse_host  # the ollama client's own reading of OLLAMA_HOST
from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

__all__ = [
    "MODEL_NAME_MAX_CHARS",
    "OLLAMA_OPTION_NAMES",
    "POOL_RESERVE",
    "PROVIDER_NAME_MAX_CHARS",
    "BackoffSettings",
    "CamundaSettings",
    "DatabaseSettings",
    "LogSettings",
    "MemorySettings",
    "OllamaSettings",
    "OpsSettings",
    "OrphansSettings",
    "RegistrySettings",
    "RetentionSettings",
    "Settings",
    "TaskSettings",
    "ThinkLevel",
    "TopicFetch",
    "WindowSettings",
    "WorkerSettings",
    "default_worker_id",
    "env_var_names",
    "ollama_url",
    "option_problem",
    "parse_age",
    "settings_error_text",
    "unknown_options",
]

# Camunda rejects a long poll above 30 minutes with HTTP 400.
_MAX_ASYNC_RESPONSE_TIMEOUT_MS = 1_800_000
# The engine client's HTTP timeout of a long poll is its wait plus this (the library's timeoutDeltaMillis).
_FETCH_TIMEOUT_DELTA_S = 5.0
# Widths of procos_ai_context.model_used and .ai_provider (sql/init-db.sql): a longer name can't be stored,
# so it is refused at start instead of after the LLM call (tests/faults/test_startup_checks.py reads the schema).
MODEL_NAME_MAX_CHARS = 100
PROVIDER_NAME_MAX_CHARS = 50
# Connections a worker needs besides one per task in flight: the gate's probe, the lease beat, the orphan scan.
POOL_RESERVE = 3


def default_worker_id() -> str:
    """A worker id unique per process: ``complete`` does not check lock expiry, so two processes
    sharing an id could complete each other's tasks."""
    return f"procos-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


_AGE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")
_AGE_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_age(text: str) -> timedelta:
    """An age written like ``90d``, ``12h``, ``30m``, ``45s`` or ``2w``; ``ValueError`` otherwise."""
    match = _AGE.match(text)
    if match is None:
        raise ValueError(f"{text!r} is not an age like 90d, 12h, 30m, 45s or 2w")
    return timedelta(seconds=float(match.group(1)) * _AGE_UNIT_S[match.group(2)])


def _split_csv(value: Any) -> Any:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


def _parse_json_object(name: str, example: str) -> Any:
    def parse(value: Any) -> Any:
        if isinstance(value, str):
            try:
                value = json.loads(value) if value.strip() else {}
            except json.JSONDecodeError as exc:
                raise ValueError(f"{name} must be a JSON object, e.g. {example}: {exc}") from exc
        return value

    return parse


# Ollama option names: what the ``ollama`` client's ``Options`` declares, and what Ollama 0.24's server
# reads (``api.Options`` with its ``Runner``; min_p is the one the client lacks). Ollama ignores any other
# name with a line in its own log, so a misspelt option would silently leave the default in force.
OLLAMA_OPTION_NAMES: frozenset[str] = frozenset(ollama.Options.model_fields) | {
    "num_keep", "seed", "num_predict", "top_k", "top_p", "min_p", "typical_p", "repeat_last_n", "temperature",
    "repeat_penalty", "presence_penalty", "frequency_penalty", "stop",
    "num_ctx", "num_batch", "num_gpu", "main_gpu", "use_mmap", "num_thread",
}


def unknown_options(options: Mapping[str, Any], known: frozenset[str]) -> str | None:
    """What is wrong with the names of ``options`` (none of them in ``known``), or None if nothing is."""
    unknown = sorted(name for name in options if name not in known)
    if not unknown:
        return None
    hints = [f"{name!r} (did you mean {close[0]!r}?)" if (close := difflib.get_close_matches(name, known, n=1))
             else repr(name) for name in unknown]
    one = len(unknown) == 1
    return (f"unknown Ollama option{'' if one else 's'} {', '.join(hints)}: Ollama would ignore "
            f"{'it and keep its default' if one else 'them and keep its defaults'} (an option of a newer Ollama: "
            "add its name to OLLAMA_EXTRA_OPTION_NAMES)")


class _OptionTypes(ollama.Options):
    min_p: float | None = None  # read by Ollama 0.24's server, not declared by the client


def option_problem(options: Mapping[str, Any], known: frozenset[str]) -> str | None:
    """What is wrong with ``options``: a name not in ``known``, or a value of the wrong type for an option
    Ollama 0.24 reads (``num_ctx`` must be an integer, ...); None if nothing is. Checked wherever options are
    written (a task, a topic default, a model row, OLLAMA_OPTIONS): Ollama would answer every request
    with a 500 for a wrong type."""
    unknown = unknown_options(options, known)
    if unknown:
        return unknown
    try:
        _OptionTypes.model_validate(dict(options), strict=True)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
        return f"has an option of the wrong type: {problems}"
    return None


class CamundaSettings(BaseModel):
    """Where the Camunda 7 REST API is and how to log in: basic auth, a static bearer token, or an
    OAuth2 client-credentials grant (a token fetched from ``oauth_token_url`` and refreshed before expiry)."""

    base_url: str = "http://127.0.0.1:8080/engine-rest"
    username: str | None = None
    password: SecretStr | None = None
    token: SecretStr | None = Field(default=None, description="static bearer token sent on every call")
    oauth_token_url: str | None = None
    oauth_client_id: str | None = None
    oauth_client_secret: SecretStr | None = None
    oauth_scope: str | None = None
    oauth_refresh_margin_s: float = Field(
        default=30.0, ge=0, description="refresh a token this long before it expires (at most half its lifetime)")
    http_timeout_s: float = Field(default=30.0, gt=0)

    @model_validator(mode="before")
    @classmethod
    def _credentials_out_of_the_url(cls, data: Any) -> Any:
        """``http://user:pass@host/...``: the login moves to username/password, so the URL (which is
        logged and printed by ``check``) carries no secret."""
        if not isinstance(data, dict) or not isinstance(data.get("base_url"), str):
            return data
        parts = urlsplit(data["base_url"])
        if parts.username is None and parts.password is None:
            return data
        if data.get("username") or data.get("password"):
            raise ValueError("CAMUNDA_BASE_URL carries a login and CAMUNDA_USERNAME/CAMUNDA_PASSWORD are set too: "
                             "keep one of them")
        host = parts.hostname or ""
        netloc = f"[{host}]" if ":" in host else host
        if parts.port is not None:
            netloc += f":{parts.port}"
        return {**data, "base_url": urlunsplit(parts._replace(netloc=netloc)),
                "username": unquote(parts.username or ""), "password": unquote(parts.password or "")}

    @field_validator("base_url")
    @classmethod
    def _strip_slash(cls, value: str) -> str:
        return value.rstrip("/")

    @model_validator(mode="after")
    def _one_way_to_log_in(self) -> CamundaSettings:
        if (self.username is None) != (self.password is None):
            raise ValueError("CAMUNDA_USERNAME and CAMUNDA_PASSWORD must be set together")
        oauth = (self.oauth_token_url, self.oauth_client_id, self.oauth_client_secret)
        if any(v is not None for v in oauth) and any(v is None for v in oauth):
            raise ValueError("CAMUNDA_OAUTH_TOKEN_URL, CAMUNDA_OAUTH_CLIENT_ID and CAMUNDA_OAUTH_CLIENT_SECRET "
                             "must be set together")
        ways = [name for name, on in (("CAMUNDA_USERNAME/PASSWORD", self.username is not None),
                                      ("CAMUNDA_TOKEN", self.token is not None),
                                      ("CAMUNDA_OAUTH_*", self.oauth_token_url is not None)) if on]
        if len(ways) > 1:
            raise ValueError(f"set only one way to log in to Camunda, not {' and '.join(ways)}")
        return self


class TopicFetch(BaseModel):
    """How one topic is fetched: lock duration, extra variables and the engine's filters (all optional).

    Keys may be written snake_case or as Camunda's REST names (``processDefinitionKeyIn``...).
    """

    model_config = ConfigDict(extra="forbid", frozen=True, alias_generator=to_camel, populate_by_name=True)

    lock_duration_ms: int | None = Field(default=None, ge=1_000, description="default WORKER_LOCK_DURATION_MS")
    variables: list[str] = Field(default_factory=list, description="fetched besides the task's input variables")
    process_definition_key: str | None = None
    process_definition_key_in: list[str] | None = None
    process_definition_version_tag: str | None = None
    tenant_id_in: list[str] | None = None
    without_tenant_id: bool = False
    business_key: str | None = None
    # Camunda 7.24 ORs the entries (a task matches when ANY variable has its value), and a JSON number
    # matches Integer variables only, never Long ones (tests/integration/test_fetch_filters.py shows both).
    process_variables: dict[str, str | bool | int | float] | None = Field(
        default=None, description="tasks whose process has any of these variables with this value")

    @model_validator(mode="after")
    def _tenants(self) -> TopicFetch:
        if self.without_tenant_id and self.tenant_id_in:
            raise ValueError("use tenant_id_in or without_tenant_id, not both")
        return self


class WorkerSettings(BaseModel):
    """How the poll loop fetches, locks and holds tasks."""

    id: str = Field(default_factory=default_worker_id, min_length=1)
    topics: Annotated[list[str], NoDecode] = Field(default_factory=lambda: ["ai-query"], min_length=1)
    lock_duration_ms: int = Field(default=60_000, ge=1_000)
    topic_fetch: Annotated[dict[str, TopicFetch], NoDecode] = Field(
        default_factory=dict, description="JSON object {topic: {filters, lock_duration_ms, variables}}")
    use_priority: bool = Field(default=True, description="fetch higher-priority tasks first")
    create_time_order: Literal["none", "asc", "desc"] = Field(
        default="none", description="then order by creation time (oldest first: asc)")
    max_tasks_in_flight: int = Field(default=4, ge=1, le=256)
    async_response_timeout_ms: int = Field(default=20_000, ge=0, le=_MAX_ASYNC_RESPONSE_TIMEOUT_MS)
    # fetchAndLock brings the values of the variables a topic's tasks read while its answer stays under this
    # many bytes per task asked for; a bigger answer is not read: its tasks are handed back and fetched
    # again without values, each reading its own sizes first (engine.variables).
    fetch_values_max_bytes: int = Field(
        default=1_048_576, ge=0, description="bytes per task a fetch answer with values may take; 0: never")
    shutdown_grace_s: float = Field(default=30.0, ge=0)
    # After the grace: unlocking, waiting for reports, sweeping, all engine calls included. Grace + this
    # must stay below the orchestrator's kill timeout (compose's stop_grace_period is 45 s).
    shutdown_release_s: float = Field(default=10.0, gt=0)
    retries: int = Field(default=3, ge=0, description="Camunda retries given to a task on its first failure")
    retry_timeout_ms: int = Field(default=10_000, ge=0, description="first retryTimeout; doubles per failure")
    retry_timeout_max_ms: int = Field(default=600_000, ge=0)
    # Tries of a report Camunda refuses with an engine exception (500), then an incident.
    report_attempts: int = Field(default=5, ge=1)
    # One record per process: "{pid}" becomes the process id (see procos_worker.health).
    health_file: Path = Path("/tmp/procos-worker-health-{pid}.json")
    health_max_age_s: float = Field(default=60.0, gt=0)

    _split_topics = field_validator("topics", mode="before")(_split_csv)
    _parse_topic_fetch = field_validator("topic_fetch", mode="before")(
        _parse_json_object("WORKER_TOPIC_FETCH", '{"ai-query": {"tenant_id_in": ["acme"]}}'))

    @model_validator(mode="after")
    def _fetch_names_known_topics(self) -> WorkerSettings:
        unknown = sorted(set(self.topic_fetch) - set(self.topics))
        if unknown:
            raise ValueError(f"WORKER_TOPIC_FETCH names topics that are not in WORKER_TOPICS: {', '.join(unknown)}")
        return self

    def fetch_for(self, topic: str) -> TopicFetch:
        return self.topic_fetch.get(topic) or TopicFetch()

    def lock_duration_for(self, topic: str) -> int:
        return self.fetch_for(topic).lock_duration_ms or self.lock_duration_ms


class TaskSettings(BaseModel):
    """Which process variables a task reads, how bad input is reported, and per-topic task defaults."""

    query_variable: str = "query"
    context_variable: str = "context"
    system_prompt_variable: str = "system_prompt"
    input_error_code: str = "AI_INPUT_INVALID"
    # Camunda's REST JSON reader refuses strings over 20,000,000 characters anyway. Counted on the stored
    # form, before decoding: a String's characters, a Json variable's JSON text, a Bytes variable's bytes.
    max_input_chars: int = Field(default=20_000_000, ge=1)
    # A structured answer (procos.outputSchema) that breaks its schema is asked again this many times, with
    # the validation errors, before the task ends with AI_OUTPUT_INVALID.
    output_repair_attempts: int = Field(default=2, ge=0, le=10,
                                        description="repairs of a structured answer that breaks its schema")

    # All tasks in flight together: a task whose inputs don't fit waits (holding its lock) for others to end.
    max_input_chars_in_flight: int = Field(default=40_000_000, ge=1)

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

    @model_validator(mode="after")
    def _budget_fits_one_task(self) -> TaskSettings:
        if self.max_input_chars_in_flight < self.max_input_chars:
            raise ValueError("TASK_MAX_INPUT_CHARS_IN_FLIGHT must be >= TASK_MAX_INPUT_CHARS (one task must fit)")
        return self


ThinkLevel = Literal["low", "medium", "high", "max"]
# Header names that carry credentials: OLLAMA_API_KEY and OLLAMA_HEADERS must not both set them.
_AUTH_HEADERS = frozenset({"authorization"})
_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")  # RFC 9110 token


def ollama_url(value: str) -> str:
    """An Ollama address the way the ``ollama`` client reads ``OLLAMA_HOST``: ``host``, ``host:port``,
    ``:port``, ``http(s)://host[:port][/path]``; no scheme means http, no port 11434 (80/443 with a scheme)."""
    text = value.strip()
    if not text:
        raise ValueError("an Ollama address is empty")
    if "@" in text.partition("://")[2].partition("/")[0]:
        # The ollama client drops a login written into the URL: say where credentials go instead.
        raise ValueError("an Ollama address must not hold a login; use OLLAMA_API_KEY or OLLAMA_HEADERS")
    return _parse_host(text)


class OllamaSettings(BaseModel):
    """The model server(s) and the request sent to them.

    Where the server is: ``OLLAMA_BASE_URLS`` (several endpoints, comma-separated) if set, else
    ``OLLAMA_BASE_URL``, else ``OLLAMA_HOST`` (the name Ollama's own tools read, e.g. ``127.0.0.1:11434``),
    else ``http://127.0.0.1:11434``. ``endpoints`` is the resulting list.
    """

    model_config = ConfigDict(populate_by_name=True)

    # AliasChoices: the first name found wins, so OLLAMA_BASE_URL is preferred over OLLAMA_HOST.
    base_url: str = Field(default="http://127.0.0.1:11434", validation_alias=AliasChoices("base_url", "host"))
    base_urls: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="several Ollama endpoints, comma-separated; replaces base_url")
    model: str = Field(default="smollm2:135m", min_length=1, max_length=MODEL_NAME_MAX_CHARS)
    # The whole request, generation included (the name kept from before connect/read were split off).
    timeout_s: float = Field(default=600.0, gt=0, description="total time of one chat request")
    connect_timeout_s: float = Field(default=5.0, gt=0, description="TCP (and TLS) connect to Ollama")
    read_timeout_s: float = Field(
        default=300.0, gt=0, description="longest wait for the next bytes: the first chunk (model load, prompt "
                                         "evaluation), then between streamed chunks")
    probe_timeout_s: float = Field(default=10.0, gt=0, description="each step of a probe (/api/tags)")
    options: Annotated[dict[str, Any], NoDecode] = Field(
        default_factory=dict, description="JSON object of Ollama options, e.g. {\"temperature\": 0.2}")
    extra_option_names: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="option names of a newer Ollama, accepted besides OLLAMA_OPTION_NAMES")
    keep_alive: str | None = None
    think: bool | ThinkLevel | None = Field(
        default=None, description="Ollama's think for reasoning models; None: not sent (the model's default)")
    headers: Annotated[dict[str, SecretStr], NoDecode] = Field(
        default_factory=dict, description="JSON object of extra HTTP headers (an authenticating proxy's)")
    api_key: SecretStr | None = Field(default=None, description="sent as Authorization: Bearer <key>")
    attempts: int = Field(default=3, ge=1, description="in-process tries on a transient Ollama error")
    provider: str = Field(default="ollama", min_length=1, max_length=PROVIDER_NAME_MAX_CHARS)

    _parse_options = field_validator("options", mode="before")(
        _parse_json_object("OLLAMA_OPTIONS", '{"temperature": 0.2}'))
    _parse_headers = field_validator("headers", mode="before")(
        _parse_json_object("OLLAMA_HEADERS", '{"X-Api-Key": "..."}'))
    _split_urls = field_validator("base_urls", mode="before")(_split_csv)
    _split_option_names = field_validator("extra_option_names", mode="before")(_split_csv)

    @field_validator("base_url")
    @classmethod
    def _normalise_url(cls, value: str) -> str:
        return ollama_url(value)

    @field_validator("base_urls")
    @classmethod
    def _normalise_urls(cls, values: list[str]) -> list[str]:
        urls = [ollama_url(v) for v in values]
        twice = sorted({u for u in urls if urls.count(u) > 1})
        if twice:
            raise ValueError(f"OLLAMA_BASE_URLS lists an endpoint twice: {', '.join(twice)}")
        return urls

    @field_validator("headers")
    @classmethod
    def _header_names(cls, values: dict[str, SecretStr]) -> dict[str, SecretStr]:
        bad = sorted(name for name in values if not _HEADER_NAME.match(name))
        if bad:
            raise ValueError(f"OLLAMA_HEADERS has names that are not HTTP header names: {', '.join(bad)}")
        return values

    @model_validator(mode="after")
    def _one_authorization(self) -> OllamaSettings:
        if self.api_key is not None and any(name.lower() in _AUTH_HEADERS for name in self.headers):
            raise ValueError("set OLLAMA_API_KEY or an Authorization header in OLLAMA_HEADERS, not both")
        return self

    @model_validator(mode="after")
    def _known_options(self) -> OllamaSettings:
        problem = option_problem(self.options, self.option_names)
        if problem:
            raise ValueError(f"OLLAMA_OPTIONS: {problem}")
        return self

    @property
    def option_names(self) -> frozenset[str]:
        """The option names a task, a topic default, a model row or OLLAMA_OPTIONS may use."""
        return OLLAMA_OPTION_NAMES | frozenset(self.extra_option_names)

    @property
    def endpoints(self) -> list[str]:
        """The Ollama servers to use, in the order given (one unless OLLAMA_BASE_URLS is set)."""
        return list(self.base_urls) or [self.base_url]

    def http_headers(self) -> dict[str, str]:
        """The extra headers of every request: OLLAMA_HEADERS and the API key's Authorization."""
        sent = {name: value.get_secret_value() for name, value in self.headers.items()}
        if self.api_key is not None:
            sent["Authorization"] = f"Bearer {self.api_key.get_secret_value()}"
        return sent


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
    # None: WORKER_MAX_TASKS_IN_FLIGHT + POOL_RESERVE (Settings.pool_size); smaller is refused at start.
    pool_max_size: int | None = Field(default=None, ge=1)
    connect_timeout_s: float = Field(default=5.0, gt=0)
    # Session limits of every pooled connection (0 = none): a hung database or a table locked by another
    # session can't hold a task forever.
    statement_timeout_ms: int = Field(default=60_000, ge=0)
    lock_timeout_ms: int = Field(default=10_000, ge=0)
    # TCP keepalives: a peer that vanished without closing (a node lost) is noticed within
    # idle + interval * count seconds instead of the kernel's two hours.
    keepalives_idle_s: int = Field(default=30, ge=1)
    keepalives_interval_s: int = Field(default=10, ge=1)
    keepalives_count: int = Field(default=3, ge=1)
    attempts: int = Field(default=3, ge=1, description="in-process tries on a transient database error")

    @field_validator("url")
    @classmethod
    def _parses(cls, value: SecretStr) -> SecretStr:
        if not _looks_like_conninfo(value.get_secret_value()):
            # Worded without the value: a DSN that does not parse may hold a password anywhere.
            raise ValueError("DATABASE_URL is neither a postgresql:// URL nor a key=value connection string")
        return value


class OrphansSettings(BaseModel):
    """Orphan recovery: leases of live workers, and unlocking the tasks of workers whose lease expired."""

    recovery: bool = True
    # A worker that renewed nothing for this long counts as dead; its tasks go back to work.
    lease_s: float = Field(default=10.0, ge=1)
    # How often a worker renews its lease and looks for dead ones.
    interval_s: float = Field(default=1.0, gt=0)

    @model_validator(mode="after")
    def _several_beats_per_lease(self) -> OrphansSettings:
        if self.lease_s < 3 * self.interval_s:
            raise ValueError("ORPHANS_LEASE_S must be at least 3 x ORPHANS_INTERVAL_S (a late beat is not a death)")
        return self


class OpsSettings(BaseModel):
    """The operator's HTTP port: /metrics (Prometheus), /healthz (liveness), /readyz (readiness).

    On by default, on the loopback interface; the container listens on every interface (compose sets
    OPS_HTTP_HOST=0.0.0.0) so that Prometheus and the orchestrator reach it. Port 0 turns it off.
    """

    http_host: str = "127.0.0.1"
    http_port: int = Field(default=9464, ge=0, le=65535, description="0: no HTTP server")
    liveness_max_s: float = Field(
        default=60.0, gt=0, description="/healthz fails when the poll loop or the heartbeat made no progress "
                                        "for this long")
    readiness_timeout_s: float = Field(default=2.0, gt=0, description="timeout of each /readyz dependency check")


class RetentionSettings(BaseModel):
    """The optional scheduled purge of procos_ai_context (``procos-worker purge`` is the manual form).

    When ``purge_older_than`` is set or ``history_removed`` is true, every ``interval_s`` one worker
    (the one that gets a PostgreSQL advisory lock) purges; the others skip that round.
    """

    purge_older_than: timedelta | None = Field(
        default=None, description="purge instances whose newest row is older than this (90d, 12h...); none: off")
    history_removed: bool = Field(
        default=False, description="also purge rows whose process-instance history Camunda has removed")
    interval_s: float = Field(default=3600.0, gt=0)
    batch_size: int = Field(default=500, ge=1, le=10_000)

    @field_validator("purge_older_than", mode="before")
    @classmethod
    def _parse_age(cls, value: Any) -> Any:
        if isinstance(value, str):
            return parse_age(value) if value.strip() else None
        return value

    @property
    def scheduled(self) -> bool:
        return self.purge_older_than is not None or self.history_removed


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
    orphans: OrphansSettings = Field(default_factory=OrphansSettings)
    backoff: BackoffSettings = Field(default_factory=BackoffSettings)
    retention: RetentionSettings = Field(default_factory=RetentionSettings)
    ops: OpsSettings = Field(default_factory=OpsSettings)
    log: LogSettings = Field(default_factory=LogSettings)

    @model_validator(mode="after")
    def _check_consistency(self) -> Settings:
        if self.worker.retry_timeout_max_ms < self.worker.retry_timeout_ms:
            raise ValueError("WORKER_RETRY_TIMEOUT_MAX_MS must be >= WORKER_RETRY_TIMEOUT_MS")
        # An idle long poll answers after WORKER_ASYNC_RESPONSE_TIMEOUT_MS (the HTTP call allows 5 s more):
        # a shorter liveness bound would call a healthy, idle worker wedged.
        if self.ops.liveness_max_s <= self.worker.async_response_timeout_ms / 1000 + _FETCH_TIMEOUT_DELTA_S:
            raise ValueError("OPS_LIVENESS_MAX_S must exceed WORKER_ASYNC_RESPONSE_TIMEOUT_MS / 1000 + "
                             f"{_FETCH_TIMEOUT_DELTA_S:g} s (the longest an idle long poll takes)")
        needed = self.worker.max_tasks_in_flight + POOL_RESERVE
        if self.database.pool_max_size is not None and self.database.pool_max_size < needed:
            # A task waiting for a pooled connection would time out and be taken for "PostgreSQL down".
            raise ValueError(
                f"DATABASE_POOL_MAX_SIZE ({self.database.pool_max_size}) must be at least WORKER_MAX_TASKS_IN_FLIGHT"
                f" + {POOL_RESERVE} = {needed} (one connection per task in flight, {POOL_RESERVE} for the worker "
                "itself); leave it empty to size the pool from WORKER_MAX_TASKS_IN_FLIGHT")
        return self

    @property
    def pool_size(self) -> int:
        """Connections of the worker's pool: DATABASE_POOL_MAX_SIZE, or one per task in flight + the reserve."""
        return self.database.pool_max_size or self.worker.max_tasks_in_flight + POOL_RESERVE


def settings_error_text(exc: Exception) -> str:
    """A settings error as lines ``NAME: what is wrong``, never showing an input value."""
    if not isinstance(exc, ValidationError):
        return f"{type(exc).__name__}: {exc}"
    lines = []
    for error in exc.errors(include_input=False, include_url=False, include_context=False):
        where = "_".join(str(part) for part in error["loc"][:2]).upper()
        message = str(error["msg"]).removeprefix("Value error, ")
        lines.append(f"{where}: {message}" if where else message)
    return "\n".join(lines)


_CONNINFO_PAIR = re.compile(r"\s*[A-Za-z_]+\s*=\s*(?:'(?:[^'\\]|\\.)*'|[^\s']+)\s*")


def _looks_like_conninfo(dsn: str) -> bool:
    """A postgresql:// URL with a numeric port, or libpq key=value pairs (quoted values allowed)."""
    if dsn.startswith(("postgresql://", "postgres://")):
        try:
            urlsplit(dsn).port  # noqa: B018 - raises ValueError on a port that is not a number
        except ValueError:
            return False
        return True
    pos = 0
    while pos < len(dsn):
        match = _CONNINFO_PAIR.match(dsn, pos)
        if match is None or match.end() == pos:
            return False
        pos = match.end()
    return bool(dsn.strip())


def env_var_names() -> set[str]:
    """The environment variable names Settings reads (what .env.example and compose must list)."""
    names: set[str] = set()
    for section, field in Settings.model_fields.items():
        model = field.annotation
        assert isinstance(model, type) and issubclass(model, BaseModel)
        for name, sub in model.model_fields.items():
            names.add(f"{section}_{name}".upper())
            # Other names a field answers to (OLLAMA_HOST for OLLAMA_BASE_URL).
            if isinstance(sub.validation_alias, AliasChoices):
                names.update(f"{section}_{choice}".upper() for choice in sub.validation_alias.choices
                             if isinstance(choice, str))
    return names
