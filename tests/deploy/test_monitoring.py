"""The compose monitoring profile, checked offline: Prometheus's configuration passes ``promtool check
config`` (Debian's prometheus package), the Grafana provisioning points at the dashboard, and every
dashboard query parses (``promtool check rules``) and names only metrics the worker exports.
The live scrape of a running worker is ``tests/integration/test_metrics.py``."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from procos_testkit.prometheus import prometheus_binaries
from procos_worker import metrics
from procos_worker.settings import OpsSettings
from tests.deploy.deploykit import REPO

pytestmark = pytest.mark.deploy

PROMETHEUS_YML = REPO / "deploy" / "prometheus" / "prometheus.yml"
GRAFANA = REPO / "deploy" / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "procos-worker.json"
# Grafana's own variables, replaced by a duration before the expression reaches a PromQL parser.
_GRAFANA_RANGES = re.compile(r"\$__(rate_interval|interval|range)")
_PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless",
                 "offset", "inf", "nan"}


def dashboard_exprs() -> list[str]:
    board = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return [target["expr"] for panel in board["panels"] for target in panel.get("targets", [])]


def promql(expr: str) -> str:
    return _GRAFANA_RANGES.sub("5m", expr)


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (functions, keywords, labels and strings left out)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)                       # string literals
    text = re.sub(r"\{[^}]*\}", "", text)                                  # label matchers
    text = re.sub(r"\[[^\]]*\]", "", text)                                 # ranges
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", text)  # label lists
    names = set()
    for match in re.finditer(r"(?<![\w.])[A-Za-z_:][A-Za-z0-9_:]*", text):
        if not text[match.end():].lstrip().startswith("("):  # a function call, not a metric
            names.add(match.group())
    return names - _PROMQL_WORDS


def _known_names() -> set[str]:
    return metrics.exported_names() | {"up"}


def test_prometheus_configuration_passes_promtool() -> None:
    promtool, _server = prometheus_binaries()
    result = subprocess.run([str(promtool), "check", "config", str(PROMETHEUS_YML)], capture_output=True, text=True,
                            check=False, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout + result.stderr


def test_promtool_rejects_a_broken_configuration(tmp_path: Path) -> None:
    broken = yaml.safe_load(PROMETHEUS_YML.read_text(encoding="utf-8"))
    broken["scrape_configs"][0]["dns_sd_configs"][0]["type"] = "TXT-ish"
    path = tmp_path / "prometheus.yml"
    path.write_text(yaml.safe_dump(broken), encoding="utf-8")
    promtool, _server = prometheus_binaries()
    result = subprocess.run([str(promtool), "check", "config", str(path)], capture_output=True, text=True,
                            check=False, timeout=60)
    assert result.returncode != 0


def test_prometheus_scrapes_every_worker_replica_on_the_worker_port(services: dict[str, dict[str, Any]]) -> None:
    config = yaml.safe_load(PROMETHEUS_YML.read_text(encoding="utf-8"))
    [job] = [j for j in config["scrape_configs"] if j["job_name"] == "procos-worker"]
    assert job["metrics_path"] == "/metrics"
    [dns] = job["dns_sd_configs"]
    # Compose's DNS answers the service name with one A record per replica.
    assert (dns["names"], dns["type"], dns["port"]) == (["worker"], "A", OpsSettings().http_port)
    assert str(OpsSettings().http_port) in [str(p) for p in services["worker"]["expose"]]
    assert services["worker"]["environment"]["OPS_HTTP_HOST"] == "0.0.0.0"


def test_monitoring_is_an_optional_profile_with_pinned_images(services: dict[str, dict[str, Any]]) -> None:
    profiled = {name for name, service in services.items() if service.get("profiles")}
    assert profiled == {"prometheus", "grafana"}
    for name in profiled:
        assert services[name]["profiles"] == ["monitoring"]
        image = services[name]["image"]
        assert re.fullmatch(r"[a-z/]+:v?\d+\.\d+\.\d+", image), image
        assert all(port.startswith("127.0.0.1:") for port in services[name]["ports"]), "loopback only"
    mounts = dict(reversed(v.split(":")[:2]) for v in services["prometheus"]["volumes"])
    assert Path(REPO, mounts["/etc/prometheus/prometheus.yml"]).resolve() == PROMETHEUS_YML.resolve()
    assert any(arg == "--config.file=/etc/prometheus/prometheus.yml" for arg in services["prometheus"]["command"])


def test_grafana_provisioning_loads_the_dashboard_from_the_prometheus_datasource(
    services: dict[str, dict[str, Any]],
) -> None:
    mounts = dict(reversed(v.split(":")[:2]) for v in services["grafana"]["volumes"])
    assert Path(REPO, mounts["/etc/grafana/provisioning"]).resolve() == (GRAFANA / "provisioning").resolve()
    provider = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "procos.yml").read_text(encoding="utf-8"))
    path = provider["providers"][0]["options"]["path"]
    assert Path(REPO, mounts[path]).resolve() == DASHBOARD.parent.resolve()
    datasource = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "prometheus.yml").read_text("utf-8"))
    [source] = datasource["datasources"]
    assert source["url"] == "http://prometheus:9090" and source["type"] == "prometheus"
    board = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    for panel in board["panels"]:
        assert panel["datasource"]["uid"] == source["uid"], panel["title"]
        assert panel["targets"], panel["title"]
    assert services["grafana"]["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"] == f"{path}/{DASHBOARD.name}"


def test_every_dashboard_query_parses(tmp_path: Path) -> None:
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"procos:dashboard_query_{i}", "expr": promql(expr)} for i, expr in enumerate(dashboard_exprs())]}]}
    path = tmp_path / "rules.yml"
    path.write_text(yaml.safe_dump(rules), encoding="utf-8")
    promtool, _server = prometheus_binaries()
    result = subprocess.run([str(promtool), "check", "rules", str(path)], capture_output=True, text=True,
                            check=False, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{len(dashboard_exprs())} rules found" in result.stdout


def test_dashboard_queries_name_only_metrics_the_worker_exports() -> None:
    used = set().union(*(metric_names(promql(expr)) for expr in dashboard_exprs()))
    assert used - _known_names() == set()
    # Throughput, latency, tokens, errors, in flight: each has its metric on the board.
    for needed in ("procos_worker_tasks_total", "procos_worker_llm_duration_seconds_bucket",
                   "procos_worker_prompt_tokens_total", "procos_worker_completion_tokens_total",
                   "procos_worker_tasks_in_flight", "procos_worker_service_up"):
        assert needed in used, needed


def test_the_name_check_catches_a_metric_the_worker_does_not_export() -> None:
    names = metric_names('sum by (topic) (rate(procos_worker_task_done_total{outcome="x"}[5m])) * 60')
    assert names == {"procos_worker_task_done_total"}
    assert names - _known_names() == {"procos_worker_task_done_total"}
    histogram = metric_names("histogram_quantile(0.95, sum by (le) (rate(procos_worker_llm_duration_seconds_bucket"
                             "[5m])))")
    assert histogram == {"procos_worker_llm_duration_seconds_bucket"} and histogram <= _known_names()
