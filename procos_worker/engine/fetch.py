"""What ``fetchAndLock`` asks for: the topics with their lock durations, variables and filters
(``WORKER_TOPIC_FETCH``), and the order tasks come in (``WORKER_USE_PRIORITY``,
``WORKER_CREATE_TIME_ORDER``). Plain data built once from the settings; the client sends it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from procos_worker.settings import WorkerSettings

__all__ = ["FetchOrder", "Subscription", "fetch_order", "subscriptions"]

# TopicFetch field -> the name in Camunda 7's fetchAndLock topic object.
_FILTERS = {
    "process_definition_key": "processDefinitionKey",
    "process_definition_key_in": "processDefinitionKeyIn",
    "process_definition_version_tag": "processDefinitionVersionTag",
    "tenant_id_in": "tenantIdIn",
    "business_key": "businessKey",
    "process_variables": "processVariables",
}


@dataclass(frozen=True, slots=True)
class Subscription:
    """One topic of a fetch: its lock duration, the variables to return and the engine-side filters."""

    topic: str
    lock_duration_ms: int
    variables: tuple[str, ...]
    filters: Mapping[str, Any] = field(default_factory=dict)

    def as_rest(self, *, deserialize_values: bool, include_extension_properties: bool) -> dict[str, Any]:
        return {"topicName": self.topic, "lockDuration": self.lock_duration_ms, "variables": list(self.variables),
                "deserializeValues": deserialize_values, "includeExtensionProperties": include_extension_properties,
                **self.filters}


@dataclass(frozen=True, slots=True)
class FetchOrder:
    """``usePriority`` and ``sorting`` of the request (Camunda orders by priority first, then by sorting)."""

    use_priority: bool = True
    sorting: tuple[Mapping[str, str], ...] = ()


def subscriptions(settings: WorkerSettings, input_variables: Sequence[str]) -> list[Subscription]:
    """One subscription per WORKER_TOPICS entry; the input variables are always fetched."""
    found: list[Subscription] = []
    for topic in settings.topics:
        fetch = settings.fetch_for(topic)
        filters: dict[str, Any] = {rest: getattr(fetch, name) for name, rest in _FILTERS.items()
                                   if getattr(fetch, name) is not None}
        if fetch.without_tenant_id:
            filters["withoutTenantId"] = True
        variables = tuple(dict.fromkeys([*input_variables, *fetch.variables]))
        found.append(Subscription(topic, settings.lock_duration_for(topic), variables, filters))
    return found


def fetch_order(settings: WorkerSettings) -> FetchOrder:
    sorting = () if settings.create_time_order == "none" else (
        {"sortBy": "createTime", "sortOrder": settings.create_time_order},)
    return FetchOrder(use_priority=settings.use_priority, sorting=sorting)
